"""Dataset specs: the declared schema and source of a curated dataset.

The YAML a data engineer writes is a ``DatasetSpec`` (every key described there and in
``docs/spec-reference.md``); ``parse_spec`` checks it and returns it, and the pipeline uses it as it is.
``kfrelease data init --from FILE.csv`` writes a first one inferred from the data (``kfrelease.data.infer``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from kfrelease.errors import ConfigError
from kfrelease.registry.artifact import UNKNOWN_POLICIES
from kfrelease.specs import Items, Number, SpecDocument, did_you_mean, parse, repeated

#: ``category``: text with known values (``categories``), stored as the values themselves (no codes).
DTYPES = ("int64", "float64", "string", "category", "bool", "datetime64[ns]")
#: Known values shown in a message before "... N more".
SHOWN_CATEGORIES = 30
#: What publishing does with rows that fail validation: ``reject`` the whole batch (default), or
#: ``quarantine`` them beside the new version and publish the valid rows.
ON_INVALID = ("reject", "quarantine")
#: Where ingest, validation and publish run (``kfrelease.data.pipeline``, ``kfrelease.data.spark``).
ENGINES = ("embedded", "spark")


class ColumnSpec(SpecDocument):
    """One declared column: its type and the checks every row must pass."""

    dtype: Literal[DTYPES] = Field(
        description="The column's type; values that do not parse as it are refused. `category`: text with known "
        "values (`categories`), published as the values themselves."
    )
    nullable: bool = Field(False, description="Whether a row may leave this column empty.")
    unique: bool = Field(False, description="Whether every value must differ from every other (e.g. an id).")
    min: Number | None = Field(None, description="Smallest allowed value (numbers); null: no lower bound.")
    max: Number | None = Field(None, description="Largest allowed value (numbers); null: no upper bound.")
    categories: Items[str] | None = Field(
        None,
        description="A `category` column's known values (required there, for no other dtype); a row with any "
        "other value fails validation (quarantined or rejected as `on_invalid` says), never coerced. Models "
        "trained on the column take these values as their input schema's categories.",
    )
    unknown: Literal[UNKNOWN_POLICIES] = Field(
        "refuse",
        description="A `category` column's serving policy, carried into the input schema of models trained on it: "
        "`refuse` answers a request with a value outside `categories` with a 400 naming the column and the known "
        "values; `pass` hands it to the model (e.g. a `OneHotEncoder(handle_unknown='ignore')`).",
    )
    _name: str = PrivateAttr("")  # its key under `columns` (set by the dataset spec)

    @model_validator(mode="after")
    def _range(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if self.dtype == "category":
            if not self.categories:
                raise ValueError("a category column needs its known values: categories: [...]")
            twice = repeated(self.categories)
            if twice:
                raise ValueError(f"categories repeat {twice[0]!r}; list each known value once")
            if self.min is not None or self.max is not None:
                raise ValueError("min and max are for numbers; a category column's values are its categories")
        elif self.categories is not None:
            raise ValueError(f"only category columns have categories; declare dtype: category (not {self.dtype})")
        elif self.unknown != "refuse":
            raise ValueError(f"unknown is the serving policy of a category column; a {self.dtype} column has none")
        return self

    @property
    def name(self) -> str:
        return self._name

    @property
    def known(self) -> str:
        """The known values for a message: ``'Fair', 'Good', ...`` (at most ``SHOWN_CATEGORIES``)."""
        values = self.categories or ()
        shown = ", ".join(repr(v) for v in values[:SHOWN_CATEGORIES])
        more = len(values) - SHOWN_CATEGORIES
        return shown + (f", ... {more} more" if more > 0 else "")

    def input_column(self) -> dict:
        """This column as a feature of a model's input schema (``kfrelease.registry.artifact.input_columns``): a
        category with its known values and serving policy, text as ``string`` (any value), every other column as
        the float64 numbers training fits on."""
        if self.dtype == "category":
            return {
                "name": self.name,
                "dtype": "category",
                "categories": list(self.categories),
                "unknown": self.unknown,
            }
        return {"name": self.name, "dtype": "string" if self.dtype == "string" else "float64"}


class SourceSpec(SpecDocument):
    """Where the raw batches are."""

    prefix: str = Field(
        min_length=1,
        description="The folder under the raw bucket (e.g. `diabetes/`); every CSV or Parquet object under it "
        "is one batch, and all batches are unioned.",
    )


class DatasetSpec(SpecDocument):
    """A dataset spec (owned by the data engineers): the source of a curated dataset and the schema every
    published version satisfies."""

    name: str = Field(min_length=1, description="The dataset's name: curated versions are published under it.")
    description: str = Field("", description="What the data is, for the people who read it.")
    source: SourceSpec = Field(description="Where the raw batches are (a mapping with `prefix`).")
    columns: dict[str, ColumnSpec] = Field(
        min_length=1, description="Each column name mapped to its declaration `{dtype: ..., ...}`, in order."
    )
    id_column: str | None = Field(None, description="The column that identifies a row (declare it `unique`).")
    target: str | None = Field(None, description="The column models learn to predict (a declared column).")
    min_rows: int = Field(1, ge=0, description="Fewer valid rows than this and nothing is published.")
    features: str | None = Field(
        None,
        description="An optional feature-engineering step, `module:function` taking and returning a DataFrame, "
        "applied a batch of rows at a time (a row's features from that row); the module is found installed, beside "
        "the spec file, or in the model project.",
    )
    on_invalid: Literal[ON_INVALID] = Field(
        "reject",
        description="Rows that fail validation: `reject` the whole batch, or `quarantine` them beside the new "
        "version and publish the valid rows.",
    )
    engine: Literal[ENGINES] = Field(
        "embedded",
        description="Where ingest, validation and publish run: `embedded` (one process, a batch at a time, memory "
        "flat in the data's size) or `spark` (a SparkApplication on the cluster, one task per source object; "
        "Spark's local mode on the embedded stack). Both apply the same rules and publish the same version ids.",
    )

    @model_validator(mode="after")
    def _declared(self):
        for key in ("id_column", "target"):
            value = getattr(self, key)
            if value is not None and value not in self.columns:
                raise ValueError(
                    f"{key} {value!r} is not one of the declared columns{did_you_mean(value, self.columns)}"
                )
        for name, column in self.columns.items():
            column._name = name
        return self

    @property
    def source_prefix(self) -> str:
        """The raw bucket's folder of the batches, ending in ``/``."""
        return self.source.prefix.rstrip("/") + "/"

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def column(self, name: str) -> ColumnSpec:
        return self.columns[name]

    def input_schema(self, features) -> list[dict]:
        """The input schema of a model taking ``features`` of this dataset, in that order: each declared column's
        ``ColumnSpec.input_column`` (a category with its known values and serving policy), and a column the
        feature step adds as float64 (training takes only numbers from it). ``ConfigError`` for a feature that is
        neither."""
        out = []
        for f in features:
            if f in self.columns:
                out.append(self.columns[f].input_column())
            elif self.features:
                out.append({"name": f, "dtype": "float64"})
            else:
                raise ConfigError(
                    f"feature {f!r} is not a column of dataset {self.name!r}{did_you_mean(f, self.columns)}; "
                    f"its columns: {', '.join(self.columns)}"
                )
        return out


def parse_spec(text: str, origin: str = "<dataset spec>") -> DatasetSpec:
    """Check a dataset spec's YAML; a ``ConfigError`` names the key that is wrong and how to fix it."""
    return parse(DatasetSpec, text, origin, "a dataset spec is a mapping with name, source, columns")


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
