"""The held-out split: a stable hash of each row's key, so a held-out row stays held out as the data grows.

A row is held out when ``hash(seed, key) / 2^64 < test_size``. The key is the dataset's id column (declared
by the data engineers, ``id_column``) or, when it has none, the row's values (the model's features and target).
The decision for a row depends on nothing but its key, the seed and the share: a grown dataset's held-out set
therefore contains every held-out row of an older version of it (the rows still there), and a version trained
with another split rule can be asked which of today's rows it trained on (``trained_on``), without its data.

Entries registered before this rule (``split`` without ``method``: scikit-learn's seeded shuffle of the whole
version) are still understood: their training rows are rebuilt from their own dataset version.

The hash is ours (splitmix64 over the values' bits; BLAKE2b for text ids), not pandas' or Python's, so no
upgrade of a library moves a row from one side to the other.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from kfrelease.errors import DataValidationError

HASH = "hash"
#: the split of entries registered before the hash split (``sklearn.model_selection.train_test_split``)
SEEDED_SHUFFLE = "seeded-shuffle"
#: the column of the untrusted step's inputs and outputs that names a held-out row (its position)
ROW = "_row"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea & Flood 2014), element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _salt(seed: int) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(f"kfrelease-split:{seed}".encode(), digest_size=8).digest(), "big"))


def _column_bits(values: pd.Series) -> np.ndarray:
    """uint64 words that stand for one column's values: integers as themselves, integral floats as the same
    integers (an id read as 7.0 is the id 7), other floats by their bits (-0.0 as 0.0), text by BLAKE2b."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype="int64").view("uint64")
    if pd.api.types.is_float_dtype(values):
        v = values.to_numpy(dtype="float64") + 0.0
        if np.isfinite(v).all() and (v == np.round(v)).all() and (np.abs(v) < 2**62).all():
            return v.astype("int64").view("uint64")
        return v.view("uint64")
    digest = [int.from_bytes(hashlib.blake2b(str(x).encode(), digest_size=8).digest(), "big") for x in values]
    return np.asarray(digest, dtype="uint64")


@dataclass(frozen=True)
class SplitRule:
    """How a version's rows were split: what ``split`` records in its registry entry."""

    test_size: float
    seed: int
    method: str = HASH
    id_column: str | None = None  # the key: this column, or (None) the row's values in ``columns``
    columns: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict:
        d = asdict(self)
        d["columns"] = list(self.columns)
        return d

    @classmethod
    def from_entry(cls, split: dict | None, columns) -> SplitRule:
        """The rule an entry's ``split`` records; one without ``method`` is the old seeded shuffle."""
        split = split or {}
        return cls(
            float(split.get("test_size", 0.2)),
            int(split.get("seed", 42)),
            split.get("method") or SEEDED_SHUFFLE,
            split.get("id_column"),
            tuple(split.get("columns") or columns),
        )

    def key_columns(self) -> list[str]:
        return [self.id_column] if self.id_column else list(self.columns)

    def describe(self) -> str:
        if self.method == SEEDED_SHUFFLE:
            return f"seeded shuffle (test_size {self.test_size:g}, seed {self.seed})"
        key = f"id column {self.id_column!r}" if self.id_column else "row values"
        return f"stable hash of the {key} (test_size {self.test_size:g}, seed {self.seed})"

    # the split --------------------------------------------------------------------------------------------
    def row_hashes(self, frame: pd.DataFrame) -> np.ndarray:
        """One uint64 per row of ``frame``, from its key columns and the seed."""
        missing = [c for c in self.key_columns() if c not in frame.columns]
        if missing:
            raise DataValidationError(f"the split key needs column(s) {missing}; the data has {list(frame.columns)}")
        h = np.full(len(frame), _salt(self.seed), dtype="uint64")
        with np.errstate(over="ignore"):
            for i, column in enumerate(self.key_columns()):
                h = _mix(h ^ _mix(_column_bits(frame[column]) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(i + 1)))
        return h

    def held_out(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the held-out rows of ``frame`` (hash rule only; see ``trained_on`` for any rule)."""
        if self.method != HASH:
            raise DataValidationError(f"split method {self.method!r} is not a stable hash; it cannot be re-derived")
        u = (self.row_hashes(frame) >> np.uint64(11)).astype("float64") * 2.0**-53  # in [0, 1)
        return u < self.test_size

    def split(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows, held-out rows), each in the frame's order with a fresh index."""
        mask = self.held_out(frame)
        return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)

    def trained_on(self, frame: pd.DataFrame, own_data: pd.DataFrame | None = None) -> np.ndarray:
        """Mask of the rows of ``frame`` that a model split by this rule may have trained on.

        Hash rule: every row its hash puts on the training side (whether or not the row existed when it
        trained: the safe side). Seeded shuffle: the rows of ``frame`` equal (by key) to a training row of
        ``own_data``, the version it was trained on (required)."""
        if self.method == HASH:
            return ~self.held_out(frame)
        if own_data is None:
            raise DataValidationError("a seeded-shuffle split needs its own dataset version to say what it trained on")
        from sklearn.model_selection import train_test_split  # heavy: sklearn

        train, _ = train_test_split(own_data, test_size=self.test_size, random_state=self.seed, shuffle=True)
        keyed = SplitRule(self.test_size, self.seed, HASH, self.id_column, self.columns)
        return np.isin(keyed.row_hashes(frame), keyed.row_hashes(train))


def rule_for(spec, id_column: str | None) -> SplitRule:
    """The hash rule of a model spec on a dataset whose id column is ``id_column`` (None: the row's values)."""
    return SplitRule(spec.split.test_size, spec.split.seed, HASH, id_column or None, (*spec.features, spec.target))
