"""Gradient-boosted model projects on ggplot2's diamonds (``cut``, ``color``, ``clarity`` as category columns),
trained, registered and served on the real embedded stack (issue 25, native boosters):

- an ``XGBRegressor`` behind a one-hot ``ColumnTransformer`` converts to ONNX through onnxmltools, is verified on
  the held-out rows by the trusted evaluate and served as ONNX; its booster file cannot hold the encoder, and
  ``kfrelease models show`` says so beside why ONNX serves;
- a bare ``LGBMRegressor`` / ``XGBRegressor`` on the numbers, whose ONNX does not verify (``flavour_tolerance``
  1e-12: float32 ONNX is ~1e-7 away), keeps its own model file (LightGBM's text, XGBoost's UBJSON): registered,
  shipped to the model server without any pickle, answering exactly what the estimator answers, and ``models
  show`` says which flavour serves and why ONNX does not."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import yaml

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.demo.data import DIAMONDS_CATEGORIES, DIAMONDS_FEATURES, DIAMONDS_NUMBERS, holdout_of
from kfrelease.demo.project import DIAMONDS_EXAMPLE
from kfrelease.registry import ModelRegistry
from kfrelease.stack import supervisor
from kfrelease.stack.model_files import local_model_dir
from kfrelease.storage import store_for
from kfrelease.training.spec import parse_spec
from kfrelease.training.steps import run_inline
from tests.serving.serving_helpers import start_predictor
from tests.training.conftest import PrivateDataset

pytestmark = pytest.mark.integration

XGBOOST_ONE_HOT = """from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from xgboost import XGBRegressor

NUMBERS = ["carat", "depth", "table", "x", "y", "z"]
CATEGORIES = ["cut", "color", "clarity"]


def build_model():
    encode = ColumnTransformer(
        [("n", "passthrough", NUMBERS), ("c", OneHotEncoder(handle_unknown="ignore"), CATEGORIES)]
    )
    return make_pipeline(encode, XGBRegressor(n_estimators=80, max_depth=5, n_jobs=1, random_state=0))
"""

BARE = {
    "lightgbm": """from lightgbm import LGBMRegressor


def build_model():
    return LGBMRegressor(n_estimators=80, n_jobs=1, random_state=0, verbose=-1)
""",
    "xgboost": """from xgboost import XGBRegressor


def build_model():
    return XGBRegressor(n_estimators=80, max_depth=5, n_jobs=1, random_state=0)
""",
}


@pytest.fixture
def diamonds(stack) -> str:
    """ggplot2's diamonds published under a private name (the dataset spec's category columns)."""
    name = f"diamonds-{uuid.uuid4().hex[:8]}"
    PrivateDataset(name, "diamonds").add_batch(1)
    return name


def model_spec(dataset: str, code: str, **keys):
    doc = yaml.safe_load((DIAMONDS_EXAMPLE / "model.yaml").read_text())
    doc.update(name=f"diamond-price-{uuid.uuid4().hex[:6]}", dataset=dataset, **keys)
    return parse_spec(yaml.safe_dump(doc), code={"model.py": code})


def served(stack, tmp_path, spec, version, rows: list) -> list[float]:
    """What a model server of ``version`` (its ModelCar's files) answers for v1 ``rows``."""
    model_dir = local_model_dir(stack, spec.name, version)
    home = Settings(home=tmp_path / "predictor-home")
    url = start_predictor(home, model_dir, name=spec.name, stage="staging")
    try:
        answered = httpcalls.post(f"{url}/v1/models/{spec.name}:predict", json={"instances": rows}, timeout=30)
        assert answered.status_code == 200, answered.text
        return answered.json()["predictions"]
    finally:
        supervisor.down(home)


def test_an_xgboost_pipeline_with_categories_is_served_as_onnx_and_says_why(diamonds, stack, tmp_path, run_cli):
    spec = model_spec(diamonds, XGBOOST_ONE_HOT)
    run = run_inline(spec, "a" * 40, containerize=False)
    assert run.verdict["passed"], run.verdict
    show = json.loads(run_cli("models", "show", spec.name, run.version, check=True).stdout)
    artifact = show["artifact"]
    assert artifact["flavour"] == "onnx" and artifact["model_format"] == "onnx"
    assert artifact["flavours"]["onnx"]["verified"] and artifact["flavours"]["onnx"]["agreement"] <= 1e-4
    assert artifact["served_because"].startswith("the fastest verified flavour (onnx ")
    assert artifact["fallback"].startswith(
        "kept onnx: xgboost: conversion failed: the XGBRegressor is the last step of a Pipeline (columntransformer"
    )
    assert sorted(p.name for p in local_model_dir(stack, spec.name, run.version).iterdir()) == [
        "model.json",
        "model.onnx",
    ]
    frame = holdout_of("diamonds").iloc[:30]
    rows = [
        {f: (r[f] if f in DIAMONDS_CATEGORIES else float(r[f])) for f in DIAMONDS_FEATURES} for _, r in frame.iterrows()
    ]
    got = np.asarray(served(stack, tmp_path, spec, run.version, rows))
    want = ModelRegistry(store_for("pipeline")).load_model(spec.name, run.version).predict(frame[DIAMONDS_FEATURES])
    assert np.max(np.abs(got - want) / (np.abs(want) + np.std(want))) <= spec.flavour_tolerance


@pytest.mark.parametrize("booster", sorted(BARE))
def test_a_bare_booster_whose_onnx_does_not_verify_serves_its_own_model_file(
    diamonds, stack, tmp_path, run_cli, booster
):
    spec = model_spec(diamonds, BARE[booster], features=DIAMONDS_NUMBERS, flavour_tolerance=1e-12)
    run = run_inline(spec, "b" * 40, containerize=False)
    assert run.verdict["passed"], run.verdict
    show = json.loads(run_cli("models", "show", spec.name, run.version, check=True).stdout)
    artifact = show["artifact"]
    file = {"lightgbm": "model.txt", "xgboost": "model.ubj"}[booster]
    assert artifact["flavour"] == booster and artifact["model_format"] == booster
    assert artifact["flavours"][booster]["verified"] and artifact["flavours"][booster]["agreement"] == 0.0
    assert not artifact["flavours"]["onnx"]["verified"]
    assert artifact["fallback"].startswith(f"kept {booster}: onnx: its predictions differ from scikit-learn's by up to")
    assert artifact["served_because"].startswith(f"the fastest verified flavour ({booster} ")
    assert artifact["files"] == sorted(["model.joblib", file]) + ["model.json"]
    # the model server gets the booster file and the entry, no pickle
    assert sorted(p.name for p in local_model_dir(stack, spec.name, run.version).iterdir()) == ["model.json", file]
    frame = holdout_of("diamonds").iloc[:30]
    got = served(stack, tmp_path, spec, run.version, frame[DIAMONDS_NUMBERS].to_numpy().tolist())
    want = ModelRegistry(store_for("pipeline")).load_model(spec.name, run.version).predict(frame[DIAMONDS_NUMBERS])
    assert np.array_equal(np.asarray(got), want)  # the estimator's own trees, not a float32 copy
