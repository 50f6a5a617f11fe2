"""Native thread pools of a model server pinned to the cores it is given (issue 23).

scikit-learn's HistGradientBoosting and forests predict with OpenMP threads, NumPy and SciPy with BLAS
threads; each runtime starts one thread per visible core unless told otherwise. A model server answers one
small request at a time, so on a busy machine those threads only wait for each other: one row took p99 736 ms
with the default threads on 2 busy cores and 20 ms with one (docs/release.md). ``pin_native_threads`` runs
first in a model server process (``kfrelease.serving.host``, ``kfrelease.serving.predictor``) and limits every
loaded runtime with ``threadpoolctl`` (which also works in a server forked from the warm spare, whose
runtimes were loaded before the fork) and sets the usual variables for anything loaded later.

The cores it is given: ``OMP_NUM_THREADS`` when set (on a cluster the predictor's container sets it from its
CPU limit, ``resourceFieldRef: limits.cpu``), else the CPU quota of its cgroup (``cpu.max``, floor, at least
1), else 1: on the embedded stack every model server shares the machine's cores with the others and the stack.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cores_given(env: dict | None = None, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The threads a model server may use (see the module docstring)."""
    env = os.environ if env is None else env
    value = env.get("OMP_NUM_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            log.warning("OMP_NUM_THREADS=%r is not a whole number; using the CPU quota", value)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, math.floor(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return 1


def pin_native_threads(threads: int | None = None) -> int:
    """Limit OpenMP and BLAS thread pools to ``threads`` (default ``cores_given()``); returns the number."""
    from threadpoolctl import threadpool_limits

    n = threads or cores_given()
    for name in VARIABLES:
        os.environ[name] = str(n)
    threadpool_limits(limits=n)
    log.debug("native thread pools (OpenMP, BLAS) limited to %d thread(s)", n)  # stderr stays one line on errors
    return n
