"""Model flavours (``kfrelease.registry.artifact``): a converted flavour is served only when its predictions on
the held-out rows agree with scikit-learn's within the declared tolerance, else the version keeps ``sklearn`` and
says why; the served flavour is the fastest verified one; an ONNX artifact is read without unpickling anything;
the input schema takes numbers and categories and refuses what it cannot serve."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, PolynomialFeatures, StandardScaler
from threadpoolctl import threadpool_limits

from kfrelease.errors import ConfigError
from kfrelease.registry.artifact import (
    ENTRY_FILE,
    FLAVOURS,
    agreement,
    artifact_record,
    choose_flavour,
    convert_flavours,
    flavour_named,
    flavour_of,
    input_columns,
    load_model_dir,
    model_format,
    model_formats,
    verify_flavour,
)
from tests.serving.serving_helpers import (
    DIAMONDS_CATEGORIES,
    DIAMONDS_FEATURES,
    DIAMONDS_NUMBERS,
    FEATURES,
    TARGET,
    curated_frame,
    diamonds_frame,
    diamonds_schema,
)

NUMBERS = input_columns([{"name": f, "dtype": "float64"} for f in FEATURES])


@pytest.fixture(scope="module")
def diabetes():
    frame = curated_frame()
    return frame.iloc[:350], frame.iloc[350:]


def _fit(model, train: pd.DataFrame, features=FEATURES, target=TARGET):
    with threadpool_limits(1):
        return model.fit(train[features], train[target])


@pytest.mark.parametrize(
    "model",
    [
        make_pipeline(StandardScaler(), Ridge()),
        make_pipeline(PolynomialFeatures(2), StandardScaler(), Ridge()),
        HistGradientBoostingRegressor(max_iter=50, random_state=0),
        RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0, n_jobs=1),
    ],
    ids=["ridge", "polynomial-ridge", "hist-gradient-boosting", "random-forest"],
)
def test_numeric_models_convert_to_a_verified_onnx_flavour_that_is_served(diabetes, model):
    train, held_out = diabetes
    fitted = _fit(model, train)
    converted = convert_flavours(fitted, NUMBERS, held_out[FEATURES])
    onnx = converted.checks["onnx"]
    assert onnx.verified, onnx.reason
    assert onnx.agreement <= 1e-4 and onnx.rows == len(held_out) and onnx.convert_seconds > 0
    assert set(converted.files) == {"sklearn", "onnx"}
    served, fallback = choose_flavour(converted.checks)
    assert served == "onnx" and fallback == ""  # faster than scikit-learn's per-call cost for every kind here
    assert converted.checks["onnx"].predict_us < converted.checks["sklearn"].predict_us


def test_a_categorical_pipeline_converts_with_one_input_per_feature(tmp_path):
    frame = diamonds_frame(2000)
    columns = input_columns(diamonds_schema(frame))
    model = make_pipeline(
        ColumnTransformer(
            [
                ("n", StandardScaler(), DIAMONDS_NUMBERS),
                ("c", OneHotEncoder(handle_unknown="ignore"), DIAMONDS_CATEGORIES),
            ]
        ),
        Ridge(),
    )
    fitted = _fit(model, frame.iloc[:1500], DIAMONDS_FEATURES, "price")
    converted = convert_flavours(fitted, columns, frame[DIAMONDS_FEATURES].iloc[1500:])
    assert converted.checks["onnx"].verified, converted.checks["onnx"].reason
    session = flavour_named("onnx").load(converted.files["onnx"])
    assert [i.name for i in session.get_inputs()] == DIAMONDS_FEATURES
    assert [i.type for i in session.get_inputs()][-3:] == ["tensor(string)"] * 3


def test_a_model_the_converter_does_not_know_keeps_sklearn_and_says_why(diabetes):
    train, held_out = diabetes
    model = _fit(make_pipeline(FunctionTransformer(np.log1p, validate=False), Ridge()), train.abs())
    converted = convert_flavours(model, NUMBERS, held_out[FEATURES].abs())
    assert not converted.checks["onnx"].verified
    assert "conversion failed" in converted.checks["onnx"].reason
    assert set(converted.files) == {"sklearn"}
    served, fallback = choose_flavour(converted.checks)
    assert served == "sklearn"
    assert fallback.startswith("kept sklearn: onnx: conversion failed")
    record = artifact_record(converted.checks, served, fallback)
    assert record["flavour"] == "sklearn" and record["fallback"] == fallback
    assert record["flavours"]["onnx"]["verified"] is False and record["files"] == ["model.joblib", ENTRY_FILE]


def test_a_conversion_outside_the_declared_tolerance_is_not_served(diabetes):
    """float32 arithmetic is not exact: a tolerance of 1e-12 refuses the conversion that 1e-4 accepts."""
    train, held_out = diabetes
    model = _fit(RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0, n_jobs=1), train)
    strict = convert_flavours(model, NUMBERS, held_out[FEATURES], tolerance=1e-12)
    check = strict.checks["onnx"]
    assert not check.verified and check.agreement > 1e-12
    assert "differ from scikit-learn's by up to" in check.reason and "tolerance 1e-12" in check.reason
    assert choose_flavour(strict.checks) == ("sklearn", f"kept sklearn: onnx: {check.reason}")
    # asked for by name (model.yaml `flavour: onnx`) it still is not served unverified
    assert choose_flavour(strict.checks, "onnx")[0] == "sklearn"
    assert choose_flavour(convert_flavours(model, NUMBERS, held_out[FEATURES]).checks, "onnx") == ("onnx", "")


def test_verification_refuses_the_reference_flavour_and_wrong_predictions(diabetes):
    train, held_out = diabetes
    model = _fit(make_pipeline(StandardScaler(), Ridge()), train)
    converted = convert_flavours(model, NUMBERS, held_out[FEATURES])
    rows = held_out[FEATURES].to_numpy("float64")
    with pytest.raises(ConfigError, match="runs code when loaded"):
        verify_flavour("sklearn", converted.files["sklearn"], NUMBERS, rows, model.predict(held_out[FEATURES]))
    forged = model.predict(held_out[FEATURES]) * 1.01  # predictions that are not the evaluated model's
    check = verify_flavour("onnx", converted.files["onnx"], NUMBERS, rows, forged)
    assert not check.verified and "differ" in check.reason
    garbage = verify_flavour("onnx", b"not a model", NUMBERS, rows, forged)
    assert not garbage.verified and garbage.reason.startswith("does not run")


def test_agreement_is_scale_free_and_refuses_non_finite_or_missing_predictions():
    ref = np.array([100.0, 200.0, 300.0])
    assert agreement(ref, ref) == 0.0
    assert agreement(ref * 1000 + 1e-3, ref * 1000) == pytest.approx(agreement(ref + 1e-6, ref), rel=1e-3)
    assert agreement([np.nan, 1, 2], ref) == float("inf")
    assert agreement(ref[:2], ref) == float("inf")


def test_an_onnx_artifact_is_served_without_reading_its_pickle(tmp_path, diabetes):
    train, held_out = diabetes
    model = _fit(HistGradientBoostingRegressor(max_iter=30, random_state=0), train)
    converted = convert_flavours(model, NUMBERS, held_out[FEATURES])
    served, _ = choose_flavour(converted.checks)
    (tmp_path / "model.onnx").write_bytes(converted.files["onnx"])
    (tmp_path / "model.joblib").write_bytes(b"a pickle that would fail if anything read it")
    schema = [c.as_dict() for c in NUMBERS]
    entry = {"name": "m", "version": "V1.1.0", "input_schema": schema}
    (tmp_path / ENTRY_FILE).write_text(json.dumps({**entry, "artifact": artifact_record(converted.checks, served, "")}))
    loaded = load_model_dir(tmp_path)
    assert loaded.flavour.name == "onnx" and not loaded.flavour.runs_code and model_format(loaded.entry) == "onnx"
    got = loaded.predict(held_out[FEATURES].to_numpy("float64"))
    assert agreement(got, model.predict(held_out[FEATURES])) <= 1e-4
    assert np.array_equal(loaded.predict(held_out), got)  # a typed frame gives the same answers
    with pytest.raises(ConfigError, match="could not be loaded as a sklearn model"):
        load_model_dir(tmp_path, flavour="sklearn")
    (tmp_path / ENTRY_FILE).write_text(json.dumps(entry))  # written before flavours: sklearn
    assert flavour_of(json.loads((tmp_path / ENTRY_FILE).read_text())).name == "sklearn"


def test_every_flavour_names_its_serving_format_and_framework():
    assert model_formats() == sorted({f.model_format for f in FLAVOURS.values()})
    assert {"sklearn", "onnx"} <= set(model_formats())
    assert FLAVOURS["sklearn"].runs_code and not FLAVOURS["onnx"].runs_code
    assert FLAVOURS["onnx"].framework == "onnx" and FLAVOURS["sklearn"].framework == "scikit-learn"


@pytest.mark.parametrize(
    "schema,fragment",
    [
        ([], "non-empty list"),
        ([{"name": "a", "dtype": "datetime64[ns]"}], "dtype 'datetime64[ns]' is not served"),
        ([{"name": "a"}, {"name": "a"}], "appears twice"),
        ([{"name": "a", "dtype": "category"}], "needs its known values"),
        ([{"name": "a", "dtype": "category", "categories": ["x", "x"]}], "repeat"),
        ([{"name": "a", "dtype": "category", "categories": [1, 2]}], "list of strings"),
        ([{"name": "a", "dtype": "category", "categories": ["x"], "unknown": "guess"}], "unknown must be"),
        ([{"name": "a", "dtype": "float64", "categories": ["x"]}], "only category and string"),
    ],
)
def test_input_schema_errors_name_the_feature_and_the_fix(schema, fragment):
    with pytest.raises(ConfigError, match=None) as exc:
        input_columns(schema, "model.json: input_schema")
    assert fragment in str(exc.value) and "model.json: input_schema" in str(exc.value)


def test_model_yaml_names_a_flavour_and_its_tolerance_outside_the_definition():
    from pathlib import Path

    from kfrelease.training.spec import parse_spec

    text = (Path(__file__).resolve().parents[2] / "examples" / "diabetes-model" / "model.yaml").read_text()
    default = parse_spec(text)
    assert (default.flavour, default.flavour_tolerance) == ("auto", 1e-4)
    chosen = parse_spec(text + "\nflavour: onnx\nflavour_tolerance: 0.001\n")
    assert (chosen.flavour, chosen.flavour_tolerance) == ("onnx", 0.001)
    assert chosen.fingerprint == default.fingerprint  # the served file is no new model definition
    with pytest.raises(
        ConfigError, match="flavour: 'tflite' is not a model flavour; use one of auto, sklearn, onnx, xgboost, lightgbm"
    ):
        parse_spec(text + "\nflavour: tflite\n")
    with pytest.raises(ConfigError, match="flavour_tolerance must be above 0"):
        parse_spec(text + "\nflavour_tolerance: 0\n")
