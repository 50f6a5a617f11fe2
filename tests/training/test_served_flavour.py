"""The flavour a version is served in (issue 25, the training side): the untrusted train step converts the fitted
model (ONNX) and says what it measured; the trusted evaluate verifies the converted file on the real held-out rows
against the predictions it judged, loading it as ONNX (no code runs); register serves the fastest verified flavour
with the sklearn file beside it, or keeps sklearn and says why (``kfrelease models show``); the staged model server
answers from the served file."""

import json
import pickle

import numpy as np
import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.data.features import diabetes_features
from kfrelease.demo.data import diabetes_frame
from kfrelease.demo.project import spec_variant
from kfrelease.errors import KfreleaseError
from kfrelease.registry import ModelRegistry
from kfrelease.stack import supervisor
from kfrelease.storage import store_for
from kfrelease.training.evidence import read_predictions, split_frame
from kfrelease.training.spec import load_project_at_commit, parse_spec
from kfrelease.training.steps import register_step, run_inline, served_flavour, train_step, verified_flavours

SQUARED = """from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.linear_model import Ridge


def square(x):
    return x * x


def build_model():
    return make_pipeline(FunctionTransformer(square), Ridge())
"""

BOOSTED = {"class": "sklearn.ensemble.HistGradientBoostingRegressor", "params": {"max_iter": 60}}


def trained(tmp_path, spec):
    split = split_frame(spec, diabetes_features(diabetes_frame()), "d1", "patient_id")
    paths = {n: str(tmp_path / n) for n in ("train.parquet", "holdout.parquet", "m.joblib", "p.parquet", "m.onnx")}
    split.train[[*spec.features, spec.target]].to_parquet(paths["train.parquet"], index=False)
    split.features_of_held_out(spec.features).to_parquet(paths["holdout.parquet"], index=False)
    out = train_step(
        spec, paths["train.parquet"], paths["holdout.parquet"], paths["m.joblib"], paths["p.parquet"], paths["m.onnx"]
    )
    cand = read_predictions(paths["p.parquet"], len(split.held_out))
    return split, paths, out, cand


@pytest.mark.parametrize("estimator", [None, BOOSTED], ids=["ridge", "hist-gradient-boosting"])
def test_a_model_that_converts_is_served_as_verified_onnx(tmp_path, monkeypatch, estimator):
    spec = parse_spec(spec_variant(1, **({"estimator": estimator} if estimator else {})))
    split, paths, out, cand = trained(tmp_path, spec)
    assert out["flavours"]["onnx"]["verified"] and out["flavours"]["sklearn"]["predict_us"] > 0
    monkeypatch.setenv("KFRELEASE_REFUSE_PICKLE", "1")  # as in the trusted evaluate: ONNX loads without a pickle
    checks, digest = verified_flavours(spec, split, cand, paths["m.onnx"], out["flavours"])
    assert checks["onnx"]["verified"] and checks["onnx"]["agreement"] <= 1e-4 and digest.startswith("sha256:")
    assert checks["onnx"]["rows"] == len(split.held_out) and checks["onnx"]["predict_us"] > 0
    served, artifact = served_flavour(spec, {"flavours": checks})
    assert served == "onnx" and artifact["model_format"] == "onnx" and artifact["fallback"] is None
    assert artifact["files"] == ["model.joblib", "model.onnx", "model.json"]
    # a file that is not what the judged predictions came from (they answer something else) is not verified here
    forged = cand * 1.01
    checks, digest = verified_flavours(spec, split, forged, paths["m.onnx"], out["flavours"])
    assert not checks["onnx"]["verified"] and digest == "" and "differ" in checks["onnx"]["reason"]
    assert served_flavour(spec, {"flavours": checks})[0] == "sklearn"


def test_a_model_that_does_not_convert_keeps_sklearn_and_says_why(tmp_path):
    spec = parse_spec(spec_variant(2), code={"model.py": SQUARED})
    split, paths, out, cand = trained(tmp_path, spec)
    assert (tmp_path / "m.onnx").read_bytes() == b""
    checks, digest = verified_flavours(spec, split, cand, paths["m.onnx"], out["flavours"])
    served, artifact = served_flavour(spec, {"flavours": checks})
    assert served == "sklearn" and digest == ""
    assert artifact["fallback"].startswith("kept sklearn: onnx: conversion failed")
    assert artifact["files"] == ["model.joblib", "model.json"] and artifact["model_format"] == "sklearn"


def test_a_conversion_that_is_not_exact_enough_keeps_sklearn_and_says_by_how_much(tmp_path):
    spec = parse_spec(spec_variant(1, flavour_tolerance=1e-12))  # float32 ONNX agrees to ~1e-7, not 1e-12
    split, paths, out, cand = trained(tmp_path, spec)
    assert (tmp_path / "m.onnx").read_bytes() == b""  # the train step writes no file it could not verify
    checks, _ = verified_flavours(spec, split, cand, paths["m.onnx"], out["flavours"])
    served, artifact = served_flavour(spec, {"flavours": checks})
    assert served == "sklearn" and not artifact["flavours"]["onnx"]["verified"]
    assert artifact["fallback"].startswith("kept sklearn: onnx: its predictions differ from scikit-learn's by up to")
    assert artifact["fallback"].endswith("(tolerance 1e-12)")


