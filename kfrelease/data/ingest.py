"""Ingest: read the source objects of a dataset from the ``raw`` bucket (CSV, gzip CSV or Parquet), in batches.

A source is never held whole in memory: a CSV object is streamed from the store through Arrow's CSV reader
(``pyarrow.csv.open_csv``) in blocks of ``BLOCK_BYTES``; a Parquet object is downloaded to a temporary file
and read a row group slice at a time. Each batch is a DataFrame of the source's columns plus the meta
columns below, so that validation can name the file and line of every bad row. ``SourceSet`` fixes the
objects of one run (keys and ETags, read with ``If-Match`` so that every pass sees the same bytes) and can be
read any number of times; ``read_source`` reads one small object given as bytes.
"""

from __future__ import annotations

import codecs
import csv as _csv
import gzip
import io
import logging
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Self

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import csv

from kfrelease.data.frames import FrameWriter, Written
from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError, NotFound
from kfrelease.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: Columns ingest adds so that validation errors can name the file and line of each bad row. ``__ragged``
#: is set (e.g. ``13 fields, expected 12``) on a CSV line whose number of fields differs from the header,
#: with the line's text in ``__text``; such a row has no values.
SOURCE_COL = "__source"
LINE_COL = "__line"
RAGGED_COL = "__ragged"
TEXT_COL = "__text"
META_COLUMNS = (SOURCE_COL, LINE_COL, RAGGED_COL, TEXT_COL)
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: CSV bytes Arrow parses per batch (about 120,000 rows of a 12-column file), and Parquet rows per batch.
BLOCK_BYTES = 8 << 20
PARQUET_BATCH_ROWS = 131_072
_STRING = pd.StringDtype("pyarrow")


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


def _compression(key: str) -> str | None:
    return "gzip" if key.lower().endswith(".gz") else None


def _unreadable(where: str, kind: str, exc: Exception) -> DataValidationError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataValidationError(f"{where}: not a readable {kind} file: {detail}")


def _not_utf8(where: str, line: int, offset: int, data: bytes, at: int) -> DataValidationError:
    """Which byte is not UTF-8, where, and what the file probably is (``data[at]`` is the byte)."""
    byte = data[at]
    if offset == 0 and data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        guess = "the file starts with a UTF-16 byte order mark: it is UTF-16"
    else:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        text = data[max(start, at - 20) : min(end if end >= 0 else len(data), at + 20)].decode("cp1252", "replace")
        char = bytes([byte]).decode("cp1252", "replace")
        guess = f"the file looks Latin-1/Windows-1252 encoded, where it is {char!r} in {text.strip()!r}"
    return DataValidationError(
        f"{where} line {line}: byte 0x{byte:02x} at offset {offset} is not UTF-8 ({guess}); save the file as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`) and upload it again"
    )


