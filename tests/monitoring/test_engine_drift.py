"""Drift at scale: the engine's PSI of every column equals Evidently's PSI on the same rows."""

import numpy as np
import pandas as pd
import pytest

from kfrelease.lake.drift import psi_drift
from kfrelease.lake.engine import connect
from kfrelease.quality.drift import data_drift

FEATURES = ["age", "sex", "bmi", "tiny"]


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.normal(50 + shift, 10, n),
            "sex": rng.choice([1.0, 2.0], n),  # 2 distinct values: Evidently bins by value
            "bmi": rng.gamma(2.0, 3.0 + shift, n),
            "tiny": rng.normal(0, 1e-9, n),  # bins narrower than a float step near 0
        }
    )


@pytest.mark.parametrize("shift", [0.0, 4.0])
def test_psi_in_the_engine_equals_evidentlys_on_the_same_rows(shift):
    reference, current = _frame(442, 1), _frame(3000, 2, shift)
    con = connect()
    con.register("current", current)
    mine = psi_drift(con, "current", reference, FEATURES)
    theirs = data_drift(reference, current, FEATURES, max_rows=10**6, method="psi")
    for f in FEATURES:
        assert theirs.columns[f]["method"].lower().startswith("psi")
        assert mine.columns[f]["score"] == pytest.approx(theirs.columns[f]["score"], rel=1e-9, abs=1e-12), f
        assert mine.columns[f]["drifted"] == theirs.columns[f]["drifted"]
    assert mine.drifted == theirs.drifted and mine.share_drifted == theirs.share_drifted
    assert (mine.share_drifted > 0) == (shift > 0)
