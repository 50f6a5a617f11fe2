"""Run compiled-in pipelines with ``kfp.local`` (embedded stack) and compile them to YAML packages.

Locally the SubprocessRunner runs each component in this environment (no images, no retries, no
caching: kfp.local ignores them). On a cluster the same pipeline functions are submitted with
``kfp.Client`` (see ``kfrelease trigger``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import sys
import time
import warnings
from pathlib import Path

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.images.project import compile_package

log = logging.getLogger(__name__)

#: Every pipeline ``kfrelease compile`` writes: name -> "module:function".
PIPELINES: dict[str, str] = {
    "data": "kfrelease.pipelines.data_pipeline:data_pipeline",
    "training": "kfrelease.pipelines.training_pipeline:training_pipeline",
    "release": "kfrelease.pipelines.release_pipeline:release_pipeline",
    "monitoring": "kfrelease.pipelines.monitoring_pipeline:monitoring_pipeline",
}


def pipeline_function(name: str):
    target = PIPELINES.get(name)
    if target is None:
        raise ConfigError(f"unknown pipeline {name!r}; pipelines: {', '.join(PIPELINES)}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def init_local(settings: Settings) -> Path:
    """Point kfp.local at a pipeline root under the data directory and run components in this env."""
    from kfp import local  # heavy: kfp

    root = settings.home / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FINISHED = re.compile(r"Task '?([\w.-]+)'? finished with status (\w+)")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (kfp.local colours task names and statuses)."""
    return _ANSI.sub("", text)


class _StepStream(io.TextIOBase):
    """Where kfp.local's output goes when it is not shown: kept (for the failure's reason) and read line by
    line for each task's final status, passed to ``on_step`` or printed (``step <task>: SUCCESS (at <s> s)``) on the
    output as it was before the run (a run's log file, a notebook cell)."""

    def __init__(self, on_step=None):
        self.lines: list[str] = []
        self._partial = ""
        self.on_step = on_step
        self._shown = (sys.stdout, sys.stderr)  # where on_step prints: the output as it was before the run
        self._started = time.monotonic()

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            line = strip_ansi(line).rstrip()
            self.lines.append(line)
            m = _FINISHED.search(line)
            if m:  # (logging would not show it: kfp.local points the root logger at this stream meanwhile)
                with contextlib.redirect_stdout(self._shown[0]), contextlib.redirect_stderr(self._shown[1]):
                    if self.on_step is not None:
                        self.on_step(m[1], m[2])
                    else:
                        at = time.monotonic() - self._started  # seconds since the run started
                        print(f"step {m[1]}: {m[2]} (at {at:.1f} s)", flush=True)
        return len(text)

    def reason(self) -> str:
        """The last error line a failed task printed (e.g. ``ConfigError: ...``), or ''."""
        for line in reversed(self.lines):
            text = line.strip()
            if re.match(r"^[\w.]*(Error|Exception|Refused|Denied|NotFound|Conflict)\b.*:", text):
                return text
        return ""


def run_local(settings: Settings, pipeline_func, verbose: bool | None = None, on_step=None, **arguments):
    """Run a pipeline to completion with kfp.local; a failed task raises ``KfreleaseError`` naming it and the
    error it printed (no colour codes).

    Quiet unless ``verbose`` (default: ``KFRELEASE_VERBOSE=1``, which ``kfrelease -v`` sets for itself and the
    runs it starts): kfp.local's executor JSON, streamed step logs and its "non-Python base image" warnings
    are kept out of the output; each task's status is given to ``on_step(task, status)`` or printed."""
    init_local(settings)
    name = getattr(pipeline_func, "name", pipeline_func)
    if verbose is None:
        verbose = setting("KFRELEASE_VERBOSE")
    stream = _StepStream(on_step)
    quiet = contextlib.ExitStack()
    if not verbose:
        quiet.enter_context(contextlib.redirect_stdout(stream))
        quiet.enter_context(contextlib.redirect_stderr(stream))
        quiet.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
    try:
        with quiet:
            return pipeline_func(**arguments)
    except RuntimeError as exc:
        why = stream.reason()
        if not verbose and stream.lines:
            log.info("output of pipeline %s:\n%s", name, "\n".join(stream.lines[-40:]))
        raise KfreleaseError(f"pipeline {name} failed: {strip_ansi(str(exc))}" + (f": {why}" if why else "")) from None


def compile_pipelines(out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Write each pipeline as a KFP YAML package (uploadable in the Kubeflow UI)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(PIPELINES):
        func = pipeline_function(name)
        path = out_dir / f"{name}_pipeline.yaml"
        compile_package(func, path)  # every step on KFRELEASE_IMAGE as it is now (kfrelease.images.project)
        written.append(path)
    return written
