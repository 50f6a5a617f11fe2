"""Named crash points for fault-injection tests.

``KFRELEASE_CRASH_AT=<point>`` makes the process kill itself (SIGKILL, no clean-up) when it reaches that
point, e.g. ``publish.after_data``: the tests use it to prove that a step killed midway leaves nothing
half-written. Unset (the default), ``crash_point`` does nothing.
"""

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("KFRELEASE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
