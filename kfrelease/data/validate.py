"""Validate ingested rows against the dataset spec, reporting every problem at once.

Each value is converted to its column's declared dtype by ``kfrelease.data.dtypes`` (nothing is coerced
silently), then the spec's rules are checked row by row: missing values, the value rules (``VALUE_RULES``:
ranges, a category column's known values), uniqueness. A problem names its column, its rule, how many rows it
affects and the first of them by file and line (sorted), with the value as written in the source. Ragged CSV
lines are reported as such.

Rows come in batches (``kfrelease.data.ingest``) and memory does not grow with the data: a ``Validator``
checks one batch at a time and keeps, for each problem, its row count and its first rows only. A unique
column is checked across batches by ``Duplicates``: a first pass gives its values to DuckDB (which spills
to disk beyond its memory limit) and finds those that occur more than once; the second pass refuses their
rows. ``validate_batches`` runs both passes over re-readable batches; ``validate`` does it for one DataFrame.

Problems of a row can be quarantined (``on_invalid: quarantine`` in the spec): the valid rows go on,
the invalid ones are kept with their reasons and source lines. Problems of the whole dataset (a missing
or undeclared column, too few rows) always reject it. The row masks here are our own (pandera's
``drop_invalid_rows`` is unreliable upstream, pandera#1830).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kfrelease.data.dtypes import RULES, convert
from kfrelease.data.frames import FrameWriter, Written
from kfrelease.data.ingest import LINE_COL, META_COLUMNS, RAGGED_COL, SOURCE_COL, TEXT_COL
from kfrelease.data.spec import ColumnSpec, DatasetSpec
from kfrelease.errors import DataValidationError

log = logging.getLogger(__name__)

MAX_ROWS_NAMED = 5
RAGGED_RULE = "wrong number of fields (ragged line)"
#: The unique-column check's budget once the pass is over (``Duplicates.finish``): DuckDB's memory limit and
#: threads for sorting the values (beyond the limit the sort spills to a temporary folder). During the pass the
#: check holds ``Duplicates.IN_MEMORY_VALUES`` values, whatever the size of the data.
DUPLICATES_MEMORY = "256MB"
DUPLICATES_THREADS = 2
#: The dtype a column of each declared dtype has while some of its rows may hold no value.
NULLABLE = {"int64": "Int64", "bool": "boolean"}
_STRING = pd.StringDtype("pyarrow")
_PANDAS = {
    "int64": "int64",
    "float64": "float64",
    "bool": "bool",
    "datetime64[ns]": "datetime64[ns]",
    "string": _STRING,
    "category": _STRING,  # the values themselves, no codes
}
#: The rule a category column's value outside its ``categories`` breaks (``ColumnSpec.known`` follows).
UNKNOWN_CATEGORY = "not a known category"
NUMBERS = ("int64", "float64")


@dataclass(frozen=True)
class ValueRule:
    """A rule on a column's values, turned on by the ``ColumnSpec`` key ``key`` (null: off) for the
    dtypes ``dtypes``. ``breaks(values, setting)`` gets the present, well-typed values (in the declared dtype) and
    the key's setting, and says which values break the rule (one bool each); ``says(column)`` is the rule as a
    problem names it."""

    key: str
    dtypes: tuple[str, ...]
    breaks: Callable[[pd.Series, Any], np.ndarray]
    says: Callable[[ColumnSpec], str]


#: The value rules of the dataset spec, in the order a column's problems are reported (then uniqueness, which
#: ``Duplicates`` checks across batches). The embedded and the Spark engine both check them (``Validator``).
VALUE_RULES: tuple[ValueRule, ...] = (
    ValueRule("min", NUMBERS, lambda values, least: values.to_numpy() < least, lambda c: f"below the minimum {c.min}"),
    ValueRule("max", NUMBERS, lambda values, most: values.to_numpy() > most, lambda c: f"above the maximum {c.max}"),
    ValueRule(
        "categories",
        ("category",),
        lambda values, known: ~values.isin(known).to_numpy(dtype=bool),
        lambda c: f"{UNKNOWN_CATEGORY} (known: {c.known})",
    ),
)


@dataclass(frozen=True, order=True)
class Named:
    """One of a problem's first rows: where it is and what it holds (a value, or a ragged line's detail)."""

    key: tuple  # (source, line) or (row,): file order
    where: str
    line: int | None
    value: object = field(compare=False)


@dataclass
class Problem:
    column: str | None
    rule: str
    count: int = 0  # rows affected (0: a problem of the dataset)
    named: list[Named] = field(default_factory=list)  # the first rows, in file order
    fatal: bool = False  # a problem of the dataset, not of rows: nothing can be quarantined

    def label(self) -> str:
        return (f"column {self.column!r}: " if self.column else "") + self.rule

    def add(self, named: list[Named], count: int) -> None:
        self.count += count
        self.named = sorted(self.named + named)[:MAX_ROWS_NAMED]


@dataclass
class Outcome:
    """What validation found over all batches."""

    problems: list[Problem]
    total_rows: int
    valid_rows: int
    invalid_rows: int
    dtypes: dict[str, str]  # each valid column's final dtype (a nullable column with a value in every row: plain)

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)


@dataclass
class Checked:
    """The outcome of ``validate`` on one DataFrame: typed valid rows (meta columns kept), the quarantine frame,
    the problems."""

    valid: pd.DataFrame
    invalid: pd.DataFrame
    problems: list[Problem]
    total_rows: int

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)


def _meta(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col] if col in df.columns else pd.Series(pd.NA, index=df.index, dtype="object")


def _value(df: pd.DataFrame, column: str | None, i: int):
    if column is None or column not in df.columns:
        return None
    value = df.at[i, column]
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def repeated_values_sql(table: str) -> str:
    """The values of ``table``'s column ``v`` that occur more than once, each once, found by sorting: DuckDB's
    sort spills to its temporary directory within the memory limit, where a ``GROUP BY v HAVING count(*) > 1``
    over a unique column holds a hash-table entry per distinct value and stops with an out-of-memory error instead
    (DuckDB 2.0.1: 470M values at ``DUPLICATES_MEMORY`` in the 100x publish benchmark; 60M at 64 MB in
    tests/test_data_streaming.py). Missing values never reach ``Duplicates`` (the rules check presence first)."""
    return f"SELECT DISTINCT v FROM (SELECT v, lag(v) OVER (ORDER BY v) AS previous FROM {table}) WHERE v = previous"


class Duplicates:
    """The values of the spec's unique columns that occur more than once in the whole data.

    While the batches are checked it collects their values (``add``); ``finish`` finds the repeated ones; from
    then on ``mask`` says which rows of a batch hold one. Up to ``IN_MEMORY_VALUES`` values are kept in memory
    (a small dataset never starts DuckDB); beyond, they are appended to a Parquet file per column in a temporary
    folder, ``IN_MEMORY_VALUES`` at a time, so that the pass holds the same memory at any size. ``finish`` then
    sorts each file in DuckDB within ``DUPLICATES_MEMORY`` and ``DUPLICATES_THREADS`` (spilling to that folder),
    once the pass's batches are gone. ``close`` removes the folder.

    Before, the values went into a DuckDB table during the pass, whose memory grew with the values read until
    its limit and beyond it (DuckDB 2.0.1: 160 MB over the process at 47M values, 330 MB at 470M, besides each
    batch's own memory): the publish benchmark's peak grew from 695 MiB at 1x to 1,085 MiB at 100x."""

    IN_MEMORY_VALUES = 1_000_000

    def __init__(self, spec: DatasetSpec):
        self.columns = [c.name for c in spec.columns.values() if c.unique]
        self.pending: dict[str, list[pd.Series]] = {c: [] for c in self.columns}
        self.held = 0
        self.con = None
        self._dir: str | None = None
        self._files: dict[str, object] = {}  # column -> the ParquetWriter of its values
        self.repeated: dict[str, pd.Series | str] = {}  # the repeated values, or the DuckDB table holding them
        self.finished = False

    @classmethod
    def known(cls, spec: DatasetSpec, repeated: dict[str, pd.Series]) -> Duplicates:
        """Duplicates found elsewhere (e.g. by Spark): ``repeated`` maps a column to its repeated values."""
        out = cls(spec)
        out.repeated, out.finished = dict(repeated), True
        return out

    @property
    def found(self) -> bool:
        return any(self.count(c) for c in self.columns)

    def count(self, column: str) -> int:
        rep = self.repeated.get(column)
        if rep is None:
            return 0
        return len(rep) if isinstance(rep, pd.Series) else self._sql(f"SELECT count(*) FROM {rep}")[0][0]

    def _sql(self, statement: str) -> list:
        return self.con.execute(statement).fetchall()  # fetched: DuckDB runs nothing else while a result is open

    def add(self, column: str, values: pd.Series) -> None:
        self.pending[column].append(values.reset_index(drop=True))
        self.held += len(values)
        if self.held > self.IN_MEMORY_VALUES:
            self._spill()

    def _path(self, column: str) -> str:
        return os.path.join(self._dir, f"values-{self.columns.index(column)}.parquet")

    def _spill(self) -> None:
        """The values held so far appended to their columns' files (one row group each)."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="kfrelease-unique-")
        for column in self.columns:
            parts = self.pending[column]
            if not parts:
                continue
            tables = [pa.table({"v": pa.array(part)}) for part in parts]
            if column not in self._files:
                self._files[column] = pq.ParquetWriter(self._path(column), tables[0].schema)
            writer = self._files[column]
            self.pending[column] = []
            writer.write_table(pa.concat_tables([t.cast(writer.schema) for t in tables]))
        self.held = 0

    def _connect(self) -> None:
        import duckdb  # heavy: duckdb

        self.con = duckdb.connect(
            os.path.join(self._dir, "values.duckdb"),
            config={
                "memory_limit": DUPLICATES_MEMORY,
                "threads": DUPLICATES_THREADS,
                "preserve_insertion_order": False,
                "temp_directory": self._dir,
            },
        )
        self._sql("SET enable_progress_bar = false")

    def finish(self) -> None:
        if self._dir is None:
            for column, parts in self.pending.items():
                values = pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)
                self.repeated[column] = values[values.duplicated(keep=False)].drop_duplicates()
        else:
            self._spill()
            self._connect()
            for j, column in enumerate(self.columns):
                writer = self._files.pop(column, None)
                if writer is None:
                    continue
                writer.close()
                path = self._path(column)
                source = f"read_parquet('{path}')"
                self._sql(f"CREATE TABLE d{j} AS {repeated_values_sql(source)}")
                os.remove(path)
                self.repeated[column] = f"d{j}"
                if self.count(column) <= self.IN_MEMORY_VALUES:  # few: looked up in memory
                    self.repeated[column] = self.con.execute(f"SELECT v FROM d{j}").df()["v"]
        self.pending = {c: [] for c in self.columns}
        self.finished = True

    def mask(self, column: str, values: pd.Series) -> np.ndarray:
        """Which of ``values`` (present, converted) occur more than once in the whole data."""
        rep = self.repeated.get(column)
        if rep is None or not self.count(column):
            return np.zeros(len(values), dtype=bool)
        if isinstance(rep, pd.Series):
            return values.isin(rep).to_numpy(dtype=bool)
        out = np.zeros(len(values), dtype=bool)
        self.con.register("batch_values", pa.table({"i": np.arange(len(values)), "v": pa.array(values)}))
        hits = self.con.execute(f"SELECT i FROM batch_values WHERE v IN (SELECT v FROM {rep})").fetchnumpy()["i"]
        self.con.unregister("batch_values")
        out[np.asarray(hits, dtype=np.int64)] = True
        return out

    def close(self) -> None:
        for writer in self._files.values():
            writer.close()
        self._files = {}
        if self.con is not None:
            self.con.close()
            self.con = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class Validator:
    """Checks batches of rows with the data columns ``columns`` (every batch has them, in order) against the
    spec, keeping every problem's count and first rows. ``duplicates`` collects the unique columns' values
    until it is finished, then says which of them repeat; without it uniqueness is checked within each batch."""

    def __init__(
        self,
        spec: DatasetSpec,
        columns: list[str],
        duplicates: Duplicates | None = None,
        quarantine: bool | None = None,
    ):
        self.spec, self.columns, self.duplicates = spec, list(columns), duplicates
        self.quarantine = spec.on_invalid == "quarantine" if quarantine is None else quarantine
        self.problems: dict[tuple, Problem] = {}
        self.total = self.valid = self.invalid = 0
        self.has_na: set[str] = set()
        for i, col in enumerate(self.columns):
            if col not in spec.column_names:
                self._problem((1, i), col, "column is not declared in the spec", fatal=True)
        for i, c in enumerate(spec.columns.values()):
            if c.name not in self.columns and not c.nullable:
                self._problem((2, i, 0), c.name, "column is missing", fatal=True)
        declared = [c for c in self.columns if c in spec.column_names]
        absent = [c.name for c in spec.columns.values() if c.name not in self.columns and c.nullable]
        self.order = declared + absent  # the valid rows' columns: the sources' order, then optional absent ones

    def _problem(self, key: tuple, column: str | None, rule: str, fatal: bool = False) -> Problem:
        if key not in self.problems:
            self.problems[key] = Problem(column, rule, fatal=fatal)
        return self.problems[key]

    def template(self) -> pd.DataFrame:
        """An empty frame with the valid rows' columns and dtypes (nullable ones where a row may hold no value)."""
        dtypes = {c: self._dtype(c, nullable=True) for c in self.order}
        frame = pd.DataFrame({c: pd.Series([], dtype=t) for c, t in dtypes.items()})
        frame[SOURCE_COL] = pd.Series([], dtype=_STRING)
        frame[LINE_COL] = pd.Series([], dtype="int64")
        return frame

    def quarantine_template(self) -> pd.DataFrame:
        """An empty quarantine frame: source, line, reason, every column's value as written, a ragged line's text."""
        text = [("source", object), ("line", "int64"), ("reason", object), *((c, object) for c in self.columns)]
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in [*text, ("text", object)]})

    def _dtype(self, column: str, nullable: bool) -> object:
        declared = self.spec.column(column).dtype
        if declared in NULLABLE and (nullable or column in self.has_na):
            return NULLABLE[declared]
        return _PANDAS[declared]

    def check(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """One batch: its valid rows in the declared dtypes (meta columns kept) and its quarantine rows."""
        df = df.reset_index(drop=True)
        n, offset = len(df), self.total
        self.total += n
        ragged = _meta(df, RAGGED_COL).notna().to_numpy(dtype=bool)
        found: list[tuple[tuple, str | None, str, np.ndarray]] = []
        if ragged.any():
            found.append(((0,), None, RAGGED_RULE, ragged))
        typed: dict[str, pd.Series] = {}
        bad = ragged.copy()
        for i, c in enumerate(self.spec.columns.values()):
            if c.name not in df.columns:
                if c.nullable:  # an optional column older sources do not have: no value in any row
                    typed[c.name] = convert(pd.Series(pd.NA, index=df.index, dtype="string"), c.dtype).values
                continue
            conv = convert(df[c.name], c.dtype)
            unusable = ragged.copy()
            for rule, mask in conv.problems:
                mask = mask & ~ragged
                unusable |= mask
                if mask.any():
                    found.append(((2, i, 1, RULES[c.dtype].index(rule)), c.name, rule, mask))
            checkable = ~unusable & ~conv.missing
            if not c.nullable:
                missing = conv.missing & ~ragged
                if missing.any():
                    found.append(((2, i, 2), c.name, "missing value (NaN/empty) where none is allowed", missing))
            values = conv.values
            for k, rule in enumerate(VALUE_RULES):
                setting = getattr(c, rule.key)
                if setting is None or c.dtype not in rule.dtypes or not checkable.any():
                    continue
                broken = np.zeros(n, dtype=bool)
                broken[checkable] = rule.breaks(values[checkable], setting)
                if broken.any():
                    found.append(((2, i, 3 + k), c.name, rule.says(c), broken))
            if c.unique and checkable.any():
                dup = np.zeros(n, dtype=bool)
                if self.duplicates is None:
                    dup[checkable] = values[checkable].duplicated(keep=False).to_numpy(dtype=bool)
                elif self.duplicates.finished:
                    dup[checkable] = self.duplicates.mask(c.name, values[checkable])
                else:
                    self.duplicates.add(c.name, values[checkable])
                if dup.any():
                    found.append(((2, i, 3 + len(VALUE_RULES)), c.name, "duplicate value in a unique column", dup))
            typed[c.name] = values
        found.sort(key=lambda f: f[0])
        for key, column, rule, mask in found:
            bad |= mask
            self._problem(key, column, rule).add(self._named(df, column, rule, mask, offset), int(mask.sum()))
        valid = self._valid_frame(df, typed, ~bad)
        self.valid += len(valid)
        self.invalid += int(bad.sum())
        for c in self.order:
            if self.spec.column(c).dtype in NULLABLE and c not in self.has_na and valid[c].isna().any():
                self.has_na.add(c)
        return valid, self._quarantine_frame(df, found, bad)

    def _named(self, df: pd.DataFrame, column: str | None, rule: str, mask: np.ndarray, offset: int) -> list[Named]:
        rows = np.flatnonzero(mask)
        if SOURCE_COL in df.columns:
            sources = df[SOURCE_COL].iloc[rows].astype(str).to_numpy()
            lines = df[LINE_COL].iloc[rows].to_numpy()
            rows = rows[np.lexsort((lines, sources))]
        out = []
        for i in rows[:MAX_ROWS_NAMED]:
            i = int(i)
            detail = str(df.at[i, RAGGED_COL]) if rule == RAGGED_RULE else _value(df, column, i)
            if SOURCE_COL in df.columns:
                source, line = str(df.at[i, SOURCE_COL]), int(df.at[i, LINE_COL])
                out.append(Named((source, line), f"{source} line {line}", line, detail))
            else:
                line = int(df.at[i, LINE_COL]) if LINE_COL in df.columns else None
                out.append(Named((offset + i,), f"row {offset + i + 1}", line, detail))
        return out

    def _valid_frame(self, df: pd.DataFrame, typed: dict[str, pd.Series], mask: np.ndarray) -> pd.DataFrame:
        columns = {name: typed[name] for name in self.order}
        columns[SOURCE_COL], columns[LINE_COL] = _meta(df, SOURCE_COL), _meta(df, LINE_COL)
        out = pd.DataFrame(columns, index=df.index)
        return out if mask.all() else out[mask].reset_index(drop=True)

    def _quarantine_frame(self, df: pd.DataFrame, found: list, bad: np.ndarray) -> pd.DataFrame:
        """One row per invalid input row: where it came from, why (every reason), its values as written."""
        rows = np.flatnonzero(bad)
        if not len(rows):
            return self.quarantine_template()
        reasons: dict[int, list[str]] = {}
        for _, column, rule, mask in found:
            for i in np.flatnonzero(mask):
                i = int(i)
                if rule == RAGGED_RULE:
                    text = f"{rule}: {df.at[i, RAGGED_COL]}"
                else:
                    text = f"column {column!r}: {rule} (value {_value(df, column, i)!r})"
                reasons.setdefault(i, []).append(text)
        out = pd.DataFrame(
            {
                "source": _meta(df, SOURCE_COL).iloc[rows].astype("string").to_numpy(),
                "line": _meta(df, LINE_COL).iloc[rows].to_numpy(dtype="int64")
                if len(rows)
                else np.zeros(0, dtype="int64"),
                "reason": ["; ".join(reasons.get(int(i), [])) for i in rows],
            }
        )
        for col in self.columns:
            out[col] = df[col].iloc[rows].astype("string").to_numpy()
        out["text"] = _meta(df, TEXT_COL).iloc[rows].astype("string").to_numpy()
        return out

    def state(self) -> dict:
        """What this validator found, to be merged with other validators' (``merged``): one per Spark task."""
        return {
            "problems": self.problems,
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "has_na": sorted(self.has_na),
        }

    @classmethod
    def merged(
        cls, spec: DatasetSpec, columns: list[str], states: list[dict], quarantine: bool | None = None
    ) -> Validator:
        """One validator holding what several found on parts of the same data (each part's problems added up,
        their first rows kept in file order): its ``finish`` is the report of the whole."""
        out = cls(spec, columns, None, quarantine)
        for state in states:
            for key, p in state["problems"].items():
                out._problem(key, p.column, p.rule, p.fatal).add(p.named, p.count)
            out.total += state["total"]
            out.valid += state["valid"]
            out.invalid += state["invalid"]
            out.has_na |= set(state["has_na"])
        return out

    def dtypes_known(self) -> dict[str, str] | None:
        """The valid rows' final dtypes when they do not depend on the data (no nullable integer or bool column:
        such a column is plain only if every valid row holds a value), else None."""
        if any(self.spec.column(c).dtype in NULLABLE and self.spec.column(c).nullable for c in self.order):
            return None
        return {c: str(self._dtype(c, nullable=False)) for c in self.order}

    def finish(self) -> Outcome:
        """Every problem (the dataset's too: fewer valid rows than ``min_rows``) in report order."""
        valid_count = self.valid if self.quarantine else self.total
        if valid_count < self.spec.min_rows:
            got = f"{valid_count} valid of {self.total}" if self.quarantine else f"{self.total}"
            self._problem((3,), None, f"at least {self.spec.min_rows} rows required, got {got}", fatal=True)
        problems = [self.problems[k] for k in sorted(self.problems)]
        dtypes = {c: str(self._dtype(c, nullable=False)) for c in self.order}
        return Outcome(problems, self.total, self.valid, self.invalid, dtypes)


class Sink:
    """Where a pass puts each batch's valid and quarantine rows; ``discard`` drops what a pass wrote."""

    def write(self, valid: pd.DataFrame, invalid: pd.DataFrame) -> None:
        pass

    def discard(self) -> None:
        pass


def validate_batches(
    spec: DatasetSpec,
    batches: Callable[[], Iterable[pd.DataFrame]],
    columns: list[str],
    open_sink: Callable[[], Sink] = Sink,
    quarantine: bool | None = None,
    on_pass: Callable[[str], None] = lambda what: None,
    duplicates: Duplicates | None = None,
) -> tuple[Outcome, Sink]:
    """Validate the rows ``batches()`` gives, a batch at a time (the data is read again, never kept).

    One pass checks every rule and collects the values of the unique columns; when some of them repeat, the
    batches are read a second time to refuse those rows (``open_sink()`` gives each pass its own sink, the first
    one's is discarded). Returns the outcome and the sink of the pass that counts (valid rows in nullable
    dtypes; ``Outcome.dtypes`` are the final ones). Raises ``DataValidationError`` naming every problem, unless
    the spec quarantines invalid rows and none of the problems concerns the whole dataset; the caller then
    discards the sink's output. ``duplicates`` given (finished) are used as they are."""
    quarantine = spec.on_invalid == "quarantine" if quarantine is None else quarantine
    if duplicates is None and any(c.unique and c.name in columns for c in spec.columns.values()):
        duplicates = Duplicates(spec)
    try:
        while True:
            sink = open_sink()
            validator = Validator(spec, columns, duplicates, quarantine)
            for batch in batches():
                sink.write(*validator.check(batch))
            if duplicates is not None and not duplicates.finished:
                duplicates.finish()
                if duplicates.found:
                    sink.discard()
                    on_pass("duplicate values found: reading the sources again to refuse their rows")
                    continue
            outcome = validator.finish()
            break
    finally:
        if duplicates is not None:
            duplicates.close()
    try:
        raise_for(spec, outcome, quarantine)
    except DataValidationError:
        sink.discard()
        raise
    return outcome, sink


def raise_for(spec: DatasetSpec, outcome: Outcome, quarantine: bool) -> None:
    """Raise the ``DataValidationError`` naming every problem, unless there is none, or the spec quarantines
    invalid rows and none of the problems concerns the whole dataset."""
    if outcome.problems and (not quarantine or outcome.fatal):
        raise DataValidationError(_message(spec, outcome, quarantine), [_violation(p) for p in outcome.problems])


class _Frames(Sink):
    def __init__(self):
        self.valid: list[pd.DataFrame] = []
        self.invalid: list[pd.DataFrame] = []

    def write(self, valid: pd.DataFrame, invalid: pd.DataFrame) -> None:
        self.valid.append(valid)
        self.invalid.append(invalid)


def validate(df: pd.DataFrame, spec: DatasetSpec) -> Checked:
    """Check the rows of one DataFrame; raise ``DataValidationError`` naming every problem, unless the spec
    quarantines invalid rows and none of the problems concerns the whole dataset. Returns the valid rows
    (meta columns kept) and the quarantine."""
    columns = [c for c in df.columns if c not in META_COLUMNS]
    outcome, frames = validate_batches(spec, lambda: [df], columns, _Frames)
    rows = frames.valid[0]
    change = {c: t for c, t in outcome.dtypes.items() if str(rows[c].dtype) != t}
    return Checked(rows.astype(change) if change else rows, frames.invalid[0], outcome.problems, outcome.total_rows)


def _violation(p: Problem) -> dict:
    rows = [{"where": r.where, "line": r.line, "value": r.value} for r in p.named]
    return {"column": p.column, "rule": p.rule, "count": p.count or 1, "rows": rows, "fatal": p.fatal}


def _message(spec: DatasetSpec, outcome: Outcome, quarantine: bool) -> str:
    parts = []
    for p in outcome.problems:
        if not p.count:
            parts.append(p.label())
            continue
        if p.rule == RAGGED_RULE:
            at = "; ".join(f"{r.where} ({r.value})" for r in p.named)
        else:
            at = "; ".join(f"{r.where} (value {r.value!r})" for r in p.named)
        more = f" and {p.count - len(p.named)} more" if p.count > len(p.named) else ""
        parts.append(f"{p.label()}: {p.count} row(s) of {outcome.total_rows}, at {at}{more}")
    how = (
        "fix the source file(s) and ingest again"
        if not quarantine
        else "a problem of the whole dataset cannot be quarantined; fix the source file(s)"
    )
    return (
        f"dataset {spec.name!r} failed validation with {len(parts)} problem(s): "
        + " | ".join(parts)
        + f"; {how} (nothing was published)"
    )


class _Files(Sink):
    def __init__(self, shape: Validator, valid_path: str, quarantine_path: str):
        self.valid = FrameWriter(valid_path, shape.template(), what="the valid rows")
        self.invalid = FrameWriter(quarantine_path, shape.quarantine_template(), what="the quarantined rows")

    def write(self, valid: pd.DataFrame, invalid: pd.DataFrame) -> None:
        self.valid.write(valid)
        self.invalid.write(invalid)

    def discard(self) -> None:
        self.valid.discard()
        self.invalid.discard()


def validate_to_files(
    spec: DatasetSpec,
    batches: Callable[[], Iterable[pd.DataFrame]],
    columns: list[str],
    valid_path: str,
    quarantine_path: str,
    on_pass: Callable[[str], None] = lambda what: None,
) -> tuple[Written, Written, Outcome]:
    """``validate_batches`` writing the valid rows (with the final dtypes recorded, ``frames.DTYPES_KEY``) and the
    quarantine rows to two Parquet files, a batch at a time. On a refusal both files are left incomplete: the
    caller removes them."""
    shape = Validator(spec, columns)
    outcome, files = validate_batches(
        spec, batches, columns, lambda: _Files(shape, valid_path, quarantine_path), on_pass=on_pass
    )
    return files.valid.close(dtypes=outcome.dtypes), files.invalid.close(), outcome
