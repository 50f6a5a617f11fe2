"""A first dataset spec inferred from a data file, for the data engineer to review (``kfrelease data init``).

Each column gets the first dtype every value converts to exactly (``kfrelease.data.dtypes.convert``, the
conversion publishing applies: int64, float64, bool, datetime64[ns], else string), ``nullable`` when a value
is missing, and the observed range as ``min``/``max``. The first whole-number or text column whose values
are all present and distinct (preferring a name like ``id``) becomes ``id_column``. The target is never
guessed into the spec: a comment names a candidate for the data engineer to confirm. The spec is checked
(``parse_spec``) and the file validated against it (``kfrelease.data.validate``) before anything is written.
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
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*/?$")


@dataclass(frozen=True)
class InferredColumn:
    name: str
    dtype: str
    nullable: bool
    unique: bool
    min: float | int | None
    max: float | int | None


def infer_column(name: str, values: pd.Series) -> InferredColumn:
    for dtype in INFER_ORDER:
        conv = convert(values, dtype)
        if not conv.problems:
            break
    present = conv.values[~conv.missing]
    lo = hi = None
    if dtype in ("int64", "float64") and len(present):
        cast = int if dtype == "int64" else float
        lo, hi = cast(present.min()), cast(present.max())
    unique = bool(len(present) == len(values) and present.is_unique)
    return InferredColumn(name, dtype, bool(conv.missing.any()), unique, lo, hi)


def id_candidate(columns: list[InferredColumn]) -> str | None:
    """A column that can identify a row: all present, all distinct, whole numbers or text."""
    fits = [c for c in columns if c.unique and not c.nullable and c.dtype in ("int64", "string")]
    named = [c for c in fits if re.search(r"(^|_)(id|key)$|^id", c.name, re.IGNORECASE)]
    chosen = named or fits
    return chosen[0].name if chosen else None


def target_candidate(columns: list[InferredColumn], id_column: str | None) -> str | None:
    """The last numeric column that is not the id (a guess, only ever written as a comment)."""
    numeric = [c.name for c in columns if c.dtype in ("int64", "float64") and c.name != id_column]
    return numeric[-1] if numeric else None


def _key(text: str) -> str:
    """Text as a YAML scalar: bare when it reads back as itself, else quoted."""
    return text if _PLAIN.match(text) and yaml.safe_load(text) == text else json.dumps(text)


def _outward(value: float, up: bool) -> float:
    """A float bound rounded away from the data to 3 significant digits (readable, still holds every value)."""
    if value == 0 or not math.isfinite(value):
        return value
    exponent = math.floor(math.log10(abs(value))) - 2
    step = 10.0**exponent
    rounded = (math.ceil if up else math.floor)(value / step) * step
    return float(f"{rounded:.{max(0, -exponent)}f}")


def _number(value, up: bool) -> str:
    return json.dumps(value if isinstance(value, int) else _outward(value, up))


def render_spec(name: str, source: str, columns: list[InferredColumn], rows: int) -> str:
    """The spec's YAML, commented for review."""
    id_column = id_candidate(columns)
    target = target_candidate(columns, id_column)
    width = max(len(_key(c.name)) for c in columns) + 1
    lines = [
        f"# Dataset spec inferred by `kfrelease data init` from {Path(source).name} ({rows} rows): review it.",
        "# Ranges are the observed ones (rounded outward): widen them to what is valid, or later batches will be refused.",
        "# Every key is described in docs/spec-reference.md.",
        f"name: {_key(name)}",
        f"description: {json.dumps(f'Inferred from {Path(source).name}; describe the data here.')}",
        "source:",
        f"  prefix: {_key(name + '/')}       # every CSV or Parquet object under raw/{name}/ is one batch",
    ]
    lines.append(f"id_column: {_key(id_column)}" if id_column else "# id_column: no column is all present and distinct")
    if target:
        lines.append(
            f"# target: {_key(target)}   # a guess: confirm the column models learn to predict, then uncomment"
        )
    else:
        lines.append("# target: name the column models learn to predict")
    lines += [
        "min_rows: 1                  # fewer valid rows than this and nothing is published",
        "on_invalid: reject           # or quarantine: publish the valid rows, keep the others aside",
        "columns:",
    ]
    for c in columns:
        body = [f"dtype: {_key(c.dtype)}", f"nullable: {str(c.nullable).lower()}"]
        if c.name == id_column:
            body.append("unique: true")
        if c.min is not None:
            body += [f"min: {_number(c.min, up=False)}", f"max: {_number(c.max, up=True)}"]
        lines.append(f"  {(_key(c.name) + ':').ljust(width + 1)} {{{', '.join(body)}}}")
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