class _LineScan(io.RawIOBase):
    """The byte stream Arrow's CSV reader reads, noting on the way the line number of every non-blank line
    (Arrow numbers rows without blank lines) and the first byte that is not UTF-8."""

    def __init__(self, raw, where: str):
        self.raw, self.where = raw, where
        self.pending = b""  # bytes read ahead (the header) and not yet given to the reader
        self.offset = 0  # bytes given to the reader so far
        self.lines_done = 0  # complete lines seen
        self.tail_len, self.tail_first = 0, 0  # the current, unfinished line
        self.nonblank: deque[np.ndarray] = deque()
        self.available = 0  # non-blank line numbers queued
        self.eof = False
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.bad_utf8: DataValidationError | None = None
        self.lines_before_bad = 0

    def readable(self) -> bool:
        return True

    def _pull(self, n: int) -> bytes:
        if self.pending:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        return self.raw.read(n) or b""

    def header(self) -> list[str]:
        """The column names on the first non-blank line, read ahead and kept for the reader."""
        buf = b""
        while True:
            chunk = self.raw.read(1 << 16) or b""
            buf += chunk
            start = 0
            for number, line in enumerate(buf.split(b"\n") if chunk else (buf + b"\n").split(b"\n"), start=1):
                end = start + len(line)
                if end >= len(buf) and chunk:  # an unfinished line: read more
                    break
                if line.strip(b"\r"):
                    self.pending = buf
                    bom = 3 if start == 0 and line.startswith(b"\xef\xbb\xbf") else 0
                    try:
                        text = line[bom:].rstrip(b"\r").decode("utf-8")
                    except UnicodeDecodeError as exc:
                        at = start + bom + exc.start
                        raise _not_utf8(self.where, number, at, buf, at) from None
                    try:
                        return next(_csv.reader([text]))
                    except (StopIteration, _csv.Error) as exc:
                        raise _unreadable(self.where, "CSV", exc) from None
                start = end + 1
            if not chunk:
                raise DataValidationError(f"{self.where}: the file is empty; expected a header line and rows")

    def read(self, n: int = -1) -> bytes:
        data = self._pull(n if n and n > 0 else 1 << 20)
        if not data:
            if not self.eof:
                self.eof = True
                self._line_end(np.zeros(0, dtype=np.int64), b"", final=True)
                self._check_utf8(b"", final=True)
            return b""
        self._check_utf8(data)
        self._scan(data)
        self.offset += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _scan(self, data: bytes) -> None:
        buf = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(buf == 10)
        self._line_end(ends, data)
        if len(ends):
            rest = len(data) - ends[-1] - 1
            self.tail_len, self.tail_first = rest, (data[ends[-1] + 1] if rest else 0)
        else:
            if not self.tail_len and len(data):
                self.tail_first = data[0]
            self.tail_len += len(data)

    def _line_end(self, ends: np.ndarray, data: bytes, final: bool = False) -> None:
        """Queue the numbers of the non-blank lines that end at ``ends`` (and the last line at the end)."""
        if final:
            if self.tail_len and not (self.tail_len == 1 and self.tail_first == 13):
                self._queue(np.array([self.lines_done + 1], dtype=np.int64))
            return
        if not len(ends):
            return
        buf = np.frombuffer(data, dtype=np.uint8)
        starts = np.concatenate(([0], ends[:-1] + 1))
        length = ends - starts
        first = buf[np.minimum(starts, len(buf) - 1)]
        if self.tail_len:  # the first line began in an earlier block
            length[0] += self.tail_len
            first[0] = self.tail_first
        blank = (length == 0) | ((length == 1) & (first == 13))
        numbers = self.lines_done + 1 + np.flatnonzero(~blank)
        self.lines_done += len(ends)
        self._queue(numbers.astype(np.int64))

    def _queue(self, numbers: np.ndarray) -> None:
        if len(numbers):
            self.nonblank.append(numbers)
            self.available += len(numbers)

    def take(self, n: int) -> np.ndarray | None:
        """The line numbers of the next ``n`` rows (header included), or None when the file has fewer
        non-blank lines than rows (no line ends: Arrow's rows are then all the line numbers there are)."""
        if self.available < n:
            return None
        out, need = [], n
        while need:
            head = self.nonblank[0]
            if len(head) <= need:
                out.append(self.nonblank.popleft())
                need -= len(head)
            else:
                out.append(head[:need])
                self.nonblank[0] = head[need:]
                need = 0
        self.available -= n
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _check_utf8(self, data: bytes, final: bool = False) -> None:
        """Note the first byte that is not UTF-8 (called before the chunk's lines are counted)."""
        if self.bad_utf8 is not None:
            return
        try:
            self.decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            held = len(exc.object) - len(data)  # the start of a character the previous chunk ended in
            line = self.lines_done + exc.object[held : max(held, exc.start)].count(b"\n") + 1
            self.bad_utf8 = _not_utf8(self.where, line, self.offset - held + exc.start, exc.object, exc.start)


