"""`kfrelease compile` writes the training pipeline as a KFP package and every component as reusable YAML."""

import pytest
import yaml
from kfp import components

from kfrelease.training.resources import MODEL_STEPS


def test_compile_writes_pipelines_and_component_files(run_cli, tmp_path):
    out = tmp_path / "build"
    result = run_cli("compile", "--out", str(out), "training", "data", check=True)
    package = next(yaml.safe_load_all((out / "training_pipeline.yaml").read_text()))  # then the platform spec
    assert package["pipelineInfo"]["name"] == "kfrelease-training"
    tasks = package["root"]["dag"]["tasks"]
    assert {"split", "train", "score-champion", "evaluate", "validate-model", "register", "condition-1"} <= set(tasks)
    assert "validate-model" in str(tasks["condition-1"]["triggerPolicy"]["condition"])  # the dsl.If gate
    inner = package["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"containerize", "deploy-staging"}
    assert (out / "data_pipeline.yaml").is_file()
    for name in (
        "ingest",
        "publish_dataset",
        "split",
        "train",
        "score_champion",
        "evaluate",
        "validate_model",
        "register",
        "containerize",
        "deploy_staging",
    ):
        path = out / "components" / f"{name}.yaml"
        assert path.is_file() and str(path) in result.stdout
    train = components.load_component_from_file(str(out / "components" / "train.yaml"))
    assert train.name == "train" and {"spec", "run_id", "train_data", "holdout_features"} == set(
        train.component_spec.inputs
    )  # the untrusted step gets the training rows and the held-out features, nothing it could read labels from
    evaluate = yaml.safe_load((out / "components" / "evaluate.yaml").read_text())
    outputs = evaluate["root"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"


def compiled_training(tmp_path) -> dict:
    from kfp import compiler

    from kfrelease.pipelines.training_pipeline import training_pipeline

    path = tmp_path / "training.yaml"
    compiler.Compiler().compile(training_pipeline, str(path))
    return list(yaml.safe_load_all(path.read_text()))


def all_tasks(package: dict) -> dict:
    tasks = dict(package["root"]["dag"]["tasks"])
    for comp in package["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return {name: t for name, t in tasks.items() if not name.startswith("condition-")}


def test_every_training_step_has_resources_retries_and_no_cache(tmp_path):
    from kfrelease.training.resources import BACKOFF, RETRIES, STEP_DEFAULT

    package, platform = compiled_training(tmp_path)
    tasks = all_tasks(package)
    assert set(tasks) == {
        "split",
        "train",
        "score-champion",
        "evaluate",
        "validate-model",
        "register",
        "containerize",
        "deploy-staging",
    }
    executors = package["deploymentSpec"]["executors"]
    for name, task in tasks.items():
        assert task["cachingOptions"].get("enableCache", False) is False, name  # outputs never reused across merges
        assert (
            task["retryPolicy"]["maxRetryCount"] == RETRIES
            and task["retryPolicy"]["backoffDuration"] == BACKOFF["backoff_duration"]
        )
        resources = executors[task["componentRef"]["name"].replace("comp-", "exec-")]["container"]["resources"]
        if name in MODEL_STEPS:  # the model spec's resources (split to evaluate: sized by the data), as run parameters
            assert resources["resourceMemoryLimit"] == "{{$.inputs.parameters['pipelinechannel--model_memory_limit']}}"
            assert resources["resourceMemoryRequest"] == "{{$.inputs.parameters['pipelinechannel--model_memory']}}"
            assert resources["resourceCpuRequest"] == "{{$.inputs.parameters['pipelinechannel--model_cpu']}}"
        else:
            assert resources["resourceMemoryLimit"] == STEP_DEFAULT.memory_limit
            assert resources["resourceCpuRequest"] == STEP_DEFAULT.cpu
    selectors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert selectors["exec-train"]["nodeSelector"]["nodeSelectorJson"] == {
        "componentInputParameter": "model_node_selector"
    }
    params = package["root"]["inputDefinitions"]["parameters"]
    assert params["model_memory"]["defaultValue"] == "2Gi" and params["model_memory_limit"]["defaultValue"] == "4Gi"


def test_data_pipeline_caches_only_the_pure_steps(tmp_path):
    from kfp import compiler

    from kfrelease.pipelines.data_pipeline import data_pipeline

    path = tmp_path / "data.yaml"
    compiler.Compiler().compile(data_pipeline, str(path))
    doc = yaml.safe_load(path.read_text())
    tasks = {  # the embedded steps and the Spark one sit in the branches of the spec's engine
        name: task
        for dag in [doc["root"]["dag"], *(c["dag"] for c in doc["components"].values() if "dag" in c)]
        for name, task in dag["tasks"].items()
        if "componentRef" in task and not name.startswith("condition-")
    }
    caching = {name: t["cachingOptions"].get("enableCache", False) for name, t in tasks.items()}
    assert caching == {
        "data-engine": True,
        "ingest": False,
        "validate-data": True,
        "engineer-features": True,
        "publish-dataset": False,
        "publish-on-spark": False,
    }
    assert all(t["retryPolicy"]["maxRetryCount"] == 2 for t in tasks.values())


def test_model_spec_resources_become_run_parameters():
    from kfrelease.errors import ConfigError
    from kfrelease.training.resources import MODEL_DEFAULT, pipeline_arguments
    from kfrelease.training.spec import parse_spec

    base = "name: m\ntag: 1\ndataset: d\nfeatures: [a]\ntarget: y\nestimator: {class: sklearn.linear_model.Ridge}\n"
    assert parse_spec(base).resources == MODEL_DEFAULT
    spec = parse_spec(base + "resources: {cpu: '2', memory: 8Gi, node_selector: {pool: training}}\n")
    assert pipeline_arguments(spec.resources) == {
        "model_cpu": "2",
        "model_memory": "8Gi",
        "model_cpu_limit": "2",
        "model_memory_limit": "8Gi",
        "model_node_selector": {"pool": "training"},
    }
    assert parse_spec(base + "resources: {memory: 8Gi}\n").fingerprint == parse_spec(base).fingerprint
    with pytest.raises(ConfigError, match="memory_limit 1Gi is below memory 2Gi"):
        parse_spec(base + "resources: {memory: 2Gi, memory_limit: 1Gi}\n")
    with pytest.raises(ConfigError, match="resources.memory must be a memory quantity such as 4Gi, not '8 GB'"):
        parse_spec(base + "resources: {memory: 8 GB}\n")
