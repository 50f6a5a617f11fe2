"""The verdict on its own (no stack): it is decided on the trusted evidence (thresholds with their intervals,
production on the held-out rows neither model trained on with the gates' paired test, TFX's rule, drift)."""

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import Ridge

from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.demo.project import spec_variant
from kfrelease.errors import DataValidationError
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.training.core import fit, predict
from kfrelease.training.evidence import (
    EvidenceError,
    candidate_evidence,
    champion_evidence,
    read_predictions,
    split_frame,
    write_predictions,
)
from kfrelease.training.spec import parse_spec
from kfrelease.training.validate import drift_evidence, verdict

ROLLOUT = load_rollout_spec()


@pytest.fixture(scope="module")
def data():
    return diabetes_features(diabetes_frame())


@pytest.fixture(scope="module")
def trained(data):
    spec = parse_spec(spec_variant(1))
    split = split_frame(spec, data, "d1", "patient_id")
    model, _ = fit(spec, split.train)
    return spec, split, predict(model, split.held_out, spec.features)


def entry_of(spec, split, version="V1.1.0", **split_changes) -> dict:
    """Production's registry entry as the evidence reads it (its split rule, inputs, reference RMSE)."""
    return {
        "version": version,
        "input_schema": spec.input_schema(None),
        "target": spec.target,
        "split": {**split.rule.as_dict(), **split_changes},
        "metrics": {"rmse": 55.0},
    }


def evidence_of(spec, split, cand, champion=None, drift=None) -> dict:
    return {"metrics": candidate_evidence(split, spec.target, cand), "champion": champion, "drift": drift}


def test_first_model_passes_on_thresholds_alone_and_shows_their_intervals(trained):
    spec, split, cand = trained
    v = verdict(spec, evidence_of(spec, split, cand))
    assert v.passed and v.reasons == [] and v.champion is None
    assert [c["name"] for c in v.checks] == ["threshold:max_rmse", "threshold:min_r2", "champion", "blessing", "drift"]
    rmse = v.checks[0]["detail"]
    assert rmse.startswith("rmse ") and " [" in rmse and f"<= 70 on {len(split.held_out)} held-out rows" in rmse


def test_thresholds_fail_with_the_numbers_in_the_reason(trained):
    _, split, cand = trained
    strict = parse_spec(spec_variant(1, validation={"max_rmse": 10.0, "min_r2": 0.9}))
    v = verdict(strict, evidence_of(strict, split, cand))
    assert not v.passed and len(v.reasons) == 2
    assert v.reasons[0].startswith("rmse ") and "> 10 on" in v.reasons[0]


def test_no_threshold_and_no_champion_is_not_blessed_and_names_the_keys(trained):
    _, split, cand = trained
    bare = parse_spec(spec_variant(1, validation={"tolerance": 0.02}))
    v = verdict(bare, evidence_of(bare, split, cand))
    (reason,) = v.reasons
    assert not v.passed and reason.startswith("not blessed: the spec sets no absolute threshold")
    assert "validation.max_mse, validation.max_rmse, validation.max_mae, validation.min_r2" in reason
    other_tag = {"version": None, "comparable": False, "detail": "production V1.2.0 needs inputs ['glucose']"}
    v = verdict(bare, evidence_of(bare, split, cand, other_tag))
    assert not v.passed and "needs inputs ['glucose']" in v.reasons[0]


def test_worse_means_worse_beyond_noise_on_the_same_rows(trained, data):
    spec, split, cand = trained
    features = list(spec.features)
    better = Ridge(alpha=0.1).fit(split.train[features], split.train[spec.target])
    close = champion_evidence(
        None, spec, split, entry_of(spec, split), cand, predict(better, split.held_out, features), ROLLOUT
    )
    assert close["comparable"] and close["rows"] == len(split.held_out) and close["excluded"] == 0
    assert close["metrics"]["rmse"] < close["candidate_metrics"]["rmse"]  # slightly worse on these rows ...
    v = verdict(spec, evidence_of(spec, split, cand, close))
    assert v.passed and close["test"]["decision"] != "fail"  # ... but not beyond noise: it passes, with its interval
    check = next(c for c in v.checks if c["name"] == "champion")
    assert check["interval"][0] < 1 < check["interval"][1] and check["n"] == len(split.held_out)
    assert f"on {len(split.held_out)} held-out rows neither model trained on" in check["detail"]

    high = np.full(len(split.held_out), split.train[spec.target].quantile(0.9))  # ignores its inputs
    far = champion_evidence(None, spec, split, entry_of(spec, split), high, cand, ROLLOUT)
    v = verdict(spec, evidence_of(spec, split, high, far))
    assert not v.passed and far["test"]["decision"] == "fail"
    assert any(r.startswith("against production V1.1.0 on") and "confidence sequence" in r for r in v.reasons)


