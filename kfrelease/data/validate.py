"""Validate rows against the dataset spec with pandera, reporting every violation at once."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from kfrelease.data.ingest import LINE_COL, META_COLUMNS, SOURCE_COL
from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import DataValidationError

MAX_ROWS_NAMED = 5


def pandera_schema(spec: DatasetSpec) -> pa.DataFrameSchema:
    columns = {}
    for c in spec.columns:
        checks = []
        if c.min is not None:
            checks.append(pa.Check.ge(c.min, name=f">= {c.min}"))
        if c.max is not None:
            checks.append(pa.Check.le(c.max, name=f"<= {c.max}"))
        columns[c.name] = pa.Column(c.dtype, checks=checks, nullable=c.nullable, unique=c.unique, coerce=True)
    return pa.DataFrameSchema(columns, strict=True, coerce=True)


def _where(df: pd.DataFrame, index) -> str:
    if index is None or pd.isna(index) or index not in df.index or SOURCE_COL not in df.columns:
        return ""
    return f"{df.at[index, SOURCE_COL]} line {df.at[index, LINE_COL]}"


def _describe(check: str) -> str:
    if check.startswith("coerce_dtype"):
        return "wrong type (expected " + check.split("'")[1] + ")" if "'" in check else "wrong type"
    if check == "not_nullable":
        return "missing value (NaN/empty) where none is allowed"
    if check == "field_uniqueness":
        return "duplicate value in a unique column"
    if check == "column_in_dataframe":
        return "column is missing"
    if check == "column_in_schema":
        return "column is not declared in the spec"
    for prefix, words in (("greater_than_or_equal_to(", "below the minimum "), ("less_than_or_equal_to(", "above the maximum ")):
        if check.startswith(prefix):
            return words + check[len(prefix):-1]
    return f"value fails {check}"


def validate(df: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Return the rows with declared dtypes (meta columns kept); raise ``DataValidationError`` naming
    every violated rule, its column, value and the file and line of the first offending rows."""
    meta = df[[c for c in META_COLUMNS if c in df.columns]]
    data = df.drop(columns=list(meta.columns))
    violations: list[dict] = []
    try:
        valid = pandera_schema(spec).validate(data, lazy=True)
    except SchemaErrors as exc:
        cases = exc.failure_cases
        # A column that could not be converted to its dtype also fails pandera's dtype check and, row-less,
        # its range checks: report the conversion failure alone for that column.
        uncoercible = set(cases.loc[cases["check"].astype(str).str.startswith("coerce_dtype"), "column"])
        for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
            column = None if pd.isna(column) else column
            if column in uncoercible and not str(check).startswith("coerce_dtype") and (
                str(check).startswith("dtype(") or group["index"].isna().all()
            ):
                continue
            if check == "column_in_schema" or check == "column_in_dataframe":
                column = str(group["failure_case"].iloc[0]) if column is None else column
            rows = [
                {"where": _where(df, idx), "value": None if pd.isna(val) else val}
                for idx, val in zip(group["index"], group["failure_case"])
            ]
            violations.append({"column": column, "rule": _describe(str(check)), "count": len(group), "rows": rows})
        valid = None
    if len(df) < spec.min_rows:
        violations.append(
            {"column": None, "rule": f"at least {spec.min_rows} rows required, got {len(df)}", "count": 1, "rows": []}
        )
    if violations:
        raise DataValidationError(_message(spec, violations), violations)
    return pd.concat([valid, meta], axis=1)


def _message(spec: DatasetSpec, violations: list[dict]) -> str:
    parts = []
    for v in violations:
        named = [r for r in v["rows"] if r["where"]][:MAX_ROWS_NAMED]
        at = "; ".join(f"{r['where']} (value {r['value']!r})" for r in named)
        col = f"column {v['column']!r}: " if v["column"] else ""
        more = f" and {v['count'] - len(named)} more" if named and v["count"] > len(named) else ""
        parts.append(f"{col}{v['rule']}" + (f" at {at}{more}" if at else ""))
    return (
        f"dataset {spec.name!r} failed validation with {len(violations)} problem(s): " + " | ".join(parts)
        + "; fix the source file(s) and ingest again (nothing was published)"
    )