@dataclass
class _Numbering:
    """Maps the rows of Arrow's batches (and the ragged rows its handler skipped) to numbers and lines."""

    scan: _LineScan
    next_number: int = 2  # Arrow's row numbers: the header is row 1
    ragged: list[tuple[int, int, int, str]] = field(default_factory=list)
    by_number: bool = False  # the file has fewer line ends than rows: lines are row numbers
    started: bool = False

    def on_invalid(self, row) -> str:
        self.ragged.append((row.number, row.actual_columns, row.expected_columns, row.text))
        return "skip"

    def batch(self, rows: int, final: bool) -> tuple[np.ndarray, list[tuple[int, int, int, str]], np.ndarray, int]:
        """The row numbers of ``rows`` good rows, the ragged rows among (or, at the end, after) them, and the
        line numbers of both."""
        pending = sorted(self.ragged)
        candidates = np.arange(self.next_number, self.next_number + rows + len(pending), dtype=np.int64)
        numbers = candidates[~np.isin(candidates, [r[0] for r in pending])][:rows]
        last = int(numbers[-1]) if rows else self.next_number - 1
        if final and pending:
            last = max(last, pending[-1][0])
        here = [r for r in pending if r[0] <= last]
        self.ragged = [r for r in pending if r[0] > last]
        count = last - self.next_number + 1
        if not self.started:  # Arrow's row 1, the header (blank lines are not numbered)
            self.started = True
            self.by_number = self.scan.take(1) is None
        lines = None if self.by_number else self.scan.take(count)
        if lines is None:
            self.by_number = True
            lines = np.arange(self.next_number, last + 1, dtype=np.int64)
        first = self.next_number
        self.next_number = last + 1
        return numbers, here, lines, first