@pytest.mark.parametrize("wanted", ["sklearn"])
def test_a_spec_that_asks_for_sklearn_converts_nothing(tmp_path, wanted):
    spec = parse_spec(spec_variant(1, flavour=wanted))
    _, _, out, _ = trained(tmp_path, spec)
    assert set(out["flavours"]) == {"sklearn"} and (tmp_path / "m.onnx").read_bytes() == b""


class _Marker:
    """Unpickled, it writes a file: what a crafted model file would do to the process that reads it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_nothing_the_train_step_writes_or_says_marks_a_file_verified_or_runs_in_evaluate(tmp_path, monkeypatch):
    """The untrusted train step's claims are claims: a pickle handed over as the ONNX file is not unpickled
    (ONNX Runtime refuses the bytes), a claim of ``verified`` for a file it did not write is not believed, a
    flavour name the registry does not know is dropped; the version keeps sklearn and says why."""
    spec = parse_spec(spec_variant(1))
    split, paths, out, cand = trained(tmp_path, spec)
    marker = tmp_path / "ran"
    (tmp_path / "m.onnx").write_bytes(pickle.dumps(_Marker(str(marker))))
    monkeypatch.setenv("KFRELEASE_REFUSE_PICKLE", "1")
    checks, digest = verified_flavours(spec, split, cand, paths["m.onnx"], out["flavours"])
    assert not marker.exists() and digest == "" and checks["onnx"]["reason"].startswith("does not run:")
    assert served_flavour(spec, {"flavours": checks})[1]["fallback"].startswith("kept sklearn: onnx: does not run")
    pickle.loads((tmp_path / "m.onnx").read_bytes())  # the bytes are live: whatever unpickled them ran them
    assert marker.exists()

    claims = {"onnx": {"verified": True, "predict_us": 0.01, "agreement": 0.0}, "tflite": {"verified": True}}
    (tmp_path / "m.onnx").write_bytes(b"")
    checks, digest = verified_flavours(spec, split, cand, paths["m.onnx"], claims)
    assert set(checks) == {"sklearn", "onnx"} and not checks["onnx"]["verified"] and digest == ""
    assert checks["onnx"]["reason"] == "the train step wrote no file"
    assert served_flavour(spec, {"flavours": checks})[0] == "sklearn"


# --- end to end on the embedded stack: registration, `models show`, the staged model server -------------------


@pytest.mark.integration
def test_a_ridge_registers_as_onnx_and_the_staged_model_server_answers_from_model_onnx(project, stack, tmp_path):
    from kfrelease.k8s.render.inference import render_inference_services, render_serving_runtime
    from kfrelease.release.pipeline_steps import version_sources
    from kfrelease.rollout.spec import load_rollout_spec
    from kfrelease.rollout.traffic import TrafficState
    from kfrelease.stack.model_files import local_model_dir
    from tests.serving.serving_helpers import start_predictor
    from tests.twin import runtime_supports_model

    repo, shas, name = project
    spec, sha = load_project_at_commit(repo, shas[0])  # the demo's Ridge
    run = run_inline(spec, sha, containerize=False)
    assert run.stage == "staging"
    registry = ModelRegistry(store_for("pipeline"))
    mv = registry.get(name, run.version)
    artifact = mv.entry["artifact"]
    assert artifact["flavour"] == "onnx" and artifact["model_format"] == "onnx" and artifact["fallback"] is None
    assert (
        artifact["flavours"]["onnx"]["verified"]
        and artifact["flavours"]["onnx"]["rows"] == run.evidence["held_out_rows"]
    )
    assert artifact["files"] == ["model.joblib", "model.onnx", "model.json"]
    prefix = registry.artifact_prefix(name, run.version)
    for file in artifact["files"]:  # the sklearn file stays beside the served one in the registry
        assert store_for("pipeline").stat("models", prefix + file) is not None, file

    # on a cluster its InferenceService declares modelFormat onnx, which the project's ServingRuntime serves
    uris, formats = version_sources(store_for("pipeline"), name)
    assert formats == {run.version: "onnx"} and uris[run.version] == f"s3://models/{prefix}"
    rollout = load_rollout_spec(model=name)
    (isvc,) = render_inference_services(rollout, TrafficState(primary=run.version), uris, model_formats=formats)
    assert isvc["spec"]["predictor"]["model"]["modelFormat"] == {"name": "onnx"}
    assert runtime_supports_model(isvc["spec"]["predictor"]["model"], render_serving_runtime(rollout, "img:1"))

    # what a model server of this version gets (the ModelCar's /models): the ONNX file, no pickle at all
    model_dir = local_model_dir(stack, name, run.version)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.onnx"]
    home = Settings(home=tmp_path / "predictor-home")
    url = start_predictor(home, model_dir, name=name, stage="staging")
    try:
        rows = diabetes_features(diabetes_frame()).iloc[:40]
        answered = httpcalls.post(
            f"{url}/v1/models/{name}:predict",
            json={"instances": rows[list(spec.features)].to_numpy().tolist()},
            timeout=30,
        )
        assert answered.status_code == 200, answered.text
        got = np.asarray(answered.json()["predictions"])
        want = registry.load_model(name, run.version).predict(rows[list(spec.features)])  # the estimator
        spread = float(np.std(want))
        assert np.max(np.abs(got - want) / (np.abs(want) + spread)) <= spec.flavour_tolerance
        assert not np.array_equal(got, want)  # float32 ONNX, not the pickle: close, not bit-identical
    finally:
        supervisor.down(home)


@pytest.mark.integration
def test_models_show_says_which_flavour_serves_and_why_sklearn_was_kept(project, stack, run_cli):
    repo, shas, name = project
    first, sha = load_project_at_commit(repo, shas[0])
    squared = parse_spec(spec_variant(2, first.text), code={"model.py": SQUARED})
    strict = parse_spec(spec_variant(1, first.text, tag=2, flavour_tolerance=1e-12))
    shown = {}
    for spec in (squared, strict):
        run = run_inline(spec, sha, containerize=False)
        out = run_cli("models", "show", name, run.version, check=True).stdout
        shown[spec.tag] = json.loads(out)["artifact"]
    assert shown[1]["flavour"] == "sklearn" and shown[1]["model_format"] == "sklearn"
    assert shown[1]["fallback"].startswith("kept sklearn: onnx: conversion failed: skl2onnx could not convert")
    assert shown[2]["flavour"] == "sklearn" and shown[2]["files"] == ["model.joblib", "model.json"]
    assert shown[2]["fallback"].startswith("kept sklearn: onnx: its predictions differ from scikit-learn's by up to")


@pytest.mark.integration
def test_register_refuses_an_onnx_file_that_is_not_the_one_evaluate_verified(project, stack, tmp_path):
    repo, shas, name = project
    spec, sha = load_project_at_commit(repo, shas[0])
    split, paths, out, cand = trained(tmp_path, spec)
    checks, digest = verified_flavours(spec, split, cand, paths["m.onnx"], out["flavours"])
    evidence = {"flavours": checks, "onnx_digest": digest, "metrics": {}, "held_out_rows": len(cand)}
    (tmp_path / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes() + b"\n")  # changed after evaluate
    with pytest.raises(KfreleaseError, match="is not the file evaluate verified"):
        register_step(spec, sha, "d1", "", paths["m.joblib"], evidence, {"passed": False}, onnx_path=paths["m.onnx"])
    assert ModelRegistry(store_for("pipeline")).list(name) == []  # nothing was registered


@pytest.mark.integration
def test_a_version_served_from_a_pickle_is_staged_on_one_machine_and_never_for_a_cluster(project, stack, monkeypatch):
    """One rule, both targets (``artifact.model_servers_refuse_pickles``): a pickle serves only where the model's own
    code runs anyway with every right a model server has. A cluster's predictors refuse pickles (the predictor's
    identity writes the gates' evidence: review eks4 R2), so deploy-staging stages no version served from one, and
    a release refuses it before moving traffic; on one machine the merge's ``train`` already runs that code as the
    one user, so the pickle serves there as the fallback."""
    from kfrelease.errors import ConfigError
    from kfrelease.release.controller import ReleaseController, ReleaseError
    from kfrelease.rollout.spec import load_rollout_spec
    from kfrelease.training.steps import deploy_staging_step

    repo, shas, name = project
    first, sha = load_project_at_commit(repo, shas[0])
    squared = parse_spec(spec_variant(2, first.text), code={"model.py": SQUARED})  # does not convert: sklearn
    registry = ModelRegistry(store_for("pipeline"))

    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")  # deploy-staging's PodDefault (kfrelease-kfp-api) sets it
    with pytest.raises(ConfigError) as refused:
        run_inline(squared, sha, containerize=False)
    message = str(refused.value)
    assert "is served from a pickle (sklearn: kept sklearn: onnx: conversion failed" in message, message
    assert "a cluster's model servers refuse pickles" in message and "it is not staged" in message
    assert "make the model convertible" in message and "\n" not in message
    (pickled,) = registry.list(name)
    assert pickled.passed and pickled.stage is None  # registered, validated, not staged
    onnx = run_inline(parse_spec(spec_variant(1, first.text, tag=2)), sha, containerize=False)
    assert onnx.stage == "staging"  # a version served from ONNX is staged for a cluster

    monkeypatch.delenv("KFRELEASE_TARGET")
    assert deploy_staging_step(name, pickled.version, "r") == "staging"  # one machine: the pickle is the fallback
    controller = ReleaseController(
        Settings.from_env(), load_rollout_spec(model=name), None, signals=lambda v: None, production_scorer=None
    )
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")  # a release step on a cluster, of a version staged earlier
    with pytest.raises(ReleaseError, match=r"served from a pickle .*so no traffic was moved: make the model"):
        controller.preflight(pickled.version)