def test_production_is_scored_only_on_rows_it_did_not_train_on(trained):
    spec, split, cand = trained
    # production held out only 10 % of the rows (seed 42): the candidate's held-out rows it trained on are left out
    entry = entry_of(spec, split, test_size=0.1)
    ev = champion_evidence(None, spec, split, entry, cand, cand, ROLLOUT)
    assert 0 < ev["excluded"] < len(split.held_out) and ev["rows"] + ev["excluded"] == len(split.held_out)
    assert (
        f"({ev['excluded']} of the {len(split.held_out)} left out: production's split trained on them)" in ev["detail"]
    )
    # another seed: another hash; every candidate-held-out row production trained on is left out, and counted
    reseeded = champion_evidence(None, spec, split, entry_of(spec, split, seed=7), cand, cand, ROLLOUT)
    assert reseeded["rows"] < len(split.held_out) and reseeded["test"]["n"] <= reseeded["rows"]


def test_a_champion_needing_other_inputs_is_not_comparable(trained):
    spec, split, cand = trained
    note = {"version": None, "comparable": False, "detail": "production V1.1.0 needs inputs ['glucose'] ..."}
    v = verdict(spec, evidence_of(spec, split, cand, note))
    assert v.passed and "needs inputs" in next(c for c in v.checks if c["name"] == "champion")["detail"]
    assert "no input column" in drift_evidence(spec, split.train, pd.DataFrame({"glucose": [1.0]}), "V1.1.0")["detail"]


def test_drift_is_reported_and_unavailable_drift_does_not_fail(trained):
    spec, split, cand = trained
    shifted = split.train.assign(bmi=split.train["bmi"] + 15)
    drift = drift_evidence(spec, shifted, split.train, "V1.1.0")
    assert drift["available"] and "bmi" in drift["drifted"]
    assert verdict(spec, evidence_of(spec, split, cand, drift=drift)).passed  # reported only
    gated = parse_spec(spec_variant(1, validation={"max_drift_share": 0.0, "max_rmse": 70}))
    assert not verdict(gated, evidence_of(gated, split, cand, drift=drift)).passed
    missing = drift_evidence(spec, shifted, None, "V1.1.0")  # production's training rows could not be read
    assert missing == {"available": False, "detail": "production V1.1.0's training data is unavailable"}
    assert verdict(spec, evidence_of(spec, split, cand, drift=missing)).passed


def test_predictions_from_an_untrusted_step_are_one_finite_number_per_held_out_row(tmp_path):
    path = tmp_path / "p.parquet"
    write_predictions(path, [1.0, 2.0, 3.0])
    assert read_predictions(path, 3).tolist() == [1.0, 2.0, 3.0]
    pd.DataFrame({"_row": [2, 0, 1], "prediction": [3.0, 1.0, 2.0]}).to_parquet(path)  # any order, joined by row
    assert read_predictions(path, 3).tolist() == [1.0, 2.0, 3.0]
    for frame, message in (
        (pd.DataFrame({"_row": [0, 1], "prediction": [1.0, 2.0]}), "answered 2 predictions for 3 held-out rows"),
        (pd.DataFrame({"_row": [0, 1, 1], "prediction": [1.0, 2.0, 2.0]}), "not one for each"),
        (pd.DataFrame({"_row": [0, 1, 2], "prediction": [1.0, np.nan, 2.0]}), "NaN or infinity for 1"),
        (pd.DataFrame({"_row": [0, 1, 2], "prediction": [1.0] * 3, "rmse": [0.0] * 3}), "have columns"),
    ):
        frame.to_parquet(path)
        with pytest.raises(EvidenceError, match=message):
            read_predictions(path, 3)
    v = verdict(parse_spec(spec_variant(1)), {"invalid": "the candidate answered 2 predictions for 3 held-out rows"})
    assert not v.passed and v.reasons[0].startswith("the candidate's held-out predictions were refused")


def test_a_split_that_holds_out_nothing_is_refused(data):
    spec = parse_spec(spec_variant(1, split={"test_size": 0.001, "seed": 42}))
    with pytest.raises(DataValidationError, match=r"holds out 0 of \d+ rows; publish more rows or change split"):
        split_frame(spec, data.head(40), "d1", "patient_id")


def test_a_champion_that_ignores_its_inputs_is_beaten(trained):
    spec, split, cand = trained
    features = list(spec.features)
    weak = DummyRegressor().fit(split.train[features], split.train[spec.target])
    ev = champion_evidence(
        None, spec, split, entry_of(spec, split), cand, predict(weak, split.held_out, features), ROLLOUT
    )
    assert verdict(spec, evidence_of(spec, split, cand, ev)).passed and ev["test"]["ratio"] < 1


def test_the_metrics_do_not_depend_on_evidentlys_picture():
    """Errors of one constant size make Evidently's histogram fail; the metrics and a plain page remain."""
    from kfrelease.quality.evaluation import regression_report

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.random(48), "y": rng.random(48)})
    frame["p"] = frame["y"] + 0.1  # the same error up to rounding: "Too many bins for data range"
    metrics, page = regression_report(frame, "y", "p", ["x"])
    assert metrics["rmse"] == pytest.approx(0.1) and metrics["n"] == 48
    assert "error" in metrics["evidently"] and "could not be made" in page
