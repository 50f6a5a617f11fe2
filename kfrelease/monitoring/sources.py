"""Where a monitoring window's inputs come from: prediction logs, ground truth, the model's registry entry
(input features, baseline RMSE) and its training reference data.

Prediction logs are read column-wise with Arrow's JSON reader (``read_predictions``): it returns the same
frame as the serving part's ``kfrelease.serving.logs.read_predictions`` (docs/CONTRACTS.md) but keeps only the
fields a window needs, in float64 arrays, so one window over a million logged predictions stays within
seconds and a few hundred MB (bench/results/monitoring.md); the serving reader builds a Python dict per
event, which took ~8 s and 0.6 GB per 100k predictions. Batches whose instances do not match the model's
input schema are skipped, left in place and reported. Ground truth is read the same way
(``read_feedback``, same frame as ``kfrelease.serving.feedback.read_feedback``). Only the day
partitions between ``since`` and ``until`` are read.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pandas as pd

from kfrelease.errors import NotFound
from kfrelease.serving.logs import BASE_COLUMNS
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

LOG_BUCKET = "inference-logs"
FEEDBACK_BUCKET = "feedback"


def _days(store: ObjectStore, bucket: str, model: str, since, until) -> list[str]:
    """Day partitions ``<model>/<YYYY-MM-DD>/`` that overlap [since, until]."""
    days = sorted(
        {o.key.split("/")[1] for o in store.iter(bucket, f"{model}/", recursive=False)}
    )
    days = [d for d in days if len(d) == 10 and d[4] == "-"]
    lo = pd.Timestamp(since).strftime("%Y-%m-%d") if since is not None else None
    hi = pd.Timestamp(until).strftime("%Y-%m-%d") if until is not None else None
    return [d for d in days if (lo is None or d >= lo) and (hi is None or d <= hi)]


def _log_schema():
    import pyarrow as pa

    # Only the fields a window needs; everything else in a line is skipped by the parser.
    return pa.schema(
        [
            ("id", pa.string()),
            ("type", pa.string()),
            ("time", pa.string()),
            ("source", pa.string()),
            ("model_version", pa.string()),
            ("stage", pa.string()),
            ("instances", pa.list_(pa.list_(pa.float64()))),
            ("predictions", pa.list_(pa.float64())),
        ]
    )


def _parse_batch(data: bytes, uri: str, warnings: list[str]):
    """One JSON Lines batch as an Arrow table of the needed fields; bad lines are skipped and reported."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    options = pj.ParseOptions(
        explicit_schema=_log_schema(), unexpected_field_behavior="ignore"
    )
    try:
        return pj.read_json(io.BytesIO(data), parse_options=options)
    except pa.ArrowInvalid:
        pass
    tables, bad = [], []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tables.append(pj.read_json(io.BytesIO(line), parse_options=options))
        except pa.ArrowInvalid:
            bad.append(n)
    if bad:
        warnings.append(
            f"{uri}: {len(bad)} line(s) are not valid log events (lines {bad[:5]}...); skipped"
        )
    return pa.concat_tables(tables) if tables else _log_schema().empty_table()


