"""Dataset specs: the declared schema and source of a curated dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError

DTYPES = ("int64", "float64", "string", "bool", "datetime64[ns]")
#: What publishing does with rows that fail validation: ``reject`` the whole batch (default), or
#: ``quarantine`` them beside the new version and publish the valid rows.
ON_INVALID = ("reject", "quarantine")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    dtype: str
    nullable: bool = False
    unique: bool = False
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    source_prefix: str
    id_column: str | None = None
    target: str | None = None
    min_rows: int = 1
    features: str | None = None
    description: str = ""
    on_invalid: str = "reject"
    text: str = field(default="", repr=False, compare=False)  # the YAML it was read from

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def parse_spec(text: str, origin: str = "<dataset spec>") -> DatasetSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{origin}: a dataset spec is a mapping with name, source, columns")
    missing = [k for k in ("name", "columns", "source") if k not in doc]
    if missing:
        raise ConfigError(f"{origin}: missing key(s) {', '.join(missing)}")
    if not isinstance(doc["columns"], dict) or not doc["columns"]:
        raise ConfigError(f"{origin}: 'columns' must map each column name to {{dtype: ..., ...}}")
    columns = []
    for name, body in doc["columns"].items():
        body = body or {}
        dtype = body.get("dtype")
        if dtype not in DTYPES:
            raise ConfigError(f"{origin}: column {name!r} has dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        unknown = set(body) - {"dtype", "nullable", "unique", "min", "max"}
        if unknown:
            raise ConfigError(f"{origin}: column {name!r} has unknown key(s) {sorted(unknown)}")
        columns.append(
            ColumnSpec(
                name=str(name),
                dtype=dtype,
                nullable=bool(body.get("nullable", False)),
                unique=bool(body.get("unique", False)),
                min=body.get("min"),
                max=body.get("max"),
            )
        )
    source = doc["source"] or {}
    prefix = source.get("prefix") if isinstance(source, dict) else None
    if not prefix:
        raise ConfigError(f"{origin}: source.prefix (the folder under the raw bucket) is required")
    on_invalid = doc.get("on_invalid", "reject")
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"{origin}: on_invalid is {on_invalid!r}; use one of {', '.join(ON_INVALID)}")
    spec = DatasetSpec(
        on_invalid=on_invalid,
        name=str(doc["name"]),
        columns=tuple(columns),
        source_prefix=prefix.rstrip("/") + "/",
        id_column=doc.get("id_column"),
        target=doc.get("target"),
        min_rows=int(doc.get("min_rows", 1)),
        features=doc.get("features"),
        description=doc.get("description", ""),
        text=text,
    )
    for key in ("id_column", "target"):
        value = getattr(spec, key)
        if value is not None and value not in spec.column_names:
            raise ConfigError(f"{origin}: {key} {value!r} is not one of the declared columns")
    return spec


def load_spec(name_or_path: str) -> DatasetSpec:
    """Load a dataset spec from a YAML file path, or by name from the packaged specs (e.g. ``diabetes``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"dataset spec {path} does not exist")
        return parse_spec(path.read_text(), str(path))
    packaged = resources.files("kfrelease.data") / "specs" / f"{name_or_path}.yaml"
    if not packaged.is_file():
        known = sorted(p.name.removesuffix(".yaml") for p in (resources.files("kfrelease.data") / "specs").iterdir())
        raise ConfigError(
            f"no dataset spec named {name_or_path!r}; known: {', '.join(known)}; or pass a path to a .yaml file"
        )
    return parse_spec(packaged.read_text(), f"dataset spec {name_or_path!r}")
