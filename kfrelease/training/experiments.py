"""A data scientist's experiments, for any model project: read curated data, compare model definitions,
submit one to the training pipeline as an **experiment** and load registered models.

An experiment is trained, evaluated, validated (against production on the same rows) and registered in the
registry's ``experiments`` space (``kfrelease.registry.EXPERIMENTS``), where it can be compared
(``kfrelease models diff``) but never staged: only the merge trigger's run releases. The notebook
``notebooks/data_scientist.ipynb`` is a thin walk over these functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import yaml

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.kfp.runner import run_local
from kfrelease.registry import EXPERIMENTS, ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training.spec import ModelSpec, load_project, parse_spec

log = logging.getLogger(__name__)

#: the identity of a data scientist's experiment runs (kfrelease/access/policy.yaml)
ROLE = "data-scientist"


def dataset_columns(manifest: dict) -> tuple[list[str], str]:
    """(features, target) of a curated version as its data engineers declared it: every column except the
    target and the id column, in order."""
    target = manifest.get("target")
    if not target:
        raise ConfigError(f"dataset {manifest.get('dataset')!r} declares no target; give target= explicitly")
    skip = {target, manifest.get("id_column")}
    return [c["name"] for c in manifest["columns"] if c["name"] not in skip], target


def project_spec(
    project: str | Path | None = None,
    *,
    store=None,
    dataset: str | None = None,
    features: list[str] | None = None,
    target: str | None = None,
    name: str | None = None,
) -> ModelSpec:
    """The model spec to start from: a model project's ``model.yaml`` (and its ``build:`` code), with
    ``dataset``/``features``/``target``/``name`` overriding it; without a project, a ridge regression on the
    dataset's declared features and target (read from its latest curated version through ``store``)."""
    if project is not None:
        path = Path(project)
        base = load_project(path)
        doc, code = yaml.safe_load(base.text), dict(base.code)
    else:
        if not dataset:
            raise ConfigError("give a model project (project=) or a dataset (dataset=) to start from")
        doc, code = (
            {
                "name": name or f"{dataset}-model",
                "tag": 1,
                "dataset": dataset,
                "estimator": {"class": "sklearn.linear_model.Ridge", "params": {"alpha": 1.0}},
                "split": {"test_size": 0.2, "seed": 42},
            },
            {},
        )
    if dataset:
        doc["dataset"] = dataset
    if name:
        doc["name"] = name
    if (features is None or target is None) and (project is None or dataset):
        if store is None:
            raise ConfigError("reading the dataset's declared features needs the object store (store=)")
        from kfrelease.data.publish import get_version  # heavy: pandas

        declared_features, declared_target = dataset_columns(get_version(store, doc["dataset"]).manifest)
        features = features if features is not None else declared_features
        target = target or declared_target
    if features is not None:
        doc["features"] = list(features)
    if target:
        doc["target"] = target
    return parse_spec(yaml.safe_dump(doc, sort_keys=False), f"experiment on {doc['dataset']}", code)


def with_estimator(spec: ModelSpec, estimator: dict | str) -> ModelSpec:
    """The same spec with another estimator: ``{"class": ..., "params": {...}}`` or a ``build:`` entry
    (``"model.py:build_model"``, code from the spec's project)."""
    doc = yaml.safe_load(spec.text)
    doc.pop("estimator", None)
    doc.pop("build", None)
    if isinstance(estimator, str):
        doc["build"] = estimator
    else:
        doc["estimator"] = dict(estimator)
    return parse_spec(yaml.safe_dump(doc, sort_keys=False), f"{spec.name} variant", spec.code)


def compare(candidates: dict[str, ModelSpec], df, dataset_version: str) -> list[dict]:
    """Train each candidate on the same split of ``df`` and score it on the held-out rows, best RMSE first:
    ``[{label, rmse, mae, r2, fit_seconds, spec}]``."""
    from kfrelease.quality.metrics import regression_metrics  # heavy: numpy
    from kfrelease.training.core import predict, train  # heavy: pandas

    rows = []
    for label, spec in candidates.items():
        result = train(spec, df, dataset_version)
        scores = regression_metrics(result.test[spec.target], predict(result.model, result.test, spec.features))
        rows.append(
            {
                "label": label,
                **{k: scores[k] for k in ("rmse", "mae", "r2")},
                "fit_seconds": round(result.fit_seconds, 3),
                "spec": spec,
            }
        )
    return sorted(rows, key=lambda r: r["rmse"])


def submit_experiment(spec: ModelSpec, settings: Settings | None = None, dataset_version: str = "latest"):
    """Run the training pipeline (``kfp.local``) on ``spec`` as an experiment and return its registry entry
    (``ModelVersion`` in the experiments space). Nothing is staged or released: the run has no trigger run
    record, so register files it under experiments and containerize/deploy-staging do nothing. Its steps
    run as the data-scientist identity (``KFRELEASE_ROLE``, ``kfrelease.training.steps.step_role``), as a
    notebook's run does on the cluster: it may write the experiments space and nothing else of ``models``."""
    from kfrelease.pipelines.training_pipeline import training_pipeline  # heavy: kfp

    settings = settings or Settings.from_env()
    spec.build_estimator()  # a bad estimator or parameter: refused before the pipeline starts
    with _steps_as(ROLE):
        version = run_local(
            settings,
            training_pipeline,
            spec=spec.to_dict(),
            commit="experiment",
            dataset_version=dataset_version,
            run_id="",
        ).output
    return ModelRegistry(store_for(ROLE, settings), EXPERIMENTS).get(spec.name, version)


@contextlib.contextmanager
def _steps_as(role: str):
    """``KFRELEASE_ROLE=role`` for the pipeline steps (kfp.local runs each in a child process of this one)."""
    before = setting("KFRELEASE_ROLE")
    os.environ["KFRELEASE_ROLE"] = role
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KFRELEASE_ROLE", None)
        else:
            os.environ["KFRELEASE_ROLE"] = before


def load_model(
    name: str,
    stage: str | None = "production",
    version: str | None = None,
    *,
    experiment: bool = False,
    settings: Settings | None = None,
):
    """The fitted estimator of a registered model, as the data-scientist identity reads it:
    ``load_model("diabetes-progression")`` (its production version), ``stage="staging"``, or
    ``version="V1.2.0"`` (``experiment=True`` for a version in the experiments space)."""
    reg = ModelRegistry(store_for(ROLE, settings), EXPERIMENTS if experiment else "registry")
    if version is None:
        if experiment:
            versions = reg.list(name)
            if not versions:
                raise KfreleaseError(f"model {name!r} has no experiment registered")
            version = versions[-1].version
        else:
            mv = reg.current(name, stage or "production")
            if mv is None:
                known = ", ".join(reg.models()) or "none"
                raise KfreleaseError(f"model {name!r} has no {stage} version (registered models: {known})")
            version = mv.version
    return reg.load_model(name, version)
