"""Ingest: read the source objects of a dataset from the ``raw`` bucket (CSV or Parquet)."""

from __future__ import annotations

import csv as _csv
import io
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError, NotFound
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

#: Columns ingest adds so that validation errors can name the file and line of each bad row. ``__ragged``
#: is set (e.g. ``13 fields, expected 12``) on a CSV line whose number of fields differs from the header,
#: with the line's text in ``__text``; such a row has no values.
SOURCE_COL = "__source"
LINE_COL = "__line"
RAGGED_COL = "__ragged"
TEXT_COL = "__text"
META_COLUMNS = (SOURCE_COL, LINE_COL, RAGGED_COL, TEXT_COL)
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


def _unreadable(where: str, kind: str, exc: Exception) -> DataValidationError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataValidationError(f"{where}: not a readable {kind} file: {detail}")


def _physical_lines(data: bytes) -> np.ndarray:
    """The 1-based line number of each non-blank line (pyarrow numbers rows without blank lines)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(buf) or buf[-1] != 10:
        ends = np.append(ends, len(buf))
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts
    carriage = (length == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13)
    return np.flatnonzero((length > 0) & ~carriage) + 1


def _read_csv(data: bytes, where: str) -> pd.DataFrame:
    """Every value as text (conversion to the declared dtypes is validation's job, never pandas' guess);
    lines with a wrong number of fields become rows marked ``__ragged``."""
    import pyarrow as pa
    from pyarrow import csv

    try:
        header = next(_csv.reader([data.split(b"\n", 1)[0].decode("utf-8-sig").rstrip("\r")]))
    except (UnicodeDecodeError, StopIteration, _csv.Error) as exc:
        raise _unreadable(where, "CSV", exc) from None
    ragged: list[tuple[int, int, int, str]] = []

    def on_invalid(row) -> str:
        ragged.append((row.number, row.actual_columns, row.expected_columns, row.text))
        return "skip"

    try:
        table = csv.read_csv(
            io.BytesIO(data),
            read_options=csv.ReadOptions(use_threads=False),
            parse_options=csv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=csv.ConvertOptions(
                column_types={c: pa.string() for c in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        raise _unreadable(where, "CSV", exc) from None
    df = table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)
    lines = _physical_lines(data)
    bad_rows = {number for number, *_ in ragged}
    good_numbers = [n for n in range(2, len(df) + len(ragged) + 2) if n not in bad_rows]
    if len(lines) >= len(df) + len(ragged) + 1:  # the row -> line map holds (no value spans lines)
        df[LINE_COL] = lines[np.asarray(good_numbers, dtype="int64") - 1]
        ragged = [(int(lines[n - 1]), got, want, text) for n, got, want, text in ragged]
    else:
        df[LINE_COL] = np.asarray(good_numbers, dtype="int64")
    if ragged:
        extra = pd.DataFrame(
            {
                LINE_COL: [r[0] for r in ragged],
                RAGGED_COL: [f"{got} fields, expected {want}" for _, got, want, _ in ragged],
                TEXT_COL: [r[3] for r in ragged],
            }
        )
        df = pd.concat([df, extra], ignore_index=True).sort_values(LINE_COL, kind="stable", ignore_index=True)
    return df


def read_source(data: bytes, where: str) -> pd.DataFrame:
    """Parse one source object; ``where`` names it in errors (e.g. ``s3://raw/diabetes/b1.csv``).

    CSV values stay text (validation converts them to the declared dtypes, refusing what does not fit);
    Parquet keeps its typed columns. The ``__line`` column is the row's line in a CSV file (header is
    line 1) or its row number in Parquet.
    """
    fmt = source_format(where)
    if fmt is None:
        raise DataValidationError(f"{where}: unknown file type; sources must end in .csv or .parquet")
    if not data.strip():
        raise DataValidationError(f"{where}: the file is empty; expected a header line and rows")
    if fmt == "csv":
        df = _read_csv(data, where)
    else:
        try:
            df = pd.read_parquet(io.BytesIO(data))
        except (ValueError, OSError) as exc:
            raise _unreadable(where, "Parquet", exc) from None
        df[LINE_COL] = np.arange(1, len(df) + 1, dtype="int64")
    if df.empty:
        raise DataValidationError(f"{where}: the file has a header but no rows")
    df[SOURCE_COL] = where
    for col in (RAGGED_COL, TEXT_COL):
        if col not in df.columns:
            df[col] = pd.Series(pd.NA, index=df.index, dtype=pd.StringDtype("pyarrow"))
        else:
            df[col] = df[col].astype(pd.StringDtype("pyarrow"))
    df[LINE_COL] = df[LINE_COL].astype("int64")
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
