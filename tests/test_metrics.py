"""The one definition of regression metrics equals scikit-learn's, and refuses what it cannot measure."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from kfrelease.errors import KfreleaseError
from kfrelease.quality.metrics import InsufficientData, metric_intervals, regression_metrics

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=2, max_size=200))
def test_equals_sklearn(pairs):
    truth, pred = np.array(pairs).T
    got = regression_metrics(truth, pred)
    mse = mean_squared_error(truth, pred)
    assert got["n"] == len(pairs)
    assert got["mse"] == pytest.approx(mse, rel=1e-9, abs=1e-9)
    assert got["rmse"] == pytest.approx(math.sqrt(mse), rel=1e-9, abs=1e-9)
    assert got["mae"] == pytest.approx(mean_absolute_error(truth, pred), rel=1e-9, abs=1e-9)
    if float(np.sum((truth - truth.mean()) ** 2)) > 0:  # sklearn forces 1.0/0.0 when it is undefined
        assert got["r2"] == pytest.approx(r2_score(truth, pred), rel=1e-9, abs=1e-9)
    else:
        assert got["r2"] is None  # undefined, never NaN


def test_too_few_rows_is_insufficient_not_nan():
    with pytest.raises(InsufficientData, match="3 labelled rows; at least 50"):
        regression_metrics([1, 2, 3], [1, 2, 3], min_samples=50)


def test_non_finite_and_mismatched_inputs_are_refused():
    with pytest.raises(KfreleaseError, match="NaN or infinity"):
        regression_metrics([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(KfreleaseError, match="truth has 2 values but predictions have 3"):
        regression_metrics([1.0, 2.0], [1.0, 2.0, 3.0])


def test_intervals_cover_the_true_metrics_at_their_level():
    """Coverage by simulation: 400 windows of 300 rows, true MSE 4 (errors N(0, 2)), true R² 1 - 4/100."""
    rng = np.random.default_rng(0)
    hits = {"mse": 0, "rmse": 0, "mae": 0, "r2": 0}
    true = {"mse": 4.0, "rmse": 2.0, "mae": 2.0 * math.sqrt(2 / math.pi), "r2": 1 - 4.0 / 100.0}
    for _ in range(400):
        truth = rng.normal(0, 10, 300)
        pred = truth + rng.normal(0, 2, 300)
        iv = metric_intervals(truth, pred)
        for k in hits:
            hits[k] += iv[k][0] <= true[k] <= iv[k][1]
    for k, h in hits.items():
        assert 0.91 <= h / 400 <= 0.985, (k, h / 400)


def test_intervals_contain_the_point_and_are_undefined_when_the_metric_is():
    truth, pred = np.arange(50.0), np.arange(50.0) + np.linspace(-3, 3, 50)
    iv, m = metric_intervals(truth, pred), regression_metrics(truth, pred)
    for k in ("mse", "rmse", "mae", "r2"):
        assert iv[k][0] <= m[k] <= iv[k][1]
    assert metric_intervals([1.0], [2.0])["mse"] is None
    assert metric_intervals([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])["r2"] is None  # constant truth
    with pytest.raises(KfreleaseError, match="level 1.5"):
        metric_intervals(truth, pred, level=1.5)
