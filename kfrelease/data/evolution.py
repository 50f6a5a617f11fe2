"""Schema evolution of curated datasets against the models that use them.

Adding a column, or making one optional, changes nothing for the versions already published (each
keeps its own schema in its manifest) nor for the models trained on them (they read only their own
features). Removing or retyping a column that a *production* model reads would break that model on
its next retrain or on the data it is monitored with, so ``publish`` refuses it, naming the model.

The production models and their features come from the model registry (``models`` bucket); the dtypes
they were trained on come from the manifest of the dataset version each was trained on.
"""

from __future__ import annotations

import logging

import pandas as pd

from kfrelease.data.publish import get_version
from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError, NotFound
from kfrelease.registry import ModelRegistry
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)


def registry_reader(settings=None) -> ObjectStore:
    """The identity publish reads the registry with: the data engineers' own role, which may read and list
    ``models`` (and nothing more there) in kfrelease/access/policy.yaml, so the same check runs in the data
    pipeline's pod on EKS (its IRSA role is rendered from the same policy)."""
    return store_for("data-engineer", settings)


def production_consumers(registry: ObjectStore, dataset: str) -> list[dict]:
    """``[{model, version, dataset_version, columns}]`` of every production model trained on ``dataset``."""
    reg = ModelRegistry(registry)
    out = []
    for model in reg.models():
        mv = reg.current(model, "production")
        if mv is None or mv.entry.get("dataset") != dataset:
            continue
        columns = [*mv.features, *([mv.entry["target"]] if mv.entry.get("target") else [])]
        out.append(
            {
                "model": model,
                "version": mv.version,
                "dataset_version": mv.entry.get("dataset_version"),
                "columns": columns,
            }
        )
    return out


def _kind(dtype: str) -> str:
    return dtype.lower()  # int64 and its nullable Int64 hold the same values


def breaking_changes(consumers: list[dict], trained_dtypes: dict[str, dict[str, str]], df: pd.DataFrame) -> list[str]:
    """One line per column of a production model that ``df`` removes or retypes (pure)."""
    have = {c: str(t) for c, t in df.dtypes.items()}
    found = []
    for c in consumers:
        before = trained_dtypes.get(c["dataset_version"] or "", {})
        for col in c["columns"]:
            if col not in have:
                found.append(
                    f"production model {c['model']} {c['version']} uses column {col!r}, which this version removes"
                )
            elif col in before and _kind(before[col]) != _kind(have[col]):
                found.append(
                    f"production model {c['model']} {c['version']} was trained on column {col!r} as "
                    f"{before[col]}; this version makes it {have[col]}"
                )
    return found


def check_compatible(
    curated: ObjectStore, spec: DatasetSpec, df: pd.DataFrame, registry: ObjectStore | None = None
) -> None:
    """Raise ``DataValidationError`` when publishing ``df`` would remove or retype a production model's column."""
    consumers = production_consumers(registry or registry_reader(), spec.name)
    if not consumers:
        return
    trained: dict[str, dict[str, str]] = {}
    for c in consumers:
        version = c["dataset_version"]
        if version and version not in trained:
            try:
                manifest = get_version(curated, spec.name, version).manifest
                trained[version] = {col["name"]: col["dtype"] for col in manifest["columns"]}
            except NotFound:
                log.warning(
                    "%s %s was trained on %s version %s, which is not published",
                    c["model"],
                    c["version"],
                    spec.name,
                    version,
                )
    problems = breaking_changes(consumers, trained, df)
    if problems:
        raise DataValidationError(
            f"dataset {spec.name!r}: publishing would break production: "
            + "; ".join(problems)
            + "; keep the column with its dtype (a new column may be added, optional) until a model that does "
            "not need it is in production (nothing was published)",
            [{"column": None, "rule": p, "count": 1, "rows": []} for p in problems],
        )
