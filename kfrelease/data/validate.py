"""Validate ingested rows against the dataset spec, reporting every problem at once.

Each value is converted to its column's declared dtype by ``kfrelease.data.dtypes`` (nothing is coerced
silently), then the spec's rules are checked row by row: missing values, ranges, uniqueness. A problem
names its column, its rule, how many rows it affects and the first of them by file and line (sorted),
with the value as written in the source. Ragged CSV lines are reported as such.

Problems of a row can be quarantined (``on_invalid: quarantine`` in the spec): the valid rows go on,
the invalid ones are kept with their reasons and source lines. Problems of the whole dataset (a missing
or undeclared column, too few rows) always reject it. The row masks here are our own (pandera's
``drop_invalid_rows`` is unreliable upstream, pandera#1830).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfrelease.data.dtypes import convert
from kfrelease.data.ingest import (
    LINE_COL,
    META_COLUMNS,
    RAGGED_COL,
    SOURCE_COL,
    TEXT_COL,
)
from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError

MAX_ROWS_NAMED = 5
RAGGED_RULE = "wrong number of fields (ragged line)"


@dataclass
class Problem:
    column: str | None
    rule: str
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="int64"))  # positions in the input
    fatal: bool = False  # a problem of the dataset, not of rows: nothing can be quarantined

    @property
    def count(self) -> int:
        return len(self.rows) if len(self.rows) else 1

    def label(self) -> str:
        return (f"column {self.column!r}: " if self.column else "") + self.rule


@dataclass
class Checked:
    """The outcome of ``check``: typed valid rows (meta columns kept), the quarantine frame, the problems."""

    valid: pd.DataFrame
    invalid: pd.DataFrame
    problems: list[Problem]
    total_rows: int

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)


def _meta(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col] if col in df.columns else pd.Series(pd.NA, index=df.index, dtype="object")


def check(df: pd.DataFrame, spec: DatasetSpec, quarantine: bool | None = None) -> Checked:
    """Convert and check every row (pure; raises nothing). ``quarantine`` defaults to the spec's policy."""
    quarantine = spec.on_invalid == "quarantine" if quarantine is None else quarantine
    df = df.reset_index(drop=True)
    n = len(df)
    ragged = _meta(df, RAGGED_COL).notna().to_numpy(dtype=bool)
    problems: list[Problem] = []
    if ragged.any():
        problems.append(Problem(None, RAGGED_RULE, np.flatnonzero(ragged)))
    data_cols = [c for c in df.columns if c not in META_COLUMNS]
    for col in data_cols:
        if col not in spec.column_names:
            problems.append(Problem(col, "column is not declared in the spec", fatal=True))
    typed: dict[str, pd.Series] = {}
    bad = ragged.copy()
    for c in spec.columns.values():
        if c.name not in df.columns:
            if c.nullable:  # an optional column older sources do not have: no value in any row
                typed[c.name] = convert(pd.Series(pd.NA, index=df.index, dtype="string"), c.dtype).values
            else:
                problems.append(Problem(c.name, "column is missing", fatal=True))
            continue
        conv = convert(df[c.name], c.dtype)
        for rule, mask in conv.problems:
            mask = mask & ~ragged
            if mask.any():
                problems.append(Problem(c.name, rule, np.flatnonzero(mask)))
                bad |= mask
        unusable = ragged | np.logical_or.reduce([m for _, m in conv.problems] or [np.zeros(n, dtype=bool)])
        checkable = ~unusable & ~conv.missing
        if not c.nullable:
            missing = conv.missing & ~ragged
            if missing.any():
                problems.append(
                    Problem(c.name, "missing value (NaN/empty) where none is allowed", np.flatnonzero(missing))
                )
                bad |= missing
        values = conv.values
        for bound, op, words in ((c.min, np.less, "below the minimum"), (c.max, np.greater, "above the maximum")):
            if bound is None or not checkable.any() or c.dtype not in ("int64", "float64"):
                continue
            out = np.zeros(n, dtype=bool)
            out[checkable] = op(values[checkable].to_numpy(), bound)
            if out.any():
                problems.append(Problem(c.name, f"{words} {bound}", np.flatnonzero(out)))
                bad |= out
        if c.unique:
            dup = np.zeros(n, dtype=bool)
            dup[checkable] = values[checkable].duplicated(keep=False).to_numpy(dtype=bool)
            if dup.any():
                problems.append(Problem(c.name, "duplicate value in a unique column", np.flatnonzero(dup)))
                bad |= dup
        typed[c.name] = values
    valid_mask = ~bad
    valid_count = int(valid_mask.sum()) if quarantine else n
    if valid_count < spec.min_rows:
        got = f"{valid_count} valid of {n}" if quarantine else f"{n}"
        problems.append(Problem(None, f"at least {spec.min_rows} rows required, got {got}", fatal=True))
    order = [c for c in data_cols if c in typed] + [c for c in typed if c not in data_cols]  # the source's order
    valid = _valid_frame(df, typed, valid_mask, order)
    return Checked(valid, _quarantine_frame(df, problems, bad, data_cols), _sorted(df, problems), n)


