"""Rows in local Parquet files, a batch at a time: the hand-over between the data pipeline's steps, and the
content hash that is a curated version's id.

``FrameWriter`` appends DataFrame batches with the same columns and dtypes to one Parquet file and hashes the
rows as they pass; ``read_frames`` reads such a file back a batch at a time, in the dtypes it was written
with (or the final ones validation recorded, ``DTYPES_KEY``). Neither ever holds more than one batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

#: File metadata key (JSON) under which a step records the dtypes its columns take once the whole file is
#: known, e.g. ``{"age": "int64"}`` for a nullable column that turned out to have a value in every row.
DTYPES_KEY = b"kfrelease.dtypes"
READ_BATCH_ROWS = 262_144


def dtypes_of(df: pd.DataFrame) -> list[tuple[str, str]]:
    return [(str(c), str(t)) for c, t in df.dtypes.items()]


def _start_hash(dtypes: list[tuple[str, str]]):
    h = hashlib.sha256()
    h.update(repr(dtypes).encode())
    return h


def _hash_rows(h, df: pd.DataFrame) -> None:
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())


def content_hash(df: pd.DataFrame) -> str:
    """A hash of the rows, column names and dtypes; the same data always gets the same version id. Hashing a
    frame in batches (``FrameWriter``) gives the same digest: each row's hash depends on that row only."""
    h = _start_hash(dtypes_of(df))
    _hash_rows(h, df)
    return h.hexdigest()


@dataclass(frozen=True)
class Written:
    path: str
    rows: int
    digest: str  # content_hash of all the rows written
    dtypes: list[tuple[str, str]]

    def empty_frame(self) -> pd.DataFrame:
        """A frame with no rows and the written columns' dtypes."""
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in self.dtypes})


class FrameWriter:
    """Writes batches to one Parquet file. ``template`` (an empty frame) fixes the columns and dtypes, and every
    batch is cast to it; without one, the first batch fixes them and a later batch that differs is refused."""

    def __init__(self, path: str, template: pd.DataFrame | None = None, what: str = "the rows"):
        self.path, self.what = path, what
        self.template = template
        self.rows = 0
        self._writer = None
        self._hash = None
        self._schema = None
        if template is not None:
            self._open(template)

    def _open(self, template: pd.DataFrame) -> None:
        self.template = template.iloc[:0]
        schema = pa.Schema.from_pandas(self.template, preserve_index=False)
        for i, f in enumerate(schema):  # an object column with no rows yet is text
            if pa.types.is_null(f.type):
                schema = schema.set(i, pa.field(f.name, pa.string()))
        self._schema = schema
        self._writer = pq.ParquetWriter(self.path, self._schema)
        self._hash = _start_hash(dtypes_of(self.template))

    def write(self, df: pd.DataFrame) -> None:
        if self._writer is None:
            self._open(df)
        elif dtypes_of(df) != dtypes_of(self.template):
            if list(df.columns) != list(self.template.columns):
                raise ValueError(
                    f"{self.what}: a batch has columns {list(df.columns)}, not {list(self.template.columns)}"
                )
            try:
                df = df.astype(dict(self.template.dtypes.items()))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"{self.what}: a batch has dtypes {dict(dtypes_of(df))}, not {dict(dtypes_of(self.template))}: {exc}"
                ) from None
        if not len(df):
            return
        _hash_rows(self._hash, df)
        self._writer.write_table(pa.Table.from_pandas(df, schema=self._schema, preserve_index=False))
        self.rows += len(df)

    def close(self, dtypes: dict[str, str] | None = None) -> Written:
        """Finish the file (a file with no batch gets the template's columns, or none); ``dtypes`` are recorded
        as the columns' final dtypes (``read_frames`` applies them)."""
        if self._writer is None:
            self._open(self.template if self.template is not None else pd.DataFrame())
        if dtypes:
            self._writer.add_key_value_metadata({DTYPES_KEY: json.dumps(dtypes).encode()})
        self._writer.close()
        return Written(self.path, self.rows, self._hash.hexdigest(), dtypes_of(self.template))

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()


def final_dtypes(path: str) -> dict[str, str]:
    meta = pq.ParquetFile(path).metadata.metadata or {}
    return json.loads(meta[DTYPES_KEY]) if DTYPES_KEY in meta else {}


def read_frames(
    path: str, batch_rows: int = READ_BATCH_ROWS, dtypes: dict[str, str] | None = None
) -> Iterator[pd.DataFrame]:
    """A Parquet file's rows a batch at a time, in the dtypes ``pandas.read_parquet`` would give them, then in
    ``dtypes`` (by default the final dtypes recorded under ``DTYPES_KEY``)."""
    pf = pq.ParquetFile(path)
    final = final_dtypes(path) if dtypes is None else dtypes
    empty = True
    for batch in pf.iter_batches(batch_size=batch_rows):
        empty = False
        yield _final(pa.Table.from_batches([batch]).to_pandas(), final)
    if empty:
        yield _final(pf.schema_arrow.empty_table().to_pandas(), final)


def _final(df: pd.DataFrame, final: dict[str, str]) -> pd.DataFrame:
    change = {c: t for c, t in final.items() if c in df.columns and str(df[c].dtype) != t}
    return df.astype(change) if change else df


def file_digest(path: str) -> Written:
    """The content hash of a Parquet file's rows (as ``read_frames`` gives them), read a batch at a time."""
    h = None
    rows, dtypes = 0, []
    for df in read_frames(path):
        if h is None:
            dtypes = dtypes_of(df)
            h = _start_hash(dtypes)
        _hash_rows(h, df)
        rows += len(df)
    return Written(path, rows, h.hexdigest(), dtypes)
