"""Configure pipeline tasks without paying for kfp's stack walk.

Each of kfp's container setters (``set_cpu_request``, ``set_cpu_limit``, ``set_memory_request``,
``set_memory_limit``, ``set_env_variable``, ...) first calls ``PipelineTask._ensure_container_spec_exists``, which
calls ``inspect.stack()`` to name the setter in an error message (``kfp/dsl/pipeline_task.py`` of kfp 2.17.3, the
version ``constraints.txt`` pins).
``inspect.stack()`` reads the source of every frame of the caller's stack, and for each frame whose file is no
module's (``<frozen importlib._bootstrap>`` while a pipeline module is imported, ``<string>`` in a pytest-xdist
worker) ``inspect.getmodule`` scans all of ``sys.modules``. Called where a pipeline is defined (inside an import,
under whatever called it) five setters per task cost 3.4 CPU-s to import the four pipelines in a fresh process,
3.1 of them in those stack walks, and 5-8 CPU-s per pipeline module in a test worker; every process that
imports a pipeline paid it (each training run's runner, ``data publish``, ``release run``, ``compile``).

:func:`on_shallow_stack` runs a function at the bottom of a new thread, whose stack is a handful of frames of
real files: the same setters, the same task, the same compiled IR, for 0.6 CPU-s instead of 3.4.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_shallow_stack(function: Callable[..., T], *args, **kwargs) -> T:
    """``function(*args, **kwargs)`` called at the bottom of a new thread (waited for): its result, or what it
    raised, raised here. For code that calls kfp's task setters (see the module docstring)."""
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=call, name=f"kfp-task-{getattr(function, '__name__', 'call')}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]
