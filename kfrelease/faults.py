"""Named crash points for fault-injection tests.

``KFRELEASE_CRASH_AT=<point>`` makes the process kill itself (SIGKILL, no clean-up) when it reaches that
point, e.g. ``publish.after_data``: the tests use it to prove that a step killed midway leaves nothing
half-written. ``KFRELEASE_CRASH_ONCE=<file>`` makes it crash only the first time (it creates the file):
a retried attempt then goes past the point. Unset (the default), ``crash_point`` does nothing.
"""

import os
import signal

from kfrelease.config import setting


def crash_point(name: str) -> None:
    if setting("KFRELEASE_CRASH_AT") == name:
        once = setting("KFRELEASE_CRASH_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
