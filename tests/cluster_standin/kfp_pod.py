"""The process tree of a KFP step's main container, as stand-ins for the two Go programs that run there (neither
can run here), so a test can send SIGTERM to it as Kubernetes does and see what the Python step gets done.

``python -m tests.cluster_standin.kfp_pod emissary <poll seconds> -- launcher -- <step command ...>``

- ``emissary`` stands in for Argo's emissary, PID 1 of the container (argoproj/argo-workflows
  ``cmd/argoexec/commands/emissary.go``): it starts its child in a new process group
  (``osspecific/command_unix.go`` ``Setpgid``), forwards every signal it gets to that whole group
  (``osspecific/signal_darwin.go``, the Linux build's file: ``Kill`` = ``syscall.Kill(-pgid, s)``), reaps its
  child by polling every second (``Wait``: ``Wait4(-1, WNOHANG)`` then ``time.Sleep(time.Second)``; ``poll
  seconds`` sets that period, and the first reap after a signal comes a whole period after it: the longest
  the step can get), then exits. When PID 1 of a container's PID namespace exits the kernel kills
  every process left in it; here the emissary SIGKILLs its child's group as it exits.
- ``launcher`` stands in for KFP's launcher (kubeflow/pipelines 2.16.0 ``backend/src/v2/component/launcher_v2.go``:
  ``exec.Command(cmd, args...).Run()``, the step a plain child in the launcher's group;
  ``backend/src/v2/cmd/launcher-v2/main.go`` installs no signal handler, so Go's default for SIGTERM ends it
  at once). Python's default for SIGTERM is the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def emissary(poll: float, command: list[str]) -> int:
    child = subprocess.Popen(command, process_group=0)
    pgid = child.pid

    signalled = []

    def forward(signum, _frame):
        signalled.append(time.monotonic())
        try:
            os.killpg(pgid, signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while child.poll() is None:
        time.sleep(poll)
        if signalled:  # the step's longest chance: the first reap a whole period after the signal
            time.sleep(max(0.0, signalled[0] + poll - time.monotonic()))
    try:  # PID 1 exits: nothing else in the container survives it
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return child.returncode


def launcher(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode


def main(argv: list[str]) -> int:
    if argv[0] == "emissary":
        return emissary(float(argv[1]), argv[3:])
    if argv[0] == "launcher":
        return launcher(argv[2:])
    raise SystemExit(f"kfp_pod: unknown part {argv[0]!r} (emissary or launcher)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
