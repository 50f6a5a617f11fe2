"""A warm spare for model servers: KServe and the model-server code imported once, then forked per start.

Importing ``kserve`` (with FastAPI, pydantic, the Kubernetes client) and scikit-learn takes 10-20 s on a
busy 2-core machine, most of a model server's start. The stack's watchdog (``kfrelease.stack.watchdog``)
keeps one spare process that has done those imports and listens on a Unix socket; to restart a model server
that died it asks the spare to fork a child that runs the server's recorded command (``python -m MODULE
ARGS``, optionally under ``nice -n N``) in its own session, with the recorded environment, folder and log.
The child only loads its models and binds its port: it answers within about a second or two.

Request (one JSON line, on the socket named by ``--socket``): ``{"argv", "env", "cwd", "log"}``; answer: ``{"pid": N}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import runpy
import signal
import socket
import sys
import traceback
from pathlib import Path

from kfrelease.config import LOG_FORMAT
from kfrelease.stack.supervisor import pid_alive

log = logging.getLogger(__name__)

#: What a model server imports on its way up (kfrelease.serving.host and what a model file needs).
WARM_MODULES = (
    "kfrelease.serving.host",
    "kfrelease.serving.predictor",
    "kfrelease.serving.logger",
    "kserve.protocol.rest.server",
    "uvicorn.protocols.http.httptools_impl",
    "uvloop",
    "joblib",
    "pandas",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "sklearn.linear_model",
    "sklearn.ensemble",
)


def forkable(argv: list[str]) -> tuple[int, str, list[str]] | None:
    """``(niceness, module, args)`` of a ``[nice -n N] python -m MODULE ARGS`` command, else None."""
    niceness = 0
    if argv[:2] == ["nice", "-n"] and len(argv) > 3:
        niceness, argv = int(argv[2]), argv[3:]
    if len(argv) >= 3 and argv[0] == sys.executable and argv[1] == "-m":
        return niceness, argv[2], list(argv[3:])
    return None


def _run_child(order: dict, listener: socket.socket) -> None:
    """In the forked child: become the recorded service and run it; never returns."""
    code = 1
    try:
        listener.close()
        os.setsid()  # its own process group, as the supervisor starts every service
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        niceness, module, args = forkable(order["argv"])
        if niceness:
            os.nice(niceness)
        fd = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.clear()
        os.environ.update(order["env"])
        os.chdir(order["cwd"])
        extra = [p for p in order["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [order["cwd"], *extra]
        sys.argv = [module, *args]
        logging.getLogger().handlers.clear()
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - report in the service's log, then exit non-zero
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _address(name: str) -> str:
    """A socket name: ``@NAME`` is Linux's abstract namespace (no file, no path-length limit)."""
    return "\0" + name[1:] if name.startswith("@") else name


class ForkedProcess:
    """A process the spare forked (not our child): the ``Popen`` surface the supervisor reads."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None and not pid_alive(self.pid):
            self.returncode = 1  # its exit status went to the spare; the log says why
        return self.returncode


def serve(name: str) -> None:
    for module in WARM_MODULES:
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(_address(name))
    listener.listen(8)
    log.info("warm spare ready at %s", name)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                order = json.loads(conn.makefile("rb").readline())
                if forkable(order["argv"]) is None:
                    raise ValueError(f"{order['argv']} is not a `python -m MODULE` command")
                pid = os.fork()
                if pid == 0:
                    _run_child(order, listener)
                answer = {"pid": pid}
            except (ValueError, KeyError, OSError) as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass  # the asker left (a readiness probe does)


def ask(
    name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, timeout: float = 5.0
) -> ForkedProcess:
    """Have the spare called ``name`` start ``argv``; the new process (OSError/ValueError if it cannot)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(_address(name))
        order = {"argv": list(argv), "env": dict(env), "cwd": str(cwd), "log": str(log_path)}
        s.sendall(json.dumps(order).encode() + b"\n")
        answer = json.loads(s.makefile("rb").readline() or b"{}")
    if "pid" not in answer:
        raise ValueError(answer.get("error", "the warm spare gave no answer"))
    return ForkedProcess(int(answer["pid"]))


def is_ready(name: str) -> bool:
    """True once the spare has done its imports and listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(_address(name))
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kfrelease.stack.spare")
    p.add_argument("--socket", required=True, help="socket name; @NAME: Linux's abstract namespace")
    args = p.parse_args(argv)
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv when imported
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    serve(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
