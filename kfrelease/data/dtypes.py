"""Strict conversion of source values to a dataset spec's declared dtypes.

Nothing is coerced silently: a value either converts exactly (``"7"`` or ``7.0`` to int64 7, ``"2024-03-01"``
to a datetime) or is a problem of its row, named by a rule such as "not a whole number (expected int64)".
``2.5`` is never truncated into an integer column, an integer beyond int64 never wraps or turns into a
float, and a date that does not parse never becomes NaT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Text that means "no value" in a CSV source (pandas' default NA tokens); a ``string`` column treats
#: only the empty field as missing, since "NA" may be a real value there.
MISSING_TOKENS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INTEGER = r"^[+-]?\d+(?:\.0*)?$"
_TRUE, _FALSE = frozenset({"true", "1"}), frozenset({"false", "0"})


@dataclass(frozen=True)
class Converted:
    values: pd.Series  # the column in its declared dtype; NA where missing or unconvertible
    missing: np.ndarray  # bool per row: no value in the source
    problems: list[tuple[str, np.ndarray]]  # (rule, bool mask) of the values that do not fit


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s) or s.dtype == object


def _missing(s: pd.Series, dtype: str) -> np.ndarray:
    na = s.isna().to_numpy(dtype=bool)
    if _is_text(s):
        text = s.astype("string").str.strip()
        tokens = {""} if dtype == "string" else MISSING_TOKENS
        na |= text.isin(tokens).fillna(False).to_numpy(dtype=bool)
    return na


def convert(s: pd.Series, dtype: str) -> Converted:
    """Convert one source column to ``dtype`` (one of ``spec.DTYPES``) or report each value that does not fit."""
    missing = _missing(s, dtype)
    present = ~missing
    fn = {
        "int64": _to_int,
        "float64": _to_float,
        "bool": _to_bool,
        "datetime64[ns]": _to_datetime,
        "string": _to_string,
    }[dtype]
    values, problems = fn(s, present)
    return Converted(values, missing, [(rule, mask) for rule, mask in problems if mask.any()])


def _to_int(s: pd.Series, present: np.ndarray):
    out = np.zeros(len(s), dtype="int64")
    if _is_text(s):
        text = s.astype("string").str.strip().fillna("")
        integral = text.str.match(_INTEGER).fillna(False).to_numpy(dtype=bool) & present
        number = pd.to_numeric(text.where(present & ~integral), errors="coerce").astype("float64").to_numpy()
        numeric = np.isfinite(number) & (np.floor(number) != number)
        whole = text.str.replace(r"\.0*$", "", regex=True).str.lstrip("+")
        digits = whole.str.lstrip("-").str.len().fillna(0).to_numpy()
        short = integral & (digits <= 18)
        out[short] = pd.to_numeric(whole[short]).to_numpy(dtype="int64")
        overflow = np.zeros(len(s), dtype=bool)
        for i in np.flatnonzero(integral & ~short):  # 19+ digits: exact check with Python ints (rare)
            value = int(whole.iloc[i])
            if INT64_MIN <= value <= INT64_MAX:
                out[i] = value
            else:
                overflow[i] = True
        fraction = present & ~integral & numeric
        wrong = present & ~integral & ~numeric
    elif pd.api.types.is_bool_dtype(s):
        return _typed_int(s.to_numpy(dtype="int64"), s, present)
    elif pd.api.types.is_integer_dtype(s):
        raw = s.to_numpy(dtype="object", na_value=0)
        overflow = (
            present & np.array([not (INT64_MIN <= int(v) <= INT64_MAX) for v in raw], dtype=bool)
            if s.dtype == "uint64" or str(s.dtype) == "UInt64"
            else np.zeros(len(s), dtype=bool)
        )
        ok = present & ~overflow
        out[ok] = s[ok].to_numpy(dtype="int64")
        fraction = wrong = np.zeros(len(s), dtype=bool)
    elif pd.api.types.is_float_dtype(s):
        f = s.to_numpy(dtype="float64", na_value=np.nan)
        finite = np.isfinite(f)
        integral = present & finite & (np.floor(f) == f)
        overflow = integral & ((f < INT64_MIN) | (f >= 2.0**63))
        ok = integral & ~overflow
        out[ok] = f[ok].astype("int64")
        fraction = present & ~integral
        wrong = np.zeros(len(s), dtype=bool)
    else:
        fraction = overflow = np.zeros(len(s), dtype=bool)
        wrong = present.copy()
    bad = fraction | overflow | wrong
    values = pd.Series(out, index=s.index, dtype="int64")
    if (~present | bad).any():
        values = values.astype("Int64").mask(~present | bad)
    return values, [
        ("not a whole number (expected int64)", fraction),
        (f"out of the int64 range ({INT64_MIN} to {INT64_MAX})", overflow),
        ("wrong type (expected int64)", wrong),
    ]


def _typed_int(values: np.ndarray, s: pd.Series, present: np.ndarray):
    out = pd.Series(values, index=s.index, dtype="int64")
    if (~present).any():
        out = out.astype("Int64").mask(~present)
    return out, []


def _to_float(s: pd.Series, present: np.ndarray):
    if _is_text(s):
        text = s.astype("string").str.strip()
        number = pd.to_numeric(text.where(present), errors="coerce").astype("float64")
        wrong = present & number.isna().to_numpy(dtype=bool)
        parsed = pd.Series(np.nan, index=s.index, dtype="float64")
        ok = present & ~wrong
        parsed[ok] = _exact_floats(text[ok])
    elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        parsed = s.astype("float64")
        wrong = np.zeros(len(s), dtype=bool)
        if pd.api.types.is_integer_dtype(s):  # an integer beyond 2**53 would change in a float64
            big = present & (s.abs().fillna(0).to_numpy(dtype="float64") > 2.0**53)
            exact = np.array([float(v) == v for v in s[big]], dtype=bool) if big.any() else np.ones(0, dtype=bool)
            wrong[np.flatnonzero(big)[~exact]] = True
    else:
        parsed = pd.Series(np.nan, index=s.index, dtype="float64")
        wrong = present.copy()
    return parsed.mask(wrong | ~present), [("wrong type (expected float64)", wrong)]


def _exact_floats(text: pd.Series) -> np.ndarray:
    """Correctly rounded text -> float64 (pandas' own parser is off by one ulp for some values; Arrow's is not)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(pa.array(text.to_numpy(dtype=object), type=pa.string()), pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([float(t) for t in text], dtype="float64")


def _to_bool(s: pd.Series, present: np.ndarray):
    if pd.api.types.is_bool_dtype(s):
        values = s.astype("boolean")
        wrong = np.zeros(len(s), dtype=bool)
    else:
        text = s.astype("string").str.strip().str.lower().fillna("")
        true, false = text.isin(_TRUE).to_numpy(dtype=bool), text.isin(_FALSE).to_numpy(dtype=bool)
        wrong = present & ~true & ~false
        values = pd.Series(true, index=s.index, dtype="boolean")
    values = values.mask(~present | wrong)
    if not (~present | wrong).any():
        values = values.astype("bool")
    return values, [("wrong type (expected bool: true/false or 1/0)", wrong)]


def _to_datetime(s: pd.Series, present: np.ndarray):
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = s if getattr(s.dtype, "tz", None) is None else s.dt.tz_convert("UTC").dt.tz_localize(None)
        parsed = parsed.astype("datetime64[ns]")
        wrong = np.zeros(len(s), dtype=bool)
    elif _is_text(s):
        text = s.astype("string").str.strip().where(present)
        parsed = pd.to_datetime(text.astype(object), errors="coerce", format="ISO8601", utc=True)
        parsed = parsed.dt.tz_localize(None).astype("datetime64[ns]")
        wrong = present & parsed.isna().to_numpy(dtype=bool)
    else:
        parsed = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
        wrong = present.copy()
    return parsed.mask(wrong), [
        ("not a date/time (expected datetime64[ns], ISO 8601 such as 2024-03-01T12:00:00)", wrong)
    ]


def _to_string(s: pd.Series, present: np.ndarray):
    values = s.astype(pd.StringDtype("pyarrow")).mask(~present)
    return values, []
