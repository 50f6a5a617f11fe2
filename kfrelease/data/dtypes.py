"""Strict conversion of source values to a dataset spec's declared dtypes.

Nothing is coerced silently: a value either converts exactly (``"7"`` or ``7.0`` to int64 7, ``"2024-03-01"``
to a datetime) or is a problem of its row, named by a rule such as "not a whole number (expected int64)".
``2.5`` is never truncated into an integer column, an integer beyond int64 never wraps or turns into a
float, and a date that does not parse never becomes NaT.

Text is converted by Arrow's compute kernels where a value has the plain form of its dtype (``12``, ``-3.5e2``,
``true``): that is nearly every value of a real file. The few others (surrounding text, fractions in an integer
column, overflow, typos) go through the exact rules below (``_convert_exact``), which decide every refusal; the
fast path only ever accepts what those rules accept, with the same value (``tests/test_data_dtypes.py`` holds
the two equal on generated text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
#: Python's ``str.strip()`` whitespace (every code point whose ``isspace()`` is true), for Arrow's trim kernel.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The plain forms the fast path converts with Arrow (RE2 syntax, ASCII digits only).
_PLAIN_INT = r"^[+-]?[0-9]{1,18}(\.0*)?$"
_PLAIN_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$"
_PLAIN_BOOL = ("true", "false", "1", "0")
_DATETIME_RULE = "not a date/time (expected datetime64[ns], ISO 8601 such as 2024-03-01T12:00:00)"
#: Each dtype's conversion rules, in the order ``convert`` reports them.
RULES = {
    "int64": (
        "not a whole number (expected int64)",
        f"out of the int64 range ({INT64_MIN} to {INT64_MAX})",
        "wrong type (expected int64)",
    ),
    "float64": ("wrong type (expected float64)",),
    "bool": ("wrong type (expected bool: true/false or 1/0)",),
    "datetime64[ns]": (_DATETIME_RULE,),
    "string": (),
    "category": (),  # text; whether a value is one of the column's categories is the spec's rule (validate)
}
#: Declared dtypes converted as another: a category column's values are text.
AS = {"category": "string"}
_INTEGER = r"^[+-]?[0-9]+(?:\.0*)?$"  # ASCII digits: pandas cannot parse other scripts
#: A number with an exponent of ten or more digits. pandas' C parser behind ``to_numeric`` overflows a signed 32-bit
#: exponent on some of them and kills the process (SIGSEGV, no exception: "8e2569614270" crashes pandas 2.3.3 here;
#: the same crash in PriorLabs/TabPFN#1202), so a CSV cell like that took the whole publish down. Such text never
#: reaches it: ``text_to_numbers`` parses it by this pattern with pandas' meaning (out of float64's range: not a number).
_LONG_EXPONENT = r"[eE][+-]?[0-9]{10,}"
_PLAIN_FLOAT = r"^\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+\s*$"
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
    dtype = AS.get(dtype, dtype)
    text = _arrow_text(s)
    if text is None:
        return _convert_exact(s, dtype)
    return _convert_text(s, text, dtype)


def _arrow_text(s: pd.Series):
    """The column as an Arrow string array when it is text (CSV values, string columns), else None."""
    if not pd.api.types.is_string_dtype(s) or (s.dtype == object and not _all_str(s)):
        return None
    try:
        arr = pa.array(s.array if isinstance(s.dtype, pd.StringDtype) else s.to_numpy(dtype=object), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else None


def _all_str(s: pd.Series) -> bool:
    values = s.dropna().to_numpy(dtype=object)
    return all(isinstance(v, str) for v in values)


def _bools(arr) -> np.ndarray:
    """An Arrow boolean array as numpy, null as False."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _convert_text(s: pd.Series, text, dtype: str) -> Converted:
    """Arrow's kernels for the values in the plain form of ``dtype``; the exact rules for the rest."""
    n = len(s)
    null = text.is_null().to_numpy(zero_copy_only=False)
    tokens = pa.array([""] if dtype == "string" else sorted(MISSING_TOKENS), text.type)
    if dtype in ("string", "datetime64[ns]"):
        stripped = pc.utf8_trim(text, characters=WHITESPACE)
        missing = _bools(pc.is_in(stripped, value_set=tokens)) | null
        if dtype == "datetime64[ns]":  # pandas' ISO 8601 parser decides; only the strip is Arrow's
            return _to_datetime_text(s.index, stripped, ~missing, missing)
        kept = pc.if_else(pa.array(missing), pa.scalar(None, text.type), text)
        return Converted(pd.Series(pd.arrays.ArrowStringArray(kept), index=s.index), missing, [])
    fast, out = _plain(text, dtype, null)
    missing = null.copy()
    problems: list[tuple[str, np.ndarray]] = []
    bad = np.zeros(n, dtype=bool)
    rest = np.flatnonzero(~fast & ~null)
    if len(rest):  # the exact rules decide every value not in the plain form
        stripped = pc.utf8_trim(text.take(pa.array(rest)), characters=WHITESPACE)
        token = _bools(pc.is_in(stripped, value_set=tokens))
        missing[rest[token]] = True
        slow = rest[~token]
        if len(slow):
            exact = _convert_exact(s.iloc[slow], dtype)
            refused = np.zeros(len(slow), dtype=bool)
            for rule, mask in exact.problems:
                full = np.zeros(n, dtype=bool)
                full[slow[mask]] = True
                problems.append((rule, full))
                refused |= mask
            bad[slow[refused]] = True
            good = np.flatnonzero(~refused)
            out[slow[good]] = exact.values.iloc[good].to_numpy(dtype=out.dtype)
    absent = missing | bad
    if dtype == "float64":
        values = pd.Series(out, index=s.index, dtype="float64")
        if absent.any():
            values = values.mask(absent)
    elif absent.any():
        values = pd.Series(out, index=s.index).astype("Int64" if dtype == "int64" else "boolean").mask(absent)
    else:
        values = pd.Series(out, index=s.index, dtype=out.dtype)
    return Converted(values, missing, problems)


