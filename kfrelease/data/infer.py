"""A first dataset spec inferred from a data file, for the data engineer to review (``kfrelease data init``).

Each column gets the first dtype every value converts to exactly (``kfrelease.data.dtypes.convert``, the
conversion publishing applies: int64, float64, bool, datetime64[ns], else string), ``nullable`` when a value
is missing, and a range: the observed one widened by ``MARGIN`` of its span on each side and rounded outward
to two significant digits of the span (``widen``; never below 0 for a column with no negative value), so
that the next batch is not refused for a value just outside what this file holds; each column's comment
states what was observed. A text column with few distinct values (at most ``MAX_CATEGORIES``, and at most half
its present values, so that each is seen twice on average) becomes a ``category`` column with the values it
holds, sorted, as its ``categories`` (the serving policy ``unknown`` keeps its default, ``refuse``, stated in
a comment). The first whole-number or text column whose values are all present and distinct
(preferring a name like ``id``) becomes ``id_column``, with a minimum and no maximum (later batches bring new
ids). The target is never guessed into the spec: a comment proposes one, by name (``target``, ``label``,
``price``, ``sales``...) and else by role (the last numeric column that is not an id, a coordinate x/y/z or
one of a numbered series such as ``s1..s6``), and says which, for the data engineer to confirm. The spec is
checked (``parse_spec``) and the file validated against it (``kfrelease.data.validate``) before anything
is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from kfrelease.data.dtypes import convert
from kfrelease.data.ingest import (
    LINE_COL,
    META_COLUMNS,
    RAGGED_COL,
    read_source,
    source_format,
)
from kfrelease.data.spec import DatasetSpec, parse_spec
from kfrelease.data.validate import validate
from kfrelease.errors import ConfigError, DataValidationError

#: Tried in order: the first dtype every present value converts to exactly.
INFER_ORDER = ("int64", "float64", "bool", "datetime64[ns]", "string")
#: A text column becomes a ``category`` when it has at most this many distinct values, and at most half as many
#: as present values (``category_values``); else it stays ``string``.
MAX_CATEGORIES = 50
#: How far a range is widened beyond the observed values, as a share of their span, on each side.
MARGIN = 0.10
#: Names of the role itself, then words that name what regression models usually predict (a column is
#: proposed as the target when its name is one, or one of its words is).
TARGET_NAMES = ("target", "label", "outcome", "response", "dependent", "y")
TARGET_WORDS = (
    "price", "sales", "revenue", "demand", "cost", "charges", "income", "wage", "salary", "value", "amount",
    "progression", "score", "rating", "yield", "consumption", "load", "medv", "quantity", "duration",
)  # fmt: skip
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*/?$")


@dataclass(frozen=True)
class InferredColumn:
    name: str
    dtype: str
    nullable: bool
    unique: bool
    min: float | int | None
    max: float | int | None
    categories: tuple[str, ...] | None = None


def category_values(present: pd.Series) -> tuple[str, ...] | None:
    """The known values of a text column, sorted, when it looks like a category: at most ``MAX_CATEGORIES``
    distinct values and at most half as many as its present values; else None."""
    distinct = present.drop_duplicates()
    if len(distinct) > MAX_CATEGORIES or len(distinct) * 2 > len(present):
        return None
    return tuple(sorted(str(v) for v in distinct))


def infer_column(name: str, values: pd.Series) -> InferredColumn:
    sample = values.iloc[:: max(1, len(values) // 1000)]  # a dtype that fails on these is not tried on all
    for dtype in INFER_ORDER:
        if dtype != INFER_ORDER[-1] and convert(sample, dtype).problems:
            continue
        conv = convert(values, dtype)
        if not conv.problems:
            break
    present = conv.values[~conv.missing]
    lo = hi = None
    if dtype in ("int64", "float64") and len(present):
        cast = int if dtype == "int64" else float
        lo, hi = cast(present.min()), cast(present.max())
    unique = bool(len(present) == len(values) and present.is_unique)
    categories = category_values(present) if dtype == "string" else None
    if categories:
        dtype = "category"
    return InferredColumn(name, dtype, bool(conv.missing.any()), unique, lo, hi, categories)


def id_candidate(columns: list[InferredColumn]) -> str | None:
    """A column that can identify a row: all present, all distinct, whole numbers or text."""
    fits = [c for c in columns if c.unique and not c.nullable and c.dtype in ("int64", "string")]
    named = [c for c in fits if re.search(r"(^|_)(id|key)$|^id", c.name, re.IGNORECASE)]
    chosen = named or fits
    return chosen[0].name if chosen else None


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z]+", spaced.lower()) if w]


def _series(name: str, names: list[str]) -> bool:
    """One of a numbered series (``x0..x9``, ``s1..s6``): inputs, not what is predicted."""
    stem = re.fullmatch(r"([A-Za-z_]+?)_?\d+", name)
    return bool(stem) and sum(1 for n in names if re.fullmatch(rf"{re.escape(stem.group(1))}_?\d+", n)) > 1


def target_candidate(columns: list[InferredColumn], id_column: str | None) -> tuple[str, str] | None:
    """A numeric column models could learn to predict, and why it is proposed (only ever written as a comment):
    by name first, else by role, never an id, a coordinate (x, y, z together) or one of a numbered series."""
    numeric = [c.name for c in columns if c.dtype in ("int64", "float64") and c.name != id_column]
    names = [c.name for c in columns]
    lower = {n.lower() for n in names}
    coordinates = {"x", "y", "z"} if {"x", "z"} <= lower else set()
    allowed = [n for n in numeric if n.lower() not in coordinates and not _series(n, names)]
    for role in TARGET_NAMES:
        for n in allowed:
            if n.lower().replace("_", "") == role:
                return n, f"by its name ({role})"
    for word in TARGET_WORDS:
        for n in allowed:
            if word in _words(n):
                return n, f"by its name ({word})"
    if allowed:
        return allowed[-1], "by its role: the last numeric column that is not an id, a coordinate or a numbered series"
    return None


def widen(lo: float, hi: float, integer: bool) -> tuple[float, float]:
    """The range ``[lo, hi]`` widened by ``MARGIN`` of its span on each side, rounded outward to two significant
    digits of the span (whole numbers for an integer column), and not below 0 when ``lo`` is not."""
    span = hi - lo or abs(hi) or 1.0
    step = 10.0 ** (math.floor(math.log10(span)) - 1)
    if integer:
        step = max(1.0, step)
    low = math.floor((lo - MARGIN * span) / step) * step
    high = math.ceil((hi + MARGIN * span) / step) * step
    if lo >= 0 > low:
        low = 0.0
    digits = max(0, -math.floor(math.log10(step)))
    if integer:
        return int(low), int(high)
    return round(low, digits), round(high, digits)


def _key(text: str) -> str:
    """Text as a YAML scalar: bare when it reads back as itself, else quoted."""
    return text if _PLAIN.match(text) and yaml.safe_load(text) == text else json.dumps(text)


def render_spec(name: str, source: str, columns: list[InferredColumn], rows: int) -> str:
    """The spec's YAML, commented for review."""
    id_column = id_candidate(columns)
    target = target_candidate(columns, id_column)
    width = max(len(_key(c.name)) for c in columns) + 1
    lines = [
        f"# Dataset spec inferred by `kfrelease data init` from {Path(source).name} ({rows} rows): review it.",
        f"# Ranges are the observed ones widened by {MARGIN:.0%} of their span on each side, rounded outward to two",
        "# significant digits of the span (not below 0 where no value is negative); each column says what was observed.",
        "# Set them to what is valid, or a later batch with a value outside them is refused. Keys: docs/spec-reference.md",
        f"name: {_key(name)}",
        f"description: {json.dumps(f'Inferred from {Path(source).name}; describe the data here.')}",
        "source:",
        f"  prefix: {_key(name + '/')}       # every CSV or Parquet object under raw/{name}/ is one batch",
    ]
    lines.append(f"id_column: {_key(id_column)}" if id_column else "# id_column: no column is all present and distinct")
    if target:
        lines.append(
            f"# target: {_key(target[0])}   # proposed {target[1]}: confirm the column models learn to predict, "
            "then uncomment"
        )
    else:
        lines.append("# target: name the column models learn to predict")
    lines += [
        "min_rows: 1                  # fewer valid rows than this and nothing is published",
        "on_invalid: reject           # or quarantine: publish the valid rows, keep the others aside",
    ]
    if any(c.categories for c in columns):
        lines += [
            "# category columns: a value outside `categories` fails its row when published; at serving time a request",
            "# with one is refused (400) by default (`unknown: refuse`); add `unknown: pass` to a column to hand such",
            f"# values to the model. A text column became a category with at most {MAX_CATEGORIES} distinct values",
            "# (and at most half as many as rows), its observed values sorted.",
        ]
    lines.append("columns:")
    for c in columns:
        body = [f"dtype: {_key(c.dtype)}", f"nullable: {str(c.nullable).lower()}"]
        note = ""
        if c.name == id_column:
            body.append("unique: true")
            if c.min is not None:
                body.append(f"min: {json.dumps(c.min)}")
                note = f"  # an id: observed {c.min} to {c.max}; no maximum, later batches bring new ids"
        elif c.categories:
            body.append(f"categories: [{', '.join(_key(v) for v in c.categories)}]")
            note = f"  # {len(c.categories)} values observed"
        elif c.min is not None:
            low, high = widen(c.min, c.max, c.dtype == "int64")
            body += [f"min: {json.dumps(low)}", f"max: {json.dumps(high)}"]
            note = f"  # observed {c.min:g} to {c.max:g}"
        lines.append(f"  {(_key(c.name) + ':').ljust(width + 1)} {{{', '.join(body)}}}{note}")
    return "\n".join(lines) + "\n"


