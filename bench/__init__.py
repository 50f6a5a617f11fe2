"""Benchmarks (not tests). ``python -m bench [area ...]`` runs ``bench/bench_<area>.py`` modules."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fresh_home(name: str) -> tuple[Path, dict]:
    """A new state directory for a benchmark's own embedded stack, on ports no other stack holds, set in this
    process's environment (``Settings.from_env()`` reads it); returns (home, the environment for the benchmark's
    child processes: the same, and this checkout on ``PYTHONPATH``)."""
    from tests.conftest import free_port_offset  # the tests' own port search: one rule for every stack

    home = Path(tempfile.mkdtemp(prefix=f"kfrelease-bench-{name}-"))
    os.environ.update({"KFRELEASE_HOME": str(home), "KFRELEASE_PORT_OFFSET": str(free_port_offset())})
    return home, {**os.environ, "PYTHONPATH": str(REPO)}
