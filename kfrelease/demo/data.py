"""Demo data: scikit-learn's bundled diabetes dataset (442 rows, offline), split into batches.

Batches arrive one by one in the ``raw`` bucket (``raw/diabetes/batch-N.csv``) so that a later batch
is "new data". Rows are shuffled with a fixed seed; ``holdout`` rows never enter ``raw`` and serve as
live traffic with delayed ground truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes

from kfrelease.data.spec import load_spec
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


def batch_key(n: int, dataset: str = "diabetes") -> str:
    return f"{load_spec(dataset).source_prefix}batch-{n}.csv"


def upload_batch(store: ObjectStore, n: int) -> str:
    """Put batch ``n`` (1-based) into ``raw`` as CSV; returns its key. Idempotent."""
    key = batch_key(n)
    data = demo_batches()[n - 1].to_csv(index=False).encode()
    store.put_bytes("raw", key, data, content_type="text/csv")
    return key
