"""No step that runs as ``default-editor`` or as the release driver loads a pickle from a model artifact (issue 23,
item 3), read from the compiled pipeline IR as a cluster runs it: each task's identity is its pod label
(``kfrelease.io/step-identity``, selected by a Kubeflow PodDefault: ``kfrelease.k8s.render.platform``; no label is
the Profile's ``default-editor``), its code is the component source in its executor's command, its environment
the executor's ``env``. Only the untrusted identity (train, score-champion) may read a model file; every other
task carries ``KFRELEASE_REFUSE_PICKLE=1``, so the one place a model file is read
(``kfrelease.registry.artifact``) raises there, and the pipelines run with it locally (kfp.local applies the
executor's env: ``tests/training/test_trigger.py`` runs them end to end)."""

import re

import pytest
import yaml
from kfp import compiler, dsl

from kfrelease.k8s.render.platform import (
    KFP_SUBMITTER_STEP,
    RELEASE_DRIVER_SA,
    RELEASE_DRIVER_STEP,
    STEP_LABEL,
    UNTRUSTED,
    UNTRUSTED_SA,
)
from kfrelease.training.steps import UNTRUSTED_STEPS

DEFAULT_EDITOR = "default-editor"
#: the service account a label selects (kfrelease.k8s.render.platform.step_identities, kfp_api_access)
IDENTITY = {UNTRUSTED: UNTRUSTED_SA, RELEASE_DRIVER_STEP: RELEASE_DRIVER_SA, KFP_SUBMITTER_STEP: DEFAULT_EDITOR}
#: what reads a model file: the registry's flavour table, the serving loader, the untrusted steps' bodies
PICKLE_READS = re.compile(
    r"joblib\.load|pickle\.loads?\(|load_model_dir|\.load_model\(|score_step|train_step|flavour_named|flavour_of|"
    r"FLAVOURS\[|\.load\("
)


def compiled(pipeline, tmp_path) -> tuple[dict, dict]:
    path = tmp_path / f"{pipeline.name}.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def steps_that_may_unpickle(package: dict, platform: dict) -> dict[str, str]:
    """{executor: why} for every task not running as the untrusted identity whose component code reads a model
    file, or that does not refuse pickles (``KFRELEASE_REFUSE_PICKLE=1``)."""
    labels = {
        name: ((ex.get("podMetadata") or {}).get("labels") or {}).get(STEP_LABEL)
        for name, ex in (platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}))
        .get("executors", {})
        .items()
    }
    found = {}
    for name, ex in package["deploymentSpec"]["executors"].items():
        identity = IDENTITY.get(labels.get(name), DEFAULT_EDITOR)
        if identity == UNTRUSTED_SA or "container" not in ex:  # an importer runs no code of ours
            continue
        container = ex["container"]
        source = "\n".join(container.get("command", []))
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if PICKLE_READS.search(source):
            found[name] = f"runs as {identity} and its code reads a model file ({PICKLE_READS.search(source)[0]})"
        elif env.get("KFRELEASE_REFUSE_PICKLE") != "1":
            found[name] = f"runs as {identity} without KFRELEASE_REFUSE_PICKLE=1"
    return found


def identities(package: dict, platform: dict) -> dict[str, str]:
    plat = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name.removeprefix("exec-"): IDENTITY.get(
            ((plat.get(name, {}).get("podMetadata") or {}).get("labels") or {}).get(STEP_LABEL), DEFAULT_EDITOR
        )
        for name in package["deploymentSpec"]["executors"]
    }


def test_no_trusted_training_step_loads_a_model_file(tmp_path):
    from kfrelease.pipelines.training_pipeline import training_pipeline

    package, platform = compiled(training_pipeline, tmp_path)
    assert steps_that_may_unpickle(package, platform) == {}
    who = identities(package, platform)
    assert {s for s, sa in who.items() if sa == UNTRUSTED_SA} == set(UNTRUSTED_STEPS)
    assert who["evaluate"] == who["validate-model"] == who["register"] == who["split"] == DEFAULT_EDITOR


