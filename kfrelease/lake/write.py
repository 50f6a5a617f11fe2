"""Writing the lake: Parquet batches from a write-ahead segment, compaction, and the JSON Lines conversion.

A WAL segment (JSON lines of the sink or of the feedback service, each naming its ``model``) becomes one
Parquet object per model and hour, at a key derived from the segment's name (``schema.batch_key``): a
retried upload rewrites the same key, and ``If-None-Match`` keeps the copy that is already there, so an
event is stored exactly once however often the upload is retried.

``compact_partition`` merges the small batches of a closed hour into one object (key derived from the
inputs' keys), then deletes the inputs; a reader that meets both copies in between counts each row once
(the join's dedup), and a compaction that dies half way is finished by the next one.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kfrelease.errors import Conflict, NotFound
from kfrelease.lake import schema as S
from kfrelease.lake.read import list_batches, parse_legacy

log = logging.getLogger(__name__)

#: A partition with at least this many batches is compacted once its hour is over.
COMPACT_MIN_BATCHES = 4
#: An hour is closed (no more batches expected) this long after it ends.
CLOSE_AFTER = dt.timedelta(minutes=10)


def _rows_of(bucket: str):
    return S.label_rows if bucket == S.LABEL_BUCKET else S.event_rows


def _schema_of(bucket: str) -> pa.Schema:
    return S.LABEL_SCHEMA if bucket == S.LABEL_BUCKET else S.PREDICTION_SCHEMA


def segment_lines(segment: Path) -> list[dict]:
    out = []
    with open(segment, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                out.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                log.warning("skipping a torn line in %s", segment)
    return out


def segment_objects(segment: Path, bucket: str) -> dict[str, tuple[bytes, int]]:
    """key -> (Parquet bytes, records) of the objects one WAL segment becomes (one per model and hour)."""
    lines = segment_lines(segment)
    tables = S.group_by_partition(((ln["model"], ln) for ln in lines), _rows_of(bucket), _schema_of(bucket))
    counts: dict[tuple[str, str], int] = {}
    for ln in lines:
        rows = _rows_of(bucket)(ln)
        p = (ln["model"], S.partition(ln["model"], rows[0]["time"]))
        counts[p] = counts.get(p, 0) + 1
    return {
        S.batch_key(path, segment.name): (S.parquet_bytes(table), counts[(model, path)])
        for (model, path), table in tables.items()
    }


def put_batch(store, bucket: str, key: str, data: bytes) -> bool:
    """Create ``key`` once; False when it was already there (a retried upload: same key, same rows)."""
    try:
        store.put_bytes(
            bucket,
            key,
            data,
            content_type="application/vnd.apache.parquet",
            if_none_match=True,
        )
        return True
    except Conflict:
        return False


def write_records(store, bucket: str, model: str, records: list[dict], origin: str) -> list[str]:
    """Records (log lines or label records) of ``model`` as Parquet batches; returns the keys."""
    tables = S.group_by_partition(((model, r) for r in records), _rows_of(bucket), _schema_of(bucket))
    keys = []
    for (_, path), table in tables.items():
        key = S.batch_key(path, origin)
        put_batch(store, bucket, key, S.parquet_bytes(table))
        keys.append(key)
    return keys


def compact_partition(store, bucket: str, partition_path: str, min_batches: int = COMPACT_MIN_BATCHES) -> str | None:
    """Merge the batches of one partition into one object; returns its key (None: nothing to do)."""
    objects = [o for o in store.list(bucket, partition_path + "/") if o.key.endswith(".parquet")]
    if len(objects) < max(2, min_batches):
        return None
    keys = sorted(o.key for o in objects)
    tables = []
    for key in keys:
        try:
            tables.append(pq.read_table(io.BytesIO(store.get_bytes(bucket, key))))
        except NotFound:
            return None  # another compaction got there first
    merged = pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")
    merged = merged.sort_by([("time", "ascending")])
    target = S.batch_key(partition_path, "compacted:" + ",".join(keys))
    put_batch(store, bucket, target, S.parquet_bytes(merged))
    for key in keys:
        try:
            store.delete(bucket, key)
        except NotFound:
            pass
    log.info(
        "compacted %d batches of %s into %s",
        len(keys),
        store.uri(bucket, partition_path),
        target,
    )
    return target


def closed_partitions(
    store,
    bucket: str,
    now: dt.datetime | None = None,
    min_batches: int = COMPACT_MIN_BATCHES,
):
    """Partition paths whose hour is over and that hold at least ``min_batches`` batches."""
    now = now or dt.datetime.now(dt.UTC)
    counts: dict[str, int] = {}
    for obj in store.iter(bucket, "model="):
        if obj.key.endswith(".parquet"):
            path = obj.key.rsplit("/", 1)[0]
            counts[path] = counts.get(path, 0) + 1
    out = []
    for path, n in sorted(counts.items()):
        parts = dict(p.split("=", 1) for p in path.split("/"))
        try:
            start = dt.datetime.fromisoformat(parts["date"]).replace(hour=int(parts["hour"]), tzinfo=dt.UTC)
        except (KeyError, ValueError):
            continue
        if n >= min_batches and start + dt.timedelta(hours=1) + CLOSE_AFTER <= now:
            out.append(path)
    return out


def convert_legacy(store, bucket: str, model: str) -> list[str]:
    """Convert ``model``'s JSON Lines batches (``<model>/<day>/*.jsonl``) into lake batches, once: each
    becomes Parquet at a key derived from its own, then is deleted. Returns the keys written."""
    written = []
    for obj in list_batches(store, bucket, model).legacy:
        records, bad = [], 0
        for _, line, rows in parse_legacy(store.get_bytes(bucket, obj.key), bucket):
            if line is None:
                bad += 1
            elif rows is not None:
                records.append(line)
        written += write_records(store, bucket, model, records, origin=f"legacy:{obj.key}")
        if bad:  # nothing is lost: the original stays beside its converted lines (readers skip its bad lines)
            log.warning(
                "%s has %d unreadable line(s); kept in place",
                store.uri(bucket, obj.key),
                bad,
            )
            continue
        store.delete(bucket, obj.key)
    return written
