"""The one reader: the prediction logs and labels of a window, from the object store into DuckDB.

Only the hour partitions that overlap the window are listed and downloaded (each object once, into a local
cache: objects are immutable, so a cached file is valid for as long as its key exists); only the columns the
query needs are read from them. JSON Lines batches written before the lake (``<model>/<YYYY-MM-DD>/*.jsonl``)
stay readable: each is converted once into the same table, in the cache (``convert_legacy`` converts them
in the store). Objects in the partitions that are not readable are skipped, left in place and reported.

Reading the object store goes through the ``minio`` SDK (``kfrelease.storage``), not DuckDB's ``httpfs``
extension: that extension is downloaded from the internet at run time, which a cluster pod or these
machines may not reach.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kfrelease.config import setting
from kfrelease.errors import NotFound
from kfrelease.lake import schema as S
from kfrelease.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: A response is logged after its request; read this far past the window's end to find it.
RESPONSE_SLACK = dt.timedelta(hours=1)
#: Windows shorter than this are listed day by day; longer ones by one listing of the model.
MAX_LISTED_DAYS = 62


def as_utc(value) -> dt.datetime | None:
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    return S.parse_time(value)


def sql_time(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


@dataclass
class Batches:
    """The objects of one table in a window: Parquet batches and legacy JSON Lines batches."""

    parquet: list[ObjectInfo] = field(default_factory=list)
    legacy: list[ObjectInfo] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [o.key for o in (*self.parquet, *self.legacy)]


def _days(lo: dt.datetime, hi: dt.datetime) -> list[str]:
    d, out = lo.date(), []
    while d <= hi.date():
        out.append(d.isoformat())
        d += dt.timedelta(days=1)
    return out


def _hour_of(key: str) -> tuple[str, int] | None:
    parts = dict(p.split("=", 1) for p in key.split("/")[:-1] if "=" in p)
    try:
        return parts["date"], int(parts["hour"])
    except (KeyError, ValueError):
        return None


def list_batches(store: ObjectStore, bucket: str, model: str, since=None, until=None) -> Batches:
    """Batches of ``model`` whose hour (Parquet) or day (legacy) overlaps ``[since, until)``."""
    lo, hi = as_utc(since), as_utc(until)
    bounded = lo is not None and hi is not None and (hi - lo).days <= MAX_LISTED_DAYS
    prefixes = [f"model={model}/date={d}/" for d in _days(lo, hi)] if bounded else [f"model={model}/"]
    out = Batches()
    for prefix in prefixes:
        try:
            objects = store.list(bucket, prefix)
        except NotFound:
            continue
        for obj in objects:
            hour = _hour_of(obj.key)
            if hour is None or not obj.key.endswith(".parquet"):
                continue
            start = dt.datetime.fromisoformat(hour[0]).replace(hour=hour[1], tzinfo=dt.UTC)
            if (lo is None or start + dt.timedelta(hours=1) > lo) and (hi is None or start < hi):
                out.parquet.append(obj)
    # legacy JSON Lines: <model>/<YYYY-MM-DD>/<batch>.jsonl
    legacy_days = _days(lo, hi) if bounded else None
    try:
        if legacy_days is None:
            found = store.list(bucket, f"{model}/")
        else:
            found = [o for d in legacy_days for o in store.list(bucket, f"{model}/{d}/")]
    except NotFound:
        found = []
    for obj in found:
        day = obj.key.split("/")[1] if obj.key.count("/") >= 2 else ""
        if not obj.key.endswith(".jsonl") or len(day) != 10:
            continue
        if (lo is None or day >= lo.date().isoformat()) and (hi is None or day <= hi.date().isoformat()):
            out.legacy.append(obj)
    return out


def parse_legacy(data: bytes, bucket: str):
    """Each line of a pre-lake JSON Lines batch as ``(line number, record, rows)``: ``record`` is None for a
    line that is not a valid record, ``rows`` is None for a valid line that is not an event."""
    for n, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
            if bucket == S.LABEL_BUCKET:
                rows = S.label_rows(line)
            elif line.get("type") in ("request", "response"):
                rows = S.event_rows(line)
            else:
                rows = None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            yield n, None, None
            continue
        yield n, line, rows


def legacy_table(data: bytes, bucket: str, uri: str, warnings: list[str]) -> pa.Table:
    """A JSON Lines batch of the pre-lake format as a table of the lake schema."""
    rows, bad = [], []
    for n, line, line_rows in parse_legacy(data, bucket):
        if line is None:
            bad.append(n)
        elif line_rows:
            rows.extend(line_rows)
    if bad:
        warnings.append(f"{uri}: {len(bad)} line(s) are not valid records (lines {bad[:5]}); skipped")
    return S.to_table(rows, S.LABEL_SCHEMA if bucket == S.LABEL_BUCKET else S.PREDICTION_SCHEMA)


class LakeCache:
    """Local copies of lake objects, ``<dir>/<bucket>/<key>`` (legacy batches as converted Parquet)."""

    def __init__(self, directory: Path | None = None):
        self.dir = Path(directory or tempfile.mkdtemp(prefix="kfrelease-lake-"))
        self.origin: dict[str, str] = {}  # local path -> s3:// URI of the batch it holds

    @classmethod
    def for_store(cls, store: ObjectStore) -> LakeCache:
        settings = getattr(store, "settings", None)
        base = setting("KFRELEASE_LAKE_CACHE") or (settings.home / "cache" / "lake" if settings is not None else None)
        return cls(Path(base) if base else None)

    def _path(self, store: ObjectStore, bucket: str, obj: ObjectInfo, suffix: str = "") -> Path:
        tag = hashlib.sha1(f"{obj.etag}/{obj.size}".encode()).hexdigest()[:12]
        return self.dir / store.bucket(bucket) / f"{obj.key}.{tag}{suffix}"

    def _publish(self, path: Path, write) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def fetch(self, store: ObjectStore, bucket: str, batches: Batches, warnings: list[str]) -> list[str]:
        """Local Parquet paths of every batch (downloaded or converted once); unreadable ones reported."""

        def one(obj: ObjectInfo, legacy: bool) -> str | None:
            path = self._path(store, bucket, obj, ".parquet" if legacy else "")
            if path.exists():
                return str(path)
            try:
                if legacy:
                    table = legacy_table(
                        store.get_bytes(bucket, obj.key),
                        bucket,
                        store.uri(bucket, obj.key),
                        warnings,
                    )
                    self._publish(path, lambda p: pq.write_table(table, p))
                else:
                    self._publish(path, lambda p: store.get_file(bucket, obj.key, p))
                    pq.read_metadata(path)
            except NotFound:
                return None  # compacted away between the listing and the download: its rows are elsewhere
            except (pa.ArrowInvalid, OSError) as exc:
                path.unlink(missing_ok=True)
                warnings.append(f"{store.uri(bucket, obj.key)} is not a readable batch ({exc}); skipped")
                return None
            return str(path)

        jobs = [(o, False) for o in batches.parquet] + [(o, True) for o in batches.legacy]
        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(lambda j: one(*j), jobs))
        for (obj, _), p in zip(jobs, paths):
            if p:
                self.origin[p] = store.uri(bucket, obj.key)
        return [p for p in paths if p]


def window_files(
    store: ObjectStore,
    model: str,
    since=None,
    until=None,
    cache: LakeCache | None = None,
    warnings: list[str] | None = None,
    labels_until=None,
) -> tuple[list[str], list[str], Batches, Batches]:
    """(prediction files, label files, their batches) of a window: logs of ``[since, until + slack)``,
    labels from ``since`` on (a label arrives after its prediction)."""
    warnings = warnings if warnings is not None else []
    cache = cache if cache is not None else LakeCache.for_store(store)
    hi, lo = as_utc(until), as_utc(since)
    if hi is None and lo is not None:  # bound the listing: nothing is logged in the future
        hi = dt.datetime.now(dt.UTC)
    logs = list_batches(store, S.LOG_BUCKET, model, since, hi + RESPONSE_SLACK if hi else None)
    if labels_until is None and lo is not None:
        labels_until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    labels = list_batches(store, S.LABEL_BUCKET, model, since, labels_until)
    return (
        cache.fetch(store, S.LOG_BUCKET, logs, warnings),
        cache.fetch(store, S.LABEL_BUCKET, labels, warnings),
        logs,
        labels,
    )


def stored_rows(store: ObjectStore, bucket: str, model: str) -> pa.Table:
    """Every row of every batch of ``model`` as stored, duplicates included (what "exactly once in the
    store" is checked against); legacy batches converted."""
    warnings: list[str] = []
    batches = list_batches(store, bucket, model)
    tables = [pq.read_table(io.BytesIO(store.get_bytes(bucket, o.key))) for o in batches.parquet]
    tables += [legacy_table(store.get_bytes(bucket, o.key), bucket, o.key, warnings) for o in batches.legacy]
    schema = S.LABEL_SCHEMA if bucket == S.LABEL_BUCKET else S.PREDICTION_SCHEMA
    tables = [t.replace_schema_metadata(None) for t in tables]
    return pa.concat_tables(tables, promote_options="default") if tables else schema.empty_table()


class _RangeFile:
    """A read-only file over one object, reading byte ranges on demand (what ``pq.read_metadata`` needs:
    the footer at the end, never the whole object)."""

    def __init__(self, store: ObjectStore, bucket: str, obj: ObjectInfo):
        self.store, self.bucket, self.key, self.size, self.pos = store, bucket, obj.key, obj.size, 0
        self.closed = False

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b""
        resp = None
        try:
            resp = self.store.client.get_object(self.store.bucket(self.bucket), self.key, offset=self.pos, length=n)
            data = resp.read()
        except Exception as exc:
            raise self.store._fail(exc, "read", self.bucket, self.key) from exc
        finally:
            if resp is not None:
                resp.close()
                resp.release_conn()
        self.pos += len(data)
        return data

    def close(self) -> None:
        self.closed = True


def count_logged_rows(store: ObjectStore, model: str, since=None, until=None) -> int:
    """Rows of the prediction-log batches of ``model`` whose hour overlaps ``[since, until)``, from each
    Parquet file's footer (a ranged read of its end; legacy JSON Lines batches: their lines): what the
    engine switch (``kfrelease.monitoring.spark_app.choose_engine``) weighs, without reading the rows."""
    batches = list_batches(store, S.LOG_BUCKET, model, since, until)

    def rows(obj: ObjectInfo) -> int:
        return pq.read_metadata(_RangeFile(store, S.LOG_BUCKET, obj)).num_rows

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(rows, batches.parquet))
    return total + sum(store.get_bytes(S.LOG_BUCKET, o.key).count(b"\n") for o in batches.legacy)
