"""Where a monitoring window's inputs come from: prediction logs, ground truth, the model's registry entry
(input features, baseline RMSE) and its training reference data.

The readers are the serving part's ``kfrelease.serving.logs.read_predictions`` and
``kfrelease.serving.feedback.read_feedback`` (docs/CONTRACTS.md). Until they exist, ``_read_jsonl_logs`` and
``_read_jsonl_feedback`` read the same CONTRACTS layout (day partitions, JSON Lines), so monitoring works
either way; both read only the day partitions between ``since`` and ``until``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import pandas as pd

from kfrelease.errors import NotFound
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

LOG_BUCKET = "inference-logs"
FEEDBACK_BUCKET = "feedback"


def _days(store: ObjectStore, bucket: str, model: str, since, until) -> list[str]:
    """Day partitions ``<model>/<YYYY-MM-DD>/`` that overlap [since, until]."""
    days = sorted({o.key.split("/")[1] for o in store.iter(bucket, f"{model}/", recursive=False)})
    days = [d for d in days if len(d) == 10 and d[4] == "-"]
    lo = pd.Timestamp(since).strftime("%Y-%m-%d") if since is not None else None
    hi = pd.Timestamp(until).strftime("%Y-%m-%d") if until is not None else None
    return [d for d in days if (lo is None or d >= lo) and (hi is None or d <= hi)]


def _lines(store: ObjectStore, bucket: str, model: str, since, until, warnings: list[str]):
    for day in _days(store, bucket, model, since, until):
        for obj in store.iter(bucket, f"{model}/{day}/"):
            for n, line in enumerate(store.get_bytes(bucket, obj.key).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    yield obj.key, json.loads(line)
                except ValueError:
                    warnings.append(f"{store.uri(bucket, obj.key)} line {n} is not JSON; skipped")


def _read_jsonl_logs(store: ObjectStore, model: str, features: list[str], since=None, until=None,
                     warnings: list[str] | None = None) -> pd.DataFrame:
    warnings = warnings if warnings is not None else []
    requests: dict[str, tuple] = {}
    responses: dict[str, tuple] = {}
    bad_batches: set[str] = set()
    for key, ev in _lines(store, LOG_BUCKET, model, since, until, warnings):
        if ev.get("type") == "request":
            inst = ev.get("instances") or []
            if any(not isinstance(i, list) or len(i) != len(features) for i in inst):
                bad_batches.add(key)
                continue
            requests[ev["id"]] = (ev.get("time"), inst)
        elif ev.get("type") == "response":
            responses[ev["id"]] = (ev.get("time"), ev.get("model_version"), ev.get("stage"), ev.get("predictions") or [])
    for key in sorted(bad_batches):
        warnings.append(
            f"{store.uri(LOG_BUCKET, key)}: instances do not match the model's {len(features)} input features; "
            f"batch skipped (left in place)"
        )
    rows = []
    for rid, (rtime, version, stage, predictions) in responses.items():
        req = requests.get(rid)
        if req is None:
            continue
        for i, (x, y) in enumerate(zip(req[1], predictions)):
            rows.append((rid, i, req[0] or rtime, version, stage, *x, y))
    cols = ["request_id", "instance", "time", "model_version", "stage", *features, "prediction"]
    frame = pd.DataFrame(rows, columns=cols)
    if since is not None or until is not None:
        t = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
        keep = pd.Series(True, index=frame.index)
        if since is not None:
            keep &= t >= pd.Timestamp(since)
        if until is not None:
            keep &= t < pd.Timestamp(until)
        frame = frame[keep]
    return frame


def _read_jsonl_feedback(store: ObjectStore, model: str, since=None, warnings: list[str] | None = None) -> pd.DataFrame:
    warnings = warnings if warnings is not None else []
    rows = []
    for _key, ev in _lines(store, FEEDBACK_BUCKET, model, since, None, warnings):
        truth = ev.get("truth")
        values = truth if isinstance(truth, list) else [truth]
        for i, v in enumerate(values):
            rows.append((str(ev.get("request_id")), i, v, ev.get("time")))
    frame = pd.DataFrame(rows, columns=["request_id", "instance", "truth", "time"])
    frame["truth"] = pd.to_numeric(frame["truth"], errors="coerce")
    return frame


def read_predictions(store: ObjectStore, model: str, features: list[str], since=None, until=None,
                     warnings: list[str] | None = None) -> pd.DataFrame:
    """Logged predictions of ``model`` between ``since`` and ``until`` (serving's reader when present)."""
    try:
        from kfrelease.serving.logs import read_predictions as serving_reader
    except ImportError:
        return _read_jsonl_logs(store, model, features, since, until, warnings)
    return serving_reader(store, model, since=since, until=until)


def read_feedback(store: ObjectStore, model: str, since=None, warnings: list[str] | None = None) -> pd.DataFrame:
    """Ground truth of ``model`` since ``since`` (serving's reader when present)."""
    try:
        from kfrelease.serving.feedback import read_feedback as serving_reader
    except ImportError:
        return _read_jsonl_feedback(store, model, since, warnings)
    return serving_reader(store, model, since=since)


def model_versions(store: ObjectStore, model: str) -> dict[str, dict]:
    """Registry entries by version (empty when the registry is not there or lists nothing)."""
    out: dict[str, dict] = {}
    prefix = f"registry/{model}/versions/"
    try:
        for obj in store.iter("models", prefix):
            if obj.key.endswith("/entry.json"):
                entry = store.get_json("models", obj.key)
                out[entry.get("version") or obj.key[len(prefix):].split("/")[0]] = entry
    except NotFound:
        pass
    return out


def features_of(entries: dict[str, dict]) -> list[str] | None:
    """The input features (in order) of the newest registered version."""
    found = None
    for entry in sorted(entries.values(), key=lambda e: e.get("created_at", "")):
        if entry.get("input_schema"):
            found = [c["name"] for c in entry["input_schema"]]
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
        out[version] = {"rmse": metrics.get("rmse"), **({"r2_floor": floor} if floor is not None else {})}
    return out


def _spec_min_r2(entry: dict) -> float | None:
    """``validation.min_r2`` of the model spec recorded in the entry (the spec's R² floor)."""
    spec = entry.get("spec")
    text = spec.get("text") if isinstance(spec, dict) else None
    if not text:
        return None
    import yaml

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
    from kfrelease.data.publish import load_dataset

    try:
        df, _ = load_dataset(store, dataset, version or "latest")
        return df
    except NotFound:
        log.warning("drift reference %s@%s is not in the curated bucket; drift is skipped", dataset, version)
        return None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def since_for(lookback_seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=lookback_seconds)
