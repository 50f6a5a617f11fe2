"""Where a monitoring window's inputs come from: prediction logs, ground truth, the model's registry entry
(input features, baseline RMSE) and its training reference data.

Prediction logs and ground truth come from the one reader, ``kfrelease.lake`` (Parquet, only the hour
partitions of the window); instances that do not match the model's input schema are skipped, left in place
and reported.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pandas as pd
import yaml

from kfrelease.data.publish import load_dataset
from kfrelease.errors import NotFound
from kfrelease.lake.engine import open_window as _open
from kfrelease.registry import ModelRegistry
from kfrelease.registry.artifact import CATEGORY_DTYPES
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)


def open_window(
    store: ObjectStore,
    model: str,
    features: list[str],
    since=None,
    until=None,
    keys: bool = False,
    categorical: list[str] | tuple[str, ...] = (),
):
    """The window in the embedded engine (``kfrelease.lake.engine.open_window``), joined rows materialised
    (``keys``: with request ids, which count windows order by); ``categorical``: the category features."""
    return _open(
        store,
        model,
        since,
        until,
        features=features,
        materialize="with-keys" if keys else True,
        categorical=categorical,
    )


def model_versions(store: ObjectStore, model: str) -> dict[str, dict]:
    """Registry entries by version (empty when the registry is not there or lists nothing)."""
    try:
        return ModelRegistry(store).entries(model)
    except NotFound:
        return {}


def features_of(entries: dict[str, dict]) -> list[str] | None:
    """The input features (in order) of the newest registered version."""
    found = None
    for entry in sorted(entries.values(), key=lambda e: e.get("created_at", "")):
        if entry.get("input_schema"):
            found = [c["name"] for c in entry["input_schema"]]
    return found


def categorical_of(entries: dict[str, dict]) -> list[str]:
    """The category features (input schema dtype ``category`` or ``string``) of the newest registered version."""
    found: list[str] = []
    for entry in sorted(entries.values(), key=lambda e: e.get("created_at", "")):
        if entry.get("input_schema"):
            found = [c["name"] for c in entry["input_schema"] if c.get("dtype") in CATEGORY_DTYPES]
    return found


def baselines_of(entries: dict[str, dict], r2_floor: float | None = None) -> dict[str, dict]:
    """Per version: the RMSE measured at evaluation (``metrics.rmse``) and the R² floor."""
    out = {}
    for version, entry in entries.items():
        metrics = entry.get("metrics") or {}
        floor = r2_floor
        if floor is None:
            floor = (entry.get("thresholds") or {}).get("r2_min")
        if floor is None:
            floor = _spec_min_r2(entry)
        out[version] = {
            "rmse": metrics.get("rmse"),
            **({"r2_floor": floor} if floor is not None else {}),
        }
    return out


def _spec_min_r2(entry: dict) -> float | None:
    """``validation.min_r2`` of the model spec recorded in the entry (the spec's R² floor)."""
    spec = entry.get("spec")
    text = spec.get("text") if isinstance(spec, dict) else None
    if not text:
        return None

    try:
        value = ((yaml.safe_load(text) or {}).get("validation") or {}).get("min_r2")
    except yaml.YAMLError:
        return None
    return float(value) if value is not None else None


def reference_of(store: ObjectStore, entries: dict[str, dict]) -> pd.DataFrame | None:
    """The curated dataset version the newest registered version was trained on (drift reference)."""
    if not entries:
        return None
    entry = max(entries.values(), key=lambda e: e.get("created_at", ""))
    dataset, version = entry.get("dataset"), entry.get("dataset_version")
    if not dataset:
        return None

    try:
        df, _ = load_dataset(store, dataset, version or "latest")
        return df
    except NotFound:
        log.warning(
            "drift reference %s@%s is not in the curated bucket; drift is skipped",
            dataset,
            version,
        )
        return None


def utcnow() -> datetime:
    return datetime.now(UTC)


def since_for(lookback_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=lookback_seconds)