def read_predictions(
    store: ObjectStore,
    model: str,
    features: list[str],
    since=None,
    until=None,
    warnings: list[str] | None = None,
) -> pd.DataFrame:
    """Logged predictions of ``model`` between ``since`` and ``until``: the CONTRACTS frame of
    ``kfrelease.serving.logs.read_predictions``, read column-wise with Arrow's JSON reader (bounded: only the needed
    fields, float64 arrays for features; ~100 bytes per predicted instance beyond the raw batch)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    warnings = warnings if warnings is not None else []
    width = len(features)
    req_parts, resp_parts, batch_keys = [], [], []
    for day in _days(store, LOG_BUCKET, model, since, until):
        for obj in store.iter(LOG_BUCKET, f"{model}/{day}/"):
            table = _parse_batch(
                store.get_bytes(LOG_BUCKET, obj.key),
                store.uri(LOG_BUCKET, obj.key),
                warnings,
            )
            if table.num_rows == 0:
                continue
            b = len(batch_keys)
            batch_keys.append(obj.key)
            table = table.append_column(
                "_batch", pa.array(np.full(table.num_rows, b, dtype="int32"))
            )
            is_req = pc.equal(table["type"], "request")
            req_parts.append(
                table.filter(pc.and_(is_req, pc.is_valid(table["instances"]))).select(
                    ["id", "source", "time", "instances", "_batch"]
                )
            )
            resp_parts.append(
                table.filter(
                    pc.and_(
                        pc.equal(table["type"], "response"),
                        pc.is_valid(table["predictions"]),
                    )
                ).select(
                    ["id", "source", "time", "model_version", "stage", "predictions"]
                )
            )
    columns = [*BASE_COLUMNS, *features, "prediction"]
    if not req_parts:
        return pd.DataFrame(columns=columns)
    req = pa.concat_tables(req_parts)
    resp = pa.concat_tables(resp_parts)
    # requests: one row per instance; drop requests whose instances do not match the input schema
    counts = pc.list_value_length(req["instances"]).to_numpy(zero_copy_only=False)
    per_instance = pc.list_flatten(req["instances"])
    widths = pc.list_value_length(per_instance).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(req.num_rows), counts)
    bad_req = np.zeros(req.num_rows, dtype=bool)
    bad_req[owner[widths != width]] = True
    if bad_req.any():
        bad_batches = sorted({batch_keys[i] for i in req["_batch"].to_numpy()[bad_req]})
        warnings.append(
            f"{int(bad_req.sum())} logged request(s) in {len(bad_batches)} batch(es) do not match the model's "
            f"{width} input features and were skipped (left in place): "
            + ", ".join(store.uri(LOG_BUCKET, k) for k in bad_batches[:5])
        )
        req = req.filter(pa.array(~bad_req))
        counts = counts[~bad_req]
        per_instance = pc.list_flatten(req["instances"])
    values = (
        pc.list_flatten(per_instance).to_numpy(zero_copy_only=False).reshape(-1, width)
    )
    owner = np.repeat(np.arange(req.num_rows), counts)
    instance = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
    left = pd.DataFrame(values, columns=features)
    left.insert(0, "request_id", req["id"].to_numpy(zero_copy_only=False)[owner])
    left.insert(1, "source", req["source"].to_numpy(zero_copy_only=False)[owner])
    left.insert(2, "instance", instance.astype("int64"))
    left.insert(3, "time", req["time"].to_numpy(zero_copy_only=False)[owner])
    left = left.drop_duplicates(["request_id", "source", "instance"])
    # responses: one row per predicted value
    pcounts = pc.list_value_length(resp["predictions"]).to_numpy(zero_copy_only=False)
    powner = np.repeat(np.arange(resp.num_rows), pcounts)
    right = pd.DataFrame(
        {
            "request_id": resp["id"].to_numpy(zero_copy_only=False)[powner],
            "source": resp["source"].to_numpy(zero_copy_only=False)[powner],
            "instance": (
                np.arange(len(powner))
                - np.repeat(np.cumsum(pcounts) - pcounts, pcounts)
            ).astype("int64"),
            "model_version": resp["model_version"].to_numpy(zero_copy_only=False)[
                powner
            ],
            "stage": resp["stage"].to_numpy(zero_copy_only=False)[powner],
            "prediction": pc.list_flatten(resp["predictions"]).to_numpy(
                zero_copy_only=False
            ),
        }
    ).drop_duplicates(["request_id", "source", "instance"])
    del req, resp, values
    frame = left.merge(right, on=["request_id", "source", "instance"], how="inner")
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["time"] >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["time"] < pd.Timestamp(until)]
    return frame[columns].reset_index(drop=True)


def _feedback_batch(data: bytes, uri: str, warnings: list[str]) -> pd.DataFrame:
    """One feedback batch: column-wise when every truth is a number, else line by line (lists of truths)."""
    import io

    import pyarrow as pa
    import pyarrow.json as pj

    schema = pa.schema(
        [("request_id", pa.string()), ("truth", pa.float64()), ("time", pa.string())]
    )
    try:
        table = pj.read_json(
            io.BytesIO(data),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
        frame = table.to_pandas()
        frame.insert(1, "instance", 0)
        return frame
    except pa.ArrowInvalid:
        pass
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            warnings.append(f"{uri} line {n} is not JSON; skipped")
            continue
        truth = ev.get("truth")
        for i, v in enumerate(truth if isinstance(truth, list) else [truth]):
            rows.append((str(ev.get("request_id")), i, v, ev.get("time")))
    frame = pd.DataFrame(rows, columns=["request_id", "instance", "truth", "time"])
    frame["truth"] = pd.to_numeric(frame["truth"], errors="coerce")
    return frame


def read_feedback(
    store: ObjectStore, model: str, since=None, warnings: list[str] | None = None
) -> pd.DataFrame:
    """Ground truth of ``model`` since ``since``: the CONTRACTS frame of
    ``kfrelease.serving.feedback.read_feedback`` (``request_id, instance, truth, time``), read column-wise."""
    warnings = warnings if warnings is not None else []
    parts = [
        _feedback_batch(
            store.get_bytes(FEEDBACK_BUCKET, obj.key),
            store.uri(FEEDBACK_BUCKET, obj.key),
            warnings,
        )
        for day in _days(store, FEEDBACK_BUCKET, model, since, None)
        for obj in store.iter(FEEDBACK_BUCKET, f"{model}/{day}/")
    ]
    columns = ["request_id", "instance", "truth", "time"]
    if not parts:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(parts, ignore_index=True)[columns]
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["time"] >= pd.Timestamp(since)]
    return frame.reset_index(drop=True)


def model_versions(store: ObjectStore, model: str) -> dict[str, dict]:
    """Registry entries by version (empty when the registry is not there or lists nothing)."""
    out: dict[str, dict] = {}
    prefix = f"registry/{model}/versions/"
    try:
        for obj in store.iter("models", prefix):
            if obj.key.endswith("/entry.json"):
                entry = store.get_json("models", obj.key)
                out[entry.get("version") or obj.key[len(prefix) :].split("/")[0]] = (
                    entry
                )
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


def baselines_of(
    entries: dict[str, dict], r2_floor: float | None = None
) -> dict[str, dict]:
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
