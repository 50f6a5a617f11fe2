"""Admission of local training runs: at most N run at once, N derived from the machine.

A run holds one of N *slots* while its pipeline runs; a slot is an exclusive ``flock`` on
``$KFRELEASE_HOME/runs/slots/<i>.lock``, so the kernel releases it when the runner ends in any way
(exit, SIGKILL, the out-of-memory killer): a dead run never keeps its slot. Runs that find every slot
taken wait, recorded as ``queued`` with the reason, and take the next free one.

N = min(cores, 75 % of the machine's memory / the memory limit of one run's model steps), at least 1;
``KFRELEASE_MAX_RUNS`` sets it instead. Sixteen merges at once thus train two or three at a time
instead of sixteen train steps each holding its data (which is what the out-of-memory killer saw).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError

log = logging.getLogger(__name__)

MEMORY_SHARE = 0.75
POLL_SECONDS = 0.5


def machine_limit(run_memory_bytes: int, cores: int | None = None, total_memory: int | None = None) -> int:
    """How many runs fit this machine at once (pure given its arguments)."""
    cores = cores or os.cpu_count() or 1
    total = total_memory or psutil.virtual_memory().total
    by_memory = int(total * MEMORY_SHARE // max(run_memory_bytes, 1))
    return max(1, min(cores, by_memory))


def concurrency_limit(run_memory_bytes: int) -> int:
    configured = setting("KFRELEASE_MAX_RUNS")
    if configured is not None:
        if configured < 1:
            raise ConfigError(f"KFRELEASE_MAX_RUNS={configured!r}: give a whole number of runs >= 1")
        return configured
    return machine_limit(run_memory_bytes)


def slots_dir(settings: Settings) -> Path:
    return settings.home / "runs" / "slots"


def _try_slot(path: Path):
    fh = open(path, "a+")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


@contextlib.contextmanager
def slot(
    settings: Settings, limit: int, on_wait: Callable[[str], None] = lambda why: None, timeout: float | None = None
) -> Iterator[int]:
    """Hold one of ``limit`` run slots for the block; ``on_wait(reason)`` is called once while queued."""
    directory = slots_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        for i in range(limit):
            fh = _try_slot(directory / f"{i}.lock")
            if fh is not None:
                try:
                    log.info("run slot %d of %d taken", i + 1, limit)
                    yield i
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    fh.close()
                return
        if not told:
            on_wait(
                f"waiting for a run slot: all {limit} are taken (limit from this machine; KFRELEASE_MAX_RUNS sets it)"
            )
            told = True
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no run slot of {limit} became free in {timeout:.0f} s")
        time.sleep(POLL_SECONDS)


def busy_slots(settings: Settings, limit: int) -> int:
    """How many of the slots are held now (for ``kfrelease runs``)."""
    directory = slots_dir(settings)
    busy = 0
    for i in range(limit):
        path = directory / f"{i}.lock"
        if not path.exists():
            continue
        fh = _try_slot(path)
        if fh is None:
            busy += 1
        else:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
    return busy
