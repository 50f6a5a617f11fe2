"""Prediction logs and ground truth in the lake layout (``kfrelease.lake``), written straight into the store.

The log sink and the feedback service write these files in production; this helper writes the same format
for tests, the benchmark and the notebook (healthy, noisy or shifted traffic) without running a model
server. One request event and one response event per request, ``instances`` in input-schema order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from kfrelease.data.publish import publish
from kfrelease.data.spec import load_spec
from kfrelease.lake.write import write_records
from kfrelease.registry import ModelRegistry
from kfrelease.storage import ObjectStore


def span_start(hours: float, now: datetime | None = None) -> datetime:
    """A start time for ``hours`` of past traffic that lies inside one UTC day, so that day-long windows
    (aligned to UTC midnight) do not split it: ``now - hours`` when that is still today, else the same span
    ending one hour before yesterday's end. At most 22 hours."""
    if not 0 < hours <= 22:
        raise ValueError(f"span_start: hours must be in (0, 22], got {hours}")
    now = now or datetime.now(UTC)
    start = now - timedelta(hours=hours)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return start if start >= midnight else midnight - timedelta(hours=hours + 1)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_traffic(
    store: ObjectStore,
    model: str,
    version: str,
    stage: str,
    inputs: pd.DataFrame,
    predictions,
    truths=None,
    start: datetime | None = None,
    step_seconds: float = 1.0,
    batch_size: int = 5000,
    label_fraction: float = 1.0,
) -> list[str]:
    """Log one single-instance request per row of ``inputs`` (times ``start + i*step``), and its truth.

    Returns the request ids. ``truths=None`` writes no ground truth; ``label_fraction`` < 1 labels only the
    first fraction of rows; a text column (category values) is logged as strings, as the predictor logs them.
    Uses the ``serving`` role's rights (inference-logs write, feedback write)."""
    start = start or datetime.now(UTC)
    text = [c for c in inputs.columns if not pd.api.types.is_numeric_dtype(inputs[c])]
    if text:
        values = [
            [v if isinstance(v, str) else float(v) for v in row] for row in inputs.itertuples(index=False, name=None)
        ]
    else:
        values = inputs.to_numpy(dtype="float64").tolist()
    preds = np.asarray(predictions, dtype="float64").tolist()
    ids = [uuid.uuid4().hex for _ in values]
    times = [start + timedelta(seconds=i * step_seconds) for i in range(len(values))]
    n_label = round(len(values) * label_fraction) if truths is not None else 0

    t = np.asarray(truths, dtype="float64").tolist() if truths is not None else []
    for lo in range(0, len(values), batch_size):
        hi = min(lo + batch_size, len(values))
        lines = []
        for i in range(lo, hi):
            common = {
                "id": ids[i],
                "time": _iso(times[i]),
                "source": "synthetic",
                "model": model,
                "model_version": version,
                "stage": stage,
                "endpoint": "default",
                "component": "predictor",
                "inferenceservicename": model,
                "namespace": "kfrelease",
            }
            lines.append({**common, "type": "request", "instances": [values[i]]})
            lines.append({**common, "type": "response", "predictions": [preds[i]]})
        origin = f"synthetic:{uuid.uuid4()}"
        write_records(store, "inference-logs", model, lines, origin)
        if lo < n_label:
            labels = [
                {"request_id": ids[i], "truth": t[i], "time": _iso(times[i] + timedelta(seconds=1))}
                for i in range(lo, min(hi, n_label))
            ]
            write_records(store, "feedback", model, labels, origin)
    return ids


def register_entry(
    store: ObjectStore,
    model: str,
    version: str,
    features: list[str],
    rmse: float,
    dataset: str | None = None,
    dataset_version: str | None = None,
    commit: str = "0" * 40,
    r2_min: float | None = None,
    categorical: dict[str, list[str]] | None = None,
) -> dict:
    """A registry entry in the CONTRACTS format (``pipeline`` role) for models registered outside training;
    ``categorical`` maps a category feature to its known values (its dtype is then ``category``; a value that
    is a pair ``(values, shares)`` gives its values)."""

    def column(f: str) -> dict:
        if f not in (categorical or {}):
            return {"name": f, "dtype": "float64"}
        values = categorical[f]
        if isinstance(values, tuple):
            values = values[0]
        return {"name": f, "dtype": "category", "categories": list(values), "unknown": "refuse"}

    tag, manual, auto = (int(x) for x in version.lstrip("V").split("."))
    entry = {
        "name": model,
        "version": version,
        "tag": tag,
        "manual": manual,
        "auto": auto,
        "commit": commit,
        "spec_fingerprint": "synthetic",
        "dataset": dataset,
        "dataset_version": dataset_version,
        "run_id": "synthetic",
        "metrics": {"rmse": rmse},
        "verdict": {"passed": True, "reasons": []},
        "artifact": None,
        "input_schema": [column(f) for f in features],
        "target": "progression",
        "image": None,
        "created_at": _iso(datetime.now(UTC)),
    }
    if r2_min is not None:
        entry["thresholds"] = {"r2_min": r2_min}
    ModelRegistry(store).put_entry(entry)
    return entry


def publish_reference(store: ObjectStore, dataset: str, frame: pd.DataFrame) -> str:
    """Publish ``frame`` as a curated dataset version named ``dataset`` (``data-engineer`` role) to serve as a
    model's training reference; returns the version id."""
    spec = load_spec("diabetes").with_changes(name=dataset)
    return publish(frame.reset_index(drop=True), spec, store, sources=[], run_id="synthetic").version
