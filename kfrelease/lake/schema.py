"""The prediction-log and ground-truth tables: columns, schema version, Hive layout (docs/CONTRACTS.md).

Both tables are Parquet files, Hive-partitioned by model and the UTC hour of the event, the layout Athena,
Spark and DuckDB all read as one table::

    inference-logs/model=<model>/date=<YYYY-MM-DD>/hour=<HH>/<batch>.parquet   one row per event and instance
    feedback/model=<model>/date=<YYYY-MM-DD>/hour=<HH>/<batch>.parquet         one row per label and instance

A request event gives one row per instance (``inputs``: the feature values in input-schema order, numbers; a
category value is in ``inputs_text`` at its position), a response
event one row per predicted value (``prediction``); the primary, the shadow and the canary answer the same
request id from their own ``source``. Every file carries ``kfrelease.schema_version`` in its Parquet
key-value metadata. ``<batch>`` is derived from what was written (a WAL segment, a compaction's inputs), so
a retried upload writes the same key (and ``If-None-Match`` keeps the first).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
LOG_BUCKET = "inference-logs"
LABEL_BUCKET = "feedback"
NAMESPACE_UUID = uuid.UUID("6f1c1f52-8d7e-4a51-9a47-0c3b2f3f6c11")
METADATA_KEY = b"kfrelease.schema_version"
#: Key-value metadata of a prediction-log batch: its request rows' ``request_stats`` (JSON).
STATS_KEY = b"kfrelease.request_stats"

TIME = pa.timestamp("us", tz="UTC")
PREDICTION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("source", pa.string()),
        ("type", pa.string()),  # request | response
        ("time", TIME),
        ("instance", pa.int32()),
        (
            "inputs",
            pa.list_(pa.float64()),
        ),  # request rows: the instance's feature values
        ("prediction", pa.float64()),  # response rows: the predicted value
        ("model_version", pa.string()),
        ("stage", pa.string()),
        ("endpoint", pa.string()),
        ("component", pa.string()),
        ("inferenceservicename", pa.string()),
        ("namespace", pa.string()),
        (
            "features",
            pa.string(),
        ),  # comma-separated input names when the event named them
        (
            "data",
            pa.string(),
        ),  # the event data as sent, when it was not understood (readers skip it)
        # request rows of a model with category features: the instance's category values as sent, in input-
        # schema order, null where the feature is a number (``inputs`` is null there); null for numbers-only
        # models. Added in schema version 2: readers take files without it as all null (union by name).
        ("inputs_text", pa.list_(pa.string())),
    ]
)
LABEL_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("instance", pa.int32()),
        ("truth", pa.float64()),
        ("time", TIME),
        # who posted the label: a declared label source (``kfrelease.collectors.feedback.LabelSources``: a token's
        # name on the embedded stack, the caller's mesh principal on a cluster). Added after schema version 2:
        # files without it read as null (union by name).
        ("source", pa.string()),
    ]
)


def parse_time(value) -> dt.datetime:
    """An ISO timestamp (``Z`` or offset; naive = UTC) as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        t = value
    else:
        t = dt.datetime.fromisoformat(str(value))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def partition(model: str, t: dt.datetime) -> str:
    """``model=<m>/date=<YYYY-MM-DD>/hour=<HH>`` of an event at ``t``."""
    return f"model={model}/date={t:%Y-%m-%d}/hour={t:%H}"


def batch_key(partition_path: str, origin: str) -> str:
    """The object key of the batch that ``origin`` (a WAL segment name, a compaction's input keys) becomes."""
    return f"{partition_path}/{uuid.uuid5(NAMESPACE_UUID, f'{origin}/{partition_path}')}.parquet"


def _float(v):
    return float(v) if type(v) in (int, float) else None