def _valid_frame(df: pd.DataFrame, typed: dict[str, pd.Series], mask: np.ndarray, order: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index[mask])
    for name in order:
        out[name] = typed[name][mask]
    for name in order:  # a column that holds a value in every valid row gets its plain numpy dtype back
        s = out[name]
        if str(s.dtype) in ("Int64", "boolean") and not s.isna().any():
            out[name] = s.astype("int64" if str(s.dtype) == "Int64" else "bool")
    out[SOURCE_COL] = _meta(df, SOURCE_COL)[mask]
    out[LINE_COL] = _meta(df, LINE_COL)[mask]
    return out.reset_index(drop=True)


def _quarantine_frame(df: pd.DataFrame, problems: list[Problem], bad: np.ndarray, data_cols: list[str]) -> pd.DataFrame:
    """One row per invalid input row: where it came from, why (every reason), its values as written."""
    reasons: dict[int, list[str]] = {}
    for p in problems:
        if p.fatal:
            continue
        for i in p.rows:
            reasons.setdefault(int(i), []).append(_row_reason(df, p, int(i)))
    rows = np.flatnonzero(bad)
    out = pd.DataFrame(
        {
            "source": _meta(df, SOURCE_COL).iloc[rows].astype("string").to_numpy(),
            "line": _meta(df, LINE_COL).iloc[rows].to_numpy(dtype="int64") if len(rows) else np.zeros(0, dtype="int64"),
            "reason": ["; ".join(reasons.get(int(i), [])) for i in rows],
        }
    )
    for col in data_cols:
        out[col] = df[col].iloc[rows].astype("string").to_numpy()
    out["text"] = _meta(df, TEXT_COL).iloc[rows].astype("string").to_numpy()
    return out


def _row_reason(df: pd.DataFrame, p: Problem, i: int) -> str:
    if p.rule == RAGGED_RULE:
        return f"{p.rule}: {df.at[i, RAGGED_COL]}"
    return f"{p.label()} (value {_value(df, p.column, i)!r})"


def _value(df: pd.DataFrame, column: str | None, i: int):
    if column is None or column not in df.columns:
        return None
    value = df.at[i, column]
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def _sorted(df: pd.DataFrame, problems: list[Problem]) -> list[Problem]:
    """Each problem's rows in file-and-line order."""
    if SOURCE_COL not in df.columns:
        return problems
    for p in problems:
        if len(p.rows):
            keys = pd.DataFrame(
                {"s": df[SOURCE_COL].iloc[p.rows].astype(str).to_numpy(), "l": df[LINE_COL].iloc[p.rows].to_numpy()}
            )
            p.rows = p.rows[np.lexsort((keys["l"].to_numpy(), keys["s"].to_numpy()))]
    return problems


def validate(df: pd.DataFrame, spec: DatasetSpec) -> Checked:
    """Check rows; raise ``DataValidationError`` naming every problem, unless the spec quarantines invalid
    rows and none of the problems concerns the whole dataset. Returns the valid rows and the quarantine."""
    checked = check(df, spec)
    quarantine = spec.on_invalid == "quarantine"
    if checked.problems and (not quarantine or checked.fatal):
        df = df.reset_index(drop=True)
        violations = [_violation(df, p) for p in checked.problems]
        raise DataValidationError(_message(spec, df, checked, quarantine), violations)
    return checked


def _violation(df: pd.DataFrame, p: Problem) -> dict:
    rows = [
        {
            "where": _where(df, int(i)),
            "line": int(df.at[int(i), LINE_COL]) if LINE_COL in df.columns else None,
            "value": _row_detail(df, p, int(i)),
        }
        for i in p.rows[:MAX_ROWS_NAMED]
    ]
    return {"column": p.column, "rule": p.rule, "count": p.count, "rows": rows, "fatal": p.fatal}


def _where(df: pd.DataFrame, i: int) -> str:
    if SOURCE_COL not in df.columns:
        return f"row {i + 1}"
    return f"{df.at[i, SOURCE_COL]} line {df.at[i, LINE_COL]}"


def _row_detail(df: pd.DataFrame, p: Problem, i: int):
    return str(df.at[i, RAGGED_COL]) if p.rule == RAGGED_RULE else _value(df, p.column, i)


def _message(spec: DatasetSpec, df: pd.DataFrame, checked: Checked, quarantine: bool) -> str:
    parts = []
    for p in checked.problems:
        if not len(p.rows):
            parts.append(p.label())
            continue
        named = p.rows[:MAX_ROWS_NAMED]
        if p.rule == RAGGED_RULE:
            at = "; ".join(f"{_where(df, int(i))} ({df.at[int(i), RAGGED_COL]})" for i in named)
        else:
            at = "; ".join(f"{_where(df, int(i))} (value {_value(df, p.column, int(i))!r})" for i in named)
        more = f" and {len(p.rows) - len(named)} more" if len(p.rows) > len(named) else ""
        parts.append(f"{p.label()}: {len(p.rows)} row(s) of {checked.total_rows}, at {at}{more}")
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
