"""Shared fixtures. The embedded stack is started once per test session on free ports in a temporary
KFRELEASE_HOME (so it never touches your own stack) and stopped at the end; fixtures wait on readiness
probes, never on sleeps."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kfrelease.config import DEFAULT_PORTS, Settings
from kfrelease.stack import supervisor
from kfrelease.stack.services import UP_GROUPS, declared_services

REPO = Path(__file__).resolve().parents[1]


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _claims_file() -> Path | None:
    """The file the pytest-xdist workers of one run share to claim port ranges (none outside xdist)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in every worker of one run (xdist remote.py)
    return Path(tempfile.gettempdir()) / f"kfrelease-claimed-ports-{run}" if run else None


def free_port_offset() -> int:
    """An offset at which every default port (and SeaweedFS's neighbours and gRPC ports) is free and, under
    pytest-xdist, claimed by no other stack of this run, the session stacks' and the tests' private ones alike:
    a stack's model servers bind their ports long after it chose them, and a private stack's restart binds its
    port again after a kill (a private stack once chose a range a worker's session stack had claimed, and its
    restart found the port taken)."""
    claims = _claims_file()
    with contextlib.ExitStack() as held:
        claimed: set[int] = set()
        if claims is not None:
            fh = held.enter_context(open(claims, "a+"))
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            claimed = {int(p) for p in fh.read().split()}
        for _ in range(200):
            offset = random.randrange(10000, 20000, 10)
            ports = [p + offset for p in DEFAULT_PORTS.values()]
            s3 = DEFAULT_PORTS["s3"] + offset
            ports += [s3 + i for i in range(6)] + [s3 + i + 10000 for i in range(6)]
            ports += [DEFAULT_PORTS["predictor"] + offset + i for i in range(20)]
            if not claimed.intersection(ports) and all(_free(p) for p in ports):
                if claims is not None:
                    fh.write(" ".join(map(str, ports)) + "\n")
                    fh.flush()
                return offset
    raise RuntimeError("no free port range found for the test stack")


#: The weight of a ``slow`` test that does not say its ``seconds``.
SLOW_SECONDS = 30


def file_weights(items) -> dict[str, tuple[float, float]]:
    """Per file, the seconds its ``slow`` tests declare (``@pytest.mark.slow(seconds=N)``) and how many of them are
    spent waiting (``waits=True``: traffic at a fixed rate, release steps of a fixed length, back-offs)."""
    out: dict[str, tuple[float, float]] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            seconds = float(marker.kwargs.get("seconds", SLOW_SECONDS))
            total, waiting = out.get(item.nodeid.split("::")[0], (0.0, 0.0))
            out[item.nodeid.split("::")[0]] = (total + seconds, waiting + seconds * bool(marker.kwargs.get("waits")))
    return out


def file_order(weights: dict[str, tuple[float, float]]) -> list[str]:
    """The heavy files in the order `make test` hands them out: those that mostly compute and those that mostly
    wait, each heaviest first, taken in turn. Longest first, so the two workers end within about the shortest
    file of each other; in turn, so a worker waiting on traffic runs beside one that needs the CPU (two waiting
    files at once left a third of both cores idle for minutes)."""
    by_weight = sorted(weights, key=lambda f: -weights[f][0])
    waits = [f for f in by_weight if weights[f][1] * 2 > weights[f][0]]
    computes = [f for f in by_weight if f not in waits]
    return [f for pair in itertools.zip_longest(computes, waits) for f in pair if f is not None]


def pytest_collection_modifyitems(config, items):
    """The files holding ``slow`` tests first, in ``file_order`` (the rest after them, in collection order): `make
    test` hands out whole files in this order (``--dist loadfile --no-loadscope-reorder``), so a file of one
    5-minute test never starts last while the other worker has nothing left to do. Every worker sorts the same
    collection the same way."""
    rank = {f: i for i, f in enumerate(file_order(file_weights(items)))}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the test stack: its own KFRELEASE_HOME and port offset, exported to os.environ so
    that subprocesses (CLI calls, kfp.local components) use the same stack.

    ``KFRELEASE_AUTO_RELEASE=0``: a staged model is not handed over to a background release runner, so no
    release moves registry stages or traffic behind a test's back; the hand-over tests turn it on.
    ``KFRELEASE_NEWDATA_POLL_SECONDS=0``: the receiver service does not poll for new curated data (on by
    default on the stack), so publishing data never starts a retrain behind a test's back."""
    home = tmp_path_factory.mktemp("kfrelease-home")
    env = {
        "KFRELEASE_HOME": str(home),
        "KFRELEASE_PORT_OFFSET": str(free_port_offset()),
        "KFRELEASE_AUTO_RELEASE": "0",
        "KFRELEASE_NEWDATA_POLL_SECONDS": "0",
    }
    for key in [k for k in os.environ if k.startswith("KFRELEASE_") and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def stack(stack_env) -> Settings:
    """The running embedded stack (core and monitoring services), started once per session."""
    settings = Settings.from_env()
    supervisor.up(settings, declared_services(settings, UP_GROUPS))
    yield settings
    supervisor.down(settings)


@pytest.fixture
def run_cli(stack_env):
    """Run ``kfrelease ARGS`` as a user would (a subprocess); returns CompletedProcess with text output."""

    def run(*args: str, check: bool = False, env: dict | None = None, timeout: float = 600):
        proc = subprocess.run(  # noqa: PLW1510 - the caller decides (check=...)
            [sys.executable, "-m", "kfrelease.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kfrelease {' '.join(args)} exited {proc.returncode}: {proc.stderr}{proc.stdout}")
        return proc

    return run