def infer_spec(path: str | Path, name: str | None = None) -> tuple[str, DatasetSpec]:
    """The YAML of a dataset spec inferred from a CSV or Parquet file, and the spec it parses to.

    Raises ``ConfigError`` for a missing file or one whose rows the inferred spec would refuse, and
    ``DataValidationError`` (from the reader) for a malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; give a CSV or Parquet file of the data (--from FILE.csv)")
    if source_format(path.name) is None:
        raise ConfigError(f"{path}: a data file must end in .csv or .parquet")
    name = name or re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem).strip("-").lower()
    if not name:
        raise ConfigError(f"{path}: cannot name the dataset from the file name; pass --name NAME")
    df = read_source(path.read_bytes(), str(path))
    ragged = df[RAGGED_COL].notna()
    if ragged.any():
        line = int(df.loc[ragged, LINE_COL].iloc[0])
        raise DataValidationError(
            f"{path} line {line}: {df.loc[ragged, RAGGED_COL].iloc[0]}; fix the file, then run data init again"
        )
    data = [c for c in df.columns if c not in META_COLUMNS]
    columns = [infer_column(c, df[c]) for c in data]
    text = render_spec(name, str(path), columns, len(df))
    spec = parse_spec(text, f"the spec inferred from {path}")
    validate(df, spec)  # the file satisfies what was inferred from it (raises DataValidationError if not)
    return text, spec


def write_new(path: str | Path, text: str) -> Path:
    """Write ``text`` to a file that must not exist yet (never overwrites; nothing half written)."""
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} already exists; nothing was written; pass another --out or remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # fails if the file appeared meanwhile
    except FileExistsError:
        raise ConfigError(f"{path} already exists; nothing was written; pass another --out or remove it") from None
    finally:
        tmp.unlink()
    return path
