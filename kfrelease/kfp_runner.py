"""Run compiled-in pipelines with ``kfp.local`` (embedded stack) and compile them to YAML packages.

Locally the SubprocessRunner runs each component in this environment (no images, no retries, no
caching: kfp.local ignores them). On a cluster the same pipeline functions are submitted with
``kfp.Client`` (see ``kfrelease trigger``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.errors import ConfigError, KfreleaseError

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


def available_pipelines() -> dict[str, object]:
    """The pipelines whose modules exist (parts not built yet are skipped)."""
    out = {}
    for name, target in PIPELINES.items():
        module = target.partition(":")[0]
        try:
            out[name] = pipeline_function(name)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
    return out


def init_local(settings: Settings) -> Path:
    """Point kfp.local at a pipeline root under the data directory and run components in this env."""
    from kfp import local

    root = settings.home / "kfp-local"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def run_local(settings: Settings, pipeline_func, **arguments):
    """Run a pipeline to completion with kfp.local; a failed task raises ``KfreleaseError`` naming it."""
    init_local(settings)
    try:
        return pipeline_func(**arguments)
    except RuntimeError as exc:
        raise KfreleaseError(f"pipeline {getattr(pipeline_func, 'name', pipeline_func)} failed: {exc}") from None


def compile_pipelines(out_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Write each pipeline as a KFP YAML package (uploadable in the Kubeflow UI)."""
    from kfrelease.images import compile_package

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    pipelines = available_pipelines()
    for name in names or list(pipelines):
        func = pipelines.get(name) or pipeline_function(name)
        path = out_dir / f"{name}_pipeline.yaml"
        compile_package(func, path)  # every step on KFRELEASE_IMAGE as it is now (kfrelease.images)
        written.append(path)
    return written
