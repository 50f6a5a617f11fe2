"""The validation verdict on its own (no stack): thresholds, the champion on the same rows, drift."""

import sys

import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge

from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.demo.project import spec_variant
from kfrelease.metrics import regression_metrics
from kfrelease.training.core import predict, train
from kfrelease.training.spec import parse_spec
from kfrelease.training.validate import Champion, validate


@pytest.fixture(scope="module")
def trained():
    spec = parse_spec(spec_variant(1))
    result = train(spec, diabetes_features(diabetes_frame()))
    metrics = regression_metrics(result.test[spec.target], predict(result.model, result.test, spec.features))
    return spec, result, metrics


def champion_of(model, result, spec, with_training_data=False) -> Champion:
    """A production model fitted on the same training rows (its training data only when drift is tested)."""
    features = list(spec.features)
    return Champion(
        "V1.1.0",
        model.fit(result.train[features], result.train[spec.target]),
        features,
        result.train if with_training_data else None,
    )


def test_first_model_passes_on_thresholds_alone(trained):
    spec, result, metrics = trained
    verdict = validate(spec, metrics, result.test, result.train, None)
    assert verdict.passed and verdict.reasons == [] and verdict.champion is None
    assert [c["name"] for c in verdict.checks] == ["threshold:max_rmse", "threshold:min_r2", "champion", "drift"]


def test_thresholds_fail_with_the_numbers_in_the_reason(trained):
    _, result, metrics = trained
    strict = parse_spec(spec_variant(1, validation={"max_rmse": 10.0, "min_r2": 0.9}))
    verdict = validate(strict, metrics, result.test, result.train, None)
    assert not verdict.passed and len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("rmse ") and "> 10" in verdict.reasons[0]


def test_worse_than_the_champion_on_the_same_rows_fails_beyond_the_tolerance(trained):
    spec, result, metrics = trained
    better = champion_of(Ridge(alpha=0.1), result, spec)
    verdict = validate(spec, metrics, result.test, result.train, better)
    champ_rmse = verdict.champion["metrics"]["rmse"]
    assert champ_rmse < metrics["rmse"] <= champ_rmse * 1.02  # slightly worse, within the 2 % tolerance
    assert verdict.passed
    no_tolerance = parse_spec(spec_variant(1, validation={"tolerance": 0.0}))
    failed = validate(no_tolerance, metrics, result.test, result.train, better)
    assert not failed.passed and "production V1.1.0 rmse" in failed.reasons[0]
    weak = champion_of(DummyRegressor(), result, spec)
    assert validate(no_tolerance, metrics, result.test, result.train, weak).passed


def test_a_champion_needing_other_inputs_is_not_comparable(trained):
    spec, result, metrics = trained
    other = Champion(
        "V1.1.0",
        DummyRegressor().fit(pd.DataFrame({"glucose": [1.0, 2.0]}), [1.0, 2.0]),
        ["glucose"],
        pd.DataFrame({"glucose": [1.0, 2.0]}),
    )
    verdict = validate(spec, metrics, result.test, result.train, other)
    assert verdict.passed and "not comparable" in verdict.checks[2]["detail"]
    assert "no input column" in verdict.checks[3]["detail"]


def test_drift_is_reported_and_unavailable_drift_does_not_fail(trained, monkeypatch):
    spec, result, metrics = trained
    champ = champion_of(Ridge(alpha=10.0), result, spec, with_training_data=True)
    shifted = result.train.assign(bmi=result.train["bmi"] + 15)
    verdict = validate(spec, metrics, result.test, shifted, champ)
    assert verdict.drift["available"] and "bmi" in verdict.drift["drifted"] and verdict.passed  # reported only
    gated = parse_spec(spec_variant(1, validation={"max_drift_share": 0.0}))
    assert not validate(gated, metrics, result.test, shifted, champ).passed
    monkeypatch.setitem(sys.modules, "kfrelease.drift", None)  # the monitoring part's module missing
    missing = validate(spec, metrics, result.test, shifted, champ)
    assert missing.passed and missing.drift == {"available": False} and "unavailable" in missing.checks[3]["detail"]