def _csv_batches(raw, where: str) -> Iterator[pd.DataFrame]:
    """A CSV stream's rows, every value as text (conversion to the declared dtypes is validation's job, never a
    guess of the reader's); lines with a wrong number of fields become rows marked ``__ragged``."""
    scan = _LineScan(raw, where)
    names = scan.header()
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        seen.setdefault(name, []).append(i)
    twice = {n: at for n, at in seen.items() if len(at) > 1}
    if twice:
        name, at = next(iter(twice.items()))
        raise DataValidationError(
            f"{where}: the header names column {name!r} {len(at)} times (fields {_and(at)}); give "
            "every column its own name, then upload the file again"
        )
    numbering = _Numbering(scan)
    try:
        reader = csv.open_csv(
            scan,
            read_options=csv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES),
            parse_options=csv.ParseOptions(invalid_row_handler=numbering.on_invalid),
            convert_options=csv.ConvertOptions(
                column_types={c: pa.string() for c in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        batches = iter(reader)
        batch = next(batches, None)
        while batch is not None:  # one batch ahead, so that the ragged lines before the next are all reported
            following = next(batches, None)
            yield _frame(batch, numbering, where, final=following is None)
            batch = following
        if numbering.ragged:  # only ragged lines after the last row (or no good row at all)
            yield _frame(_empty(reader.schema), numbering, where, final=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as exc:
        if scan.bad_utf8 is not None:
            raise scan.bad_utf8 from None
        raise _unreadable(where, "CSV", exc) from None
    if scan.bad_utf8 is not None:
        raise scan.bad_utf8


def _and(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def _empty(schema):
    return pa.RecordBatch.from_pylist([], schema=schema)


def _frame(batch, numbering: _Numbering, where: str, final: bool) -> pd.DataFrame:
    df = pa.Table.from_batches([batch]).to_pandas(types_mapper={pa.string(): _STRING}.get)
    _, ragged, lines, first = numbering.batch(len(df), final)
    offsets = np.ones(len(lines), dtype=bool)
    offsets[[r[0] - first for r in ragged]] = False
    df[LINE_COL] = lines[offsets]
    df[RAGGED_COL] = pd.Series(pd.NA, index=df.index, dtype=_STRING)
    df[TEXT_COL] = pd.Series(pd.NA, index=df.index, dtype=_STRING)
    if ragged:
        extra = pd.DataFrame(
            {
                LINE_COL: lines[[r[0] - first for r in ragged]],
                RAGGED_COL: pd.Series([f"{got} fields, expected {want}" for _, got, want, _ in ragged], dtype=_STRING),
                TEXT_COL: pd.Series([r[3] for r in ragged], dtype=_STRING),
            }
        )
        for c in df.columns:
            if c not in extra.columns:
                extra[c] = pd.Series(pd.NA, index=extra.index, dtype=df[c].dtype)
        df = pd.concat([df, extra[df.columns]], ignore_index=True).sort_values(
            LINE_COL, kind="stable", ignore_index=True
        )
    df[SOURCE_COL] = pd.Series(where, index=df.index, dtype=_STRING)
    df[LINE_COL] = df[LINE_COL].astype("int64")
    return df


def _parquet_batches(path_or_file, where: str) -> Iterator[pd.DataFrame]:
    try:
        pf = pq.ParquetFile(path_or_file)
        schema = pf.schema_arrow
        start = 1
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            df = pa.Table.from_batches([batch], schema=schema).to_pandas()
            df[LINE_COL] = np.arange(start, start + len(df), dtype="int64")
            start += len(df)
            df[RAGGED_COL] = pd.Series(pd.NA, index=df.index, dtype=_STRING)
            df[TEXT_COL] = pd.Series(pd.NA, index=df.index, dtype=_STRING)
            df[SOURCE_COL] = pd.Series(where, index=df.index, dtype=_STRING)
            yield df
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise _unreadable(where, "Parquet", exc) from None


def read_batches(file, where: str) -> Iterator[pd.DataFrame]:
    """One source object's rows in batches; ``file`` is a binary stream (CSV: read once, front to back) or, for
    Parquet, a path or a seekable stream. ``where`` names it in errors (e.g. ``s3://raw/diabetes/b1.csv``).

    CSV values stay text (validation converts them to the declared dtypes, refusing what does not fit);
    Parquet keeps its typed columns. ``__line`` is the row's line in a CSV file (the header is line 1) or its
    row number in Parquet. An object with a header and no rows is refused at its end."""
    fmt = source_format(where)
    if fmt is None:
        raise DataValidationError(f"{where}: unknown file type; sources must end in .csv, .csv.gz or .parquet")
    if fmt == "csv" and _compression(where):
        file = gzip.GzipFile(fileobj=file, mode="rb")
    rows = 0
    try:
        for df in _csv_batches(file, where) if fmt == "csv" else _parquet_batches(file, where):
            rows += len(df)
            yield df
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        if fmt == "csv" and _compression(where):
            raise _unreadable(where, "gzip-compressed CSV", exc) from None
        raise
    if not rows:
        raise DataValidationError(f"{where}: the file has a header but no rows")


def read_source(data: bytes, where: str) -> pd.DataFrame:
    """One small source object given as bytes, whole (see ``read_batches``)."""
    if not data.strip() and source_format(where):
        raise DataValidationError(f"{where}: the file is empty; expected a header line and rows")
    frames = list(read_batches(io.BytesIO(data), where))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def data_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in META_COLUMNS]


def conform(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A batch with every column of the run (``columns``, in order; one a source lacks has no value in it)."""
    for c in columns:
        if c not in df.columns:
            df[c] = pd.Series(pd.NA, index=df.index, dtype=_STRING)
    return df[[*columns, *META_COLUMNS]]


@dataclass
class SourceObject:
    key: str
    etag: str
    size: int
    where: str
    columns: dict[str, object] = field(default_factory=dict)  # name -> the dtype its batches carry
    rows: int | None = None
    local: str | None = None  # a Parquet object's downloaded copy

    def as_source(self) -> Source:
        return Source(self.key, self.etag, self.rows or 0)


class SourceSet:
    """The source objects of one run: listed once, their keys and ETags fixed, read any number of times.

    Use it as a context manager: Parquet objects are downloaded to a temporary folder (random access to
    their footers), which is removed at the end; CSV objects are streamed on every read."""

    def __init__(
        self,
        spec: DatasetSpec,
        store: ObjectStore,
        keys: list[str] | None = None,
        objects: list[SourceObject] | None = None,
    ):
        """The objects under the spec's prefix (or ``keys``), or ``objects`` listed before (e.g. by a Spark driver
        for its tasks)."""
        self.spec, self.store = spec, store
        if objects is None:
            objects = [
                SourceObject(o.key, o.etag.strip('"'), o.size, store.uri("raw", o.key)) for o in self._list(keys)
            ]
        self.objects = [replace(o, local=None) for o in objects]
        self._tmp: str | None = None

    def _list(self, keys: list[str] | None) -> list[ObjectInfo]:
        spec, store = self.spec, self.store
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
        return sorted(objects, key=lambda o: o.key)

    def __enter__(self) -> Self:
        self._tmp = tempfile.mkdtemp(prefix="kfrelease-sources-")
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _open(self, obj: SourceObject):
        """A stream of the object's bytes, as listed (``If-Match`` its ETag: a changed object is refused)."""
        try:
            return self.store.client.get_object(
                self.store.bucket("raw"), obj.key, request_headers={"If-Match": f'"{obj.etag}"'}
            )
        except Exception as exc:
            if getattr(exc, "code", "") == "PreconditionFailed":
                raise DataValidationError(
                    f"{obj.where} changed while it was being read (its ETag is no longer {obj.etag}); publish again"
                ) from None
            raise self.store._fail(exc, "read", "raw", obj.key) from exc

    def _local(self, obj: SourceObject) -> str:
        if obj.local is None:
            if self._tmp is None:
                raise RuntimeError("SourceSet must be used as a context manager to read Parquet sources")
            path = os.path.join(self._tmp, f"{self.objects.index(obj)}.parquet")
            resp = self._open(obj)
            try:
                with open(path, "wb") as out:
                    shutil.copyfileobj(resp, out, 1 << 20)
            finally:
                resp.close()
                resp.release_conn()
            obj.local = path
        return obj.local

    def object_batches(self, obj: SourceObject) -> Iterator[pd.DataFrame]:
        """One object's batches, its own columns only."""
        if source_format(obj.key) == "parquet":
            yield from read_batches(self._local(obj), obj.where)
            return
        resp = self._open(obj)
        try:
            yield from read_batches(resp, obj.where)
        finally:
            resp.close()
            resp.release_conn()

    @property
    def columns(self) -> list[str]:
        """Every data column of the sources, in order of appearance (the union the batches are given)."""
        return list(self.column_dtypes)

    @property
    def column_dtypes(self) -> dict[str, object]:
        """Each column's dtype in the batches: the sources' own when they agree (text for CSV), else text."""
        out: dict[str, object] = {}
        for obj in self.objects:
            if not obj.columns:
                obj.columns = self._header(obj)
            for name, dtype in obj.columns.items():
                out[name] = dtype if out.get(name, dtype) == dtype else _STRING
        return out

    def _header(self, obj: SourceObject) -> dict[str, object]:
        if source_format(obj.key) == "parquet":
            try:
                empty = pq.ParquetFile(self._local(obj)).schema_arrow.empty_table().to_pandas()
            except (ValueError, OSError, pa.ArrowException) as exc:
                raise _unreadable(obj.where, "Parquet", exc) from None
            return dict(empty.dtypes.items())
        resp = self._open(obj)
        try:
            raw = resp
            if _compression(obj.key):
                raw = gzip.GzipFile(fileobj=resp, mode="rb")
            try:
                return dict.fromkeys(_LineScan(raw, obj.where).header(), _STRING)
            except (OSError, EOFError) as exc:
                raise _unreadable(obj.where, "gzip-compressed CSV", exc) from None
        finally:
            resp.close()
            resp.release_conn()

    def batches(self) -> Iterator[pd.DataFrame]:
        """Every object's rows, in key order, each batch with all the run's ``columns``."""
        columns = self.columns
        for obj in self.objects:
            rows = 0
            for df in self.object_batches(obj):
                rows += len(df)
                yield conform(df, columns)
            obj.rows = rows
            log.info("read %s: %d rows", obj.key, rows)

    @property
    def sources(self) -> list[Source]:
        """The objects read, with their ETags and row counts (lineage for the manifest)."""
        return [o.as_source() for o in self.objects]

    def write_rows(self, path: str) -> Written:
        """Every row, as ``batches`` gives them, to one Parquet file (the ingest step's output): a column the
        sources give in different dtypes is text there."""
        template = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in self.column_dtypes.items()})
        for c, t in ((SOURCE_COL, _STRING), (LINE_COL, "int64"), (RAGGED_COL, _STRING), (TEXT_COL, _STRING)):
            template[c] = pd.Series([], dtype=t)
        writer = FrameWriter(path, template, what="the ingested rows")
        try:
            for df in self.batches():
                writer.write(df)
        except BaseException:
            writer.discard()
            raise
        return writer.close()


def local_batches(path: str) -> tuple[list[str], Callable[[], Iterator[pd.DataFrame]]]:
    """A local CSV or Parquet file's data columns, and its batches (read again at every call)."""

    def batches() -> Iterator[pd.DataFrame]:
        with open(path, "rb") as f:
            yield from read_batches(f, path)

    with closing(batches()) as first:
        columns = data_columns(next(first))
    return columns, batches
