"""Ingest: read the source objects of a dataset from the ``raw`` bucket (CSV or Parquet)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pandas as pd

from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError, NotFound
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

#: Columns ingest adds so that validation errors can name the file and line of each bad row.
SOURCE_COL = "__source"
LINE_COL = "__line"
META_COLUMNS = (SOURCE_COL, LINE_COL)
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Source:
    key: str
    etag: str
    rows: int

    def as_dict(self) -> dict:
        return {"key": self.key, "etag": self.etag, "rows": self.rows}


def source_format(key: str) -> str | None:
    for suffix, fmt in FORMATS.items():
        if key.lower().endswith(suffix):
            return fmt
    return None


def read_source(data: bytes, where: str) -> pd.DataFrame:
    """Parse one source object; ``where`` names it in errors (e.g. ``s3://raw/diabetes/b1.csv``).

    The ``__line`` column is the row's line in a CSV file (header is line 1) or its row number in Parquet.
    """
    fmt = source_format(where)
    if fmt is None:
        raise DataValidationError(f"{where}: unknown file type; sources must end in .csv or .parquet")
    if not data.strip():
        raise DataValidationError(f"{where}: the file is empty; expected a header line and rows")
    try:
        if fmt == "csv":
            df = pd.read_csv(io.BytesIO(data))
            line_offset = 2
        else:
            df = pd.read_parquet(io.BytesIO(data))
            line_offset = 1
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OSError) as exc:
        kind = "CSV" if fmt == "csv" else "Parquet"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{where}: not a readable {kind} file: {detail}") from None
    if df.empty:
        raise DataValidationError(f"{where}: the file has a header but no rows")
    df[SOURCE_COL] = where
    df[LINE_COL] = range(line_offset, line_offset + len(df))
    return df


def ingest(spec: DatasetSpec, store: ObjectStore, keys: list[str] | None = None) -> tuple[pd.DataFrame, list[Source]]:
    """Read every source object of the dataset (or just ``keys``) and union them.

    Returns the rows (with ``__source``/``__line`` columns) and the sources with their ETags for lineage.
    """
    if keys is None:
        objects = [o for o in store.list("raw", spec.source_prefix) if source_format(o.key)]
        if not objects:
            raise NotFound(
                f"no CSV or Parquet source under {store.uri('raw', spec.source_prefix)}; upload one with "
                f"`kfrelease data upload FILE --dataset {spec.name}`"
            )
    else:
        objects = []
        for key in keys:
            info = store.stat("raw", key)
            if info is None:
                raise NotFound(
                    f"source {store.uri('raw', key)} does not exist; list the sources with "
                    f"`kfrelease data sources --dataset {spec.name}`"
                )
            objects.append(info)
    frames, sources = [], []
    for obj in sorted(objects, key=lambda o: o.key):
        data = store.get_bytes("raw", obj.key)
        df = read_source(data, store.uri("raw", obj.key))
        frames.append(df)
        sources.append(Source(obj.key, obj.etag.strip('"'), len(df)))
        log.info("ingested %s: %d rows", obj.key, len(df))
    return pd.concat(frames, ignore_index=True, sort=False), sources