def model_inputs(package: dict) -> set[tuple[str, str, str, str]]:
    """(consumer task, its input, producer task, the producer's output) for every model artifact a task of the
    compiled pipeline takes from another (root DAG and the condition branches' DAGs alike)."""
    dags = [package["root"]["dag"], *(c["dag"] for c in package["components"].values() if "dag" in c)]
    models = {
        (name, key)
        for name, comp in package["components"].items()
        for key, spec in ((comp.get("inputDefinitions") or {}).get("artifacts") or {}).items()
        if spec["artifactType"]["schemaTitle"] == "system.Model"
    }
    out = set()
    for dag in dags:
        for task_name, task in dag.get("tasks", {}).items():
            component = task["componentRef"]["name"]
            for key, source in ((task.get("inputs") or {}).get("artifacts") or {}).items():
                produced = source.get("taskOutputArtifact")
                if produced and (component, key) in models:
                    out.add((task_name, key, produced["producerTask"], produced["outputArtifactKey"]))
    return out


def test_the_trusted_steps_take_the_candidate_as_onnx_and_the_pickle_only_as_bytes(tmp_path):
    """The model files a trusted training step is handed: ``evaluate`` the ONNX file and the booster file only (a
    protobuf graph, XGBoost's UBJSON or LightGBM's text: loading them runs no code; ``verify_flavour`` refuses a
    flavour whose loading does), ``register`` those files and the pickle, which it stores as bytes under ``KFRELEASE_REFUSE_PICKLE=1``. Production's model file goes
    only to the untrusted ``score-champion``."""
    from kfrelease.pipelines.training_pipeline import training_pipeline

    package, platform = compiled(training_pipeline, tmp_path)
    who = identities(package, platform)
    trusted = {
        (task, key, producer, output)
        for task, key, producer, output in model_inputs(package)
        if who[task] != UNTRUSTED_SA  # a task's executor is named after it (exec-<task>)
    }
    assert trusted == {
        ("evaluate", "onnx_model", "train", "onnx_model"),
        ("register", "onnx_model", "train", "onnx_model"),
        ("evaluate", "booster_model", "train", "booster_model"),
        ("register", "booster_model", "train", "booster_model"),
        ("register", "model", "train", "model"),
    }
    assert ("score-champion", "champion_model", "split", "champion_model") in model_inputs(package)
    env = {
        e["name"]: e.get("value")
        for e in package["deploymentSpec"]["executors"]["exec-register"]["container"].get("env", [])
    }
    assert env["KFRELEASE_REFUSE_PICKLE"] == "1"


def test_no_release_step_loads_a_model_file(tmp_path):
    from kfrelease.pipelines.release_pipeline import release_pipeline

    package, platform = compiled(release_pipeline, tmp_path)
    assert steps_that_may_unpickle(package, platform) == {}
    assert set(identities(package, platform).values()) == {RELEASE_DRIVER_SA}


def test_the_check_finds_a_trusted_step_that_loads_a_model_file(tmp_path):
    """The check above can fail: a pipeline whose default-editor step reads a model file is named, so is one
    that leaves out the refusal."""
    from kfp.dsl import Input, Model

    from kfrelease.components.base import kfrelease_component

    @kfrelease_component
    def peek(model: Input[Model]) -> str:
        from kfrelease.registry.artifact import load_model_dir

        return type(load_model_dir(model.path).estimator).__name__

    @kfrelease_component
    def make() -> str:
        return "x"

    @dsl.pipeline(name="bad")
    def bad():
        made = make()
        model = dsl.importer(artifact_uri="s3://models/artifacts/m/V1.1.0/", artifact_class=Model)
        peek(model=model.output).after(made)

    package, platform = compiled(bad, tmp_path)
    found = steps_that_may_unpickle(package, platform)
    assert found["exec-peek"].startswith("runs as default-editor and its code reads a model file (load_model_dir)")
    assert found["exec-make"] == "runs as default-editor without KFRELEASE_REFUSE_PICKLE=1"


def test_a_process_that_refuses_pickles_cannot_read_a_model_file(tmp_path, monkeypatch):
    from sklearn.linear_model import LinearRegression

    from kfrelease.registry.artifact import PickleRefused, flavour_named, load_model_dir

    flavour = flavour_named("sklearn")
    path = tmp_path / flavour.file
    flavour.dump(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]), path)
    (tmp_path / "model.json").write_text('{"name": "m", "input_schema": [{"name": "x", "dtype": "float64"}]}')
    assert load_model_dir(tmp_path).estimator.predict([[2.0]])[0] == pytest.approx(2.0)
    monkeypatch.setenv("KFRELEASE_REFUSE_PICKLE", "1")
    with pytest.raises(PickleRefused, match="this process runs no model code"):
        flavour.load(path)
    with pytest.raises(PickleRefused):
        load_model_dir(tmp_path)