def _plain(text, dtype: str, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which values are in the plain form of ``dtype`` (never missing), and the column with them converted.

    A whole column that Arrow casts (nearly always) costs one kernel; only the values of a column that it
    does not are matched one by one against the plain form first."""
    n = len(null)
    if dtype == "bool":
        lower = pc.ascii_lower(text)
        fast = _bools(pc.is_in(lower, value_set=pa.array(_PLAIN_BOOL, text.type)))
        return fast, _bools(pc.is_in(lower, value_set=pa.array(["true", "1"], text.type))) & fast
    target = pa.int64() if dtype == "int64" else pa.float64()
    out = np.zeros(n, dtype="int64") if dtype == "int64" else np.full(n, np.nan)
    try:
        whole = pc.cast(text, target)
        if dtype == "int64" and pc.any(pc.match_substring(text, "x", ignore_case=True)).as_py():
            whole = None  # Arrow reads 0x10 as hexadecimal; the exact rules do not
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        whole = None
    if whole is not None:
        fast = ~null
        values = whole.to_numpy(zero_copy_only=False)
        if dtype == "float64":  # nan, inf, 1e999: the exact rules decide (missing, or refused)
            fast &= np.isfinite(values)
        out[fast] = values[fast]
        return fast, out
    fast = _bools(pc.match_substring_regex(text, _PLAIN_INT if dtype == "int64" else _PLAIN_FLOAT))
    picked = text.filter(pa.array(fast))
    if dtype == "int64":
        parsed = pc.cast(pc.replace_substring_regex(picked, r"^\+|\.0*$", ""), target).to_numpy()
    else:
        parsed = pc.cast(pc.utf8_trim(picked, characters=WHITESPACE), target).to_numpy()  # the form allows spaces
        finite = np.isfinite(parsed)  # an overflow (1e999) is for the exact rules to refuse, never taken as inf
        if not finite.all():
            fast[np.flatnonzero(fast)[~finite]] = False
            parsed = parsed[finite]
    out[fast] = parsed
    return fast, out


def _to_datetime_text(index: pd.Index, stripped, present: np.ndarray, missing: np.ndarray) -> Converted:
    text = pd.Series(stripped.to_numpy(zero_copy_only=False), index=index, dtype=object).where(present)
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    parsed = parsed.dt.tz_localize(None).astype("datetime64[ns]")
    wrong = present & parsed.isna().to_numpy(dtype=bool)
    return Converted(parsed.mask(wrong), missing, [(_DATETIME_RULE, wrong)] if wrong.any() else [])


def _convert_exact(s: pd.Series, dtype: str) -> Converted:
    """The rules themselves, value by value through pandas (the reference the fast path is tested against)."""
    dtype = AS.get(dtype, dtype)
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
        number = text_to_numbers(text.where(present & ~integral)).to_numpy()
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
    return values, list(zip(RULES["int64"], (fraction, overflow, wrong), strict=True))


def _typed_int(values: np.ndarray, s: pd.Series, present: np.ndarray):
    out = pd.Series(values, index=s.index, dtype="int64")
    if (~present).any():
        out = out.astype("Int64").mask(~present)
    return out, []


def text_to_numbers(values: pd.Series) -> pd.Series:
    """``pd.to_numeric(values, errors="coerce")`` as float64, without the crash on a long exponent (``_LONG_EXPONENT``):
    those values are parsed with Python's ``float`` when they are a plain ASCII number (a finite result is kept, an
    overflow is not a number, as pandas has it) and are not a number otherwise."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    text = values.astype("string")
    long = text.str.contains(_LONG_EXPONENT, regex=True).fillna(False).to_numpy(dtype=bool)
    if not long.any():
        return pd.to_numeric(values, errors="coerce").astype("float64")
    out = pd.to_numeric(values.mask(long), errors="coerce").astype("float64")
    plain = text[long].str.match(_PLAIN_FLOAT).fillna(False).to_numpy(dtype=bool)
    parsed = [float(t) if ok else np.nan for t, ok in zip(text[long], plain, strict=True)]
    out[long] = np.where(np.isfinite(parsed), parsed, np.nan)
    return out


def _to_float(s: pd.Series, present: np.ndarray):
    if _is_text(s):
        text = s.astype("string").str.strip()
        number = text_to_numbers(text.where(present))
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
    return parsed.mask(wrong | ~present), [(RULES["float64"][0], wrong)]


def _exact_floats(text: pd.Series) -> np.ndarray:
    """Correctly rounded text -> float64 (pandas' own parser is off by one ulp for some values; Arrow's is not)."""
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
    return values, [(RULES["bool"][0], wrong)]


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
    return parsed.mask(wrong), [(_DATETIME_RULE, wrong)]


def _to_string(s: pd.Series, present: np.ndarray):
    values = s.astype(pd.StringDtype("pyarrow")).mask(~present)
    return values, []
