"""Memory bounded by the data: the train step refuses, before it reads a byte, a dataset version that cannot
fit its memory limit, saying how large it is and what the limit is.

The estimate is rows x columns read x 8 bytes (float64) x ``WORKING_COPIES``: the step holds the frame
as read, its float64 copy for the split, the two splits and the estimator's own copy while fitting. The
factor comes from ``python -m bench memory`` (peak memory per 1M rows of a 10-column dataset; see the
README's Benchmarks section) and is deliberately on the safe side.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from kfrelease.errors import DataValidationError
from kfrelease.training.resources import memory_bytes

WORKING_COPIES = 6
#: What the interpreter, pandas and scikit-learn take before any data (measured: ~200 MB).
BASELINE_BYTES = 300 * 2**20
MEMORY_SHARE = 0.75  # of the machine's memory, when no container limit applies


def container_limit() -> int | None:
    """The cgroup (v2, then v1) memory limit of this process, when one is set (a pod's limits.memory)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def estimate_bytes(rows: int, columns: int) -> int:
    return BASELINE_BYTES + rows * columns * 8 * WORKING_COPIES


def step_limit(spec) -> tuple[int, str]:
    """(bytes, where it comes from): the smallest of the spec's memory limit, the container's and the machine's."""
    declared = spec.resources.memory_limit
    candidates = [(memory_bytes(declared), f"resources.memory_limit {declared} in the model spec")]
    cgroup = container_limit()
    if cgroup:
        candidates.append((cgroup, "this container's memory limit"))
    candidates.append((int(psutil.virtual_memory().total * MEMORY_SHARE), "75 % of this machine's memory"))
    return min(candidates)


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(spec, dataset_version, columns: list[str]) -> int:
    """Raise ``DataValidationError`` when the version cannot fit the step's memory; returns the estimate."""
    rows = int(dataset_version.manifest["row_count"])
    need = estimate_bytes(rows, len(columns))
    limit, source = step_limit(spec)
    if need > limit:
        raise DataValidationError(
            f"dataset {dataset_version.dataset!r} version {dataset_version.version} is too large for the train step: "
            f"{rows:,} rows x {len(columns)} columns need about {_gb(need)}, the limit is {_gb(limit)} ({source}); "
            "raise resources.memory_limit in model.yaml (and run on a machine that has it) or train on fewer rows"
        )
    return need