def event_rows(line: dict) -> list[dict]:
    """One logged event (the sink's line, docs/CONTRACTS.md) -> its rows of ``PREDICTION_SCHEMA``."""
    common = {
        "request_id": str(line["id"]),
        "source": str(line.get("source") or ""),
        "type": line.get("type"),
        "time": parse_time(line["time"]),
        "model_version": line.get("model_version"),
        "stage": line.get("stage"),
        "endpoint": line.get("endpoint"),
        "component": line.get("component"),
        "inferenceservicename": line.get("inferenceservicename"),
        "namespace": line.get("namespace"),
        "features": ",".join(line["features"]) if line.get("features") else None,
        "inputs": None,
        "inputs_text": None,
        "prediction": None,
        "data": None,
    }
    values = line.get("instances") if line.get("type") == "request" else line.get("predictions")
    if not isinstance(values, list) or not values:
        return [
            {
                **common,
                "instance": None,
                "data": orjson.dumps(line.get("data")).decode(),
            }
        ]
    rows = []
    for i, v in enumerate(values):
        row = {**common, "instance": i}
        if line.get("type") == "request":
            values = v if isinstance(v, list) else [v]
            row["inputs"] = [_float(x) for x in values]
            if any(type(x) is str for x in values):
                row["inputs_text"] = [x if type(x) is str else None for x in values]
        else:
            row["prediction"] = _float(v[0] if isinstance(v, list) and len(v) == 1 else v)
        rows.append(row)
    return rows


def label_rows(record: dict) -> list[dict]:
    """One ground-truth record ``{"request_id", "truth" (number or one per instance), "time"}`` -> rows."""
    truth = record.get("truth")
    values = truth if isinstance(truth, list) else [truth]
    t = parse_time(record["time"])
    return [
        {
            "request_id": str(record["request_id"]),
            "instance": i,
            "truth": _float(v),
            "time": t,
            "source": record.get("source"),
        }
        for i, v in enumerate(values)
    ]


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def request_stats(table: pa.Table) -> dict | None:
    """What a reader needs to know of a prediction-log batch's request rows before reading them: their
    number and the least and greatest width of their ``inputs`` (``{"rows": n, "width": [least, greatest]}``;
    a null ``inputs`` has width 0). Recorded in the file's key-value metadata by ``parquet_bytes``: a window
    whose every file shows the model's width needs no read of the inputs to find rows of another width
    (``kfrelease.lake.engine.widths_proven``). ``None`` for a table of other rows."""
    if not {"type", "instance", "inputs"} <= set(table.column_names):
        return None
    req = table.filter(pc.and_(pc.equal(table["type"], "request"), pc.is_valid(table["instance"])))
    if req.num_rows == 0:
        return {"rows": 0, "width": None}
    width = pc.min_max(pc.fill_null(pc.list_value_length(req["inputs"]), 0))
    return {"rows": req.num_rows, "width": [width["min"].as_py(), width["max"].as_py()]}


def request_stats_of(metadata: dict | None) -> dict | None:
    """``request_stats`` as ``parquet_bytes`` recorded them in a file's key-value metadata (None: not recorded,
    e.g. a file written before they were)."""
    raw = (metadata or {}).get(STATS_KEY)
    return json.loads(raw) if raw else None


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as one Parquet file (zstd, with the schema version and, for prediction logs, the
    ``request_stats`` in its metadata)."""
    meta = dict(table.schema.metadata or {})
    meta[METADATA_KEY] = str(SCHEMA_VERSION).encode()
    stats = request_stats(table)
    if stats is not None:
        meta[STATS_KEY] = json.dumps(stats, allow_nan=False).encode()
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    return buf.getvalue()


def group_by_partition(
    items: Iterable[tuple[str, dict]], rows_of, schema: pa.Schema
) -> dict[tuple[str, str], pa.Table]:
    """``(model, record)`` pairs -> {(model, partition path): table} (records split by their hour)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for model, record in items:
        for row in rows_of(record):
            groups[(model, partition(model, row["time"]))].append(row)
    return {k: to_table(v, schema) for k, v in groups.items()}


def schema_version_of(path_or_file) -> int | None:
    meta = pq.read_schema(path_or_file).metadata or {}
    v = meta.get(METADATA_KEY)
    return int(v) if v is not None else None
