"""`kfrelease compile` writes the training pipeline as a KFP package and every component as reusable YAML."""

import yaml
from kfp import components


def test_compile_writes_pipelines_and_component_files(run_cli, tmp_path):
    out = tmp_path / "build"
    result = run_cli("compile", "--out", str(out), "training", "data", check=True)
    package = yaml.safe_load((out / "training_pipeline.yaml").read_text())
    assert package["pipelineInfo"]["name"] == "kfrelease-training"
    tasks = package["root"]["dag"]["tasks"]
    assert {"train", "evaluate", "validate-model", "register", "condition-1"} <= set(tasks)
    assert "validate-model" in str(tasks["condition-1"]["triggerPolicy"]["condition"])  # the dsl.If gate
    inner = package["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"containerize", "deploy-staging"}
    assert (out / "data_pipeline.yaml").is_file()
    for name in ("ingest", "publish_dataset", "train", "evaluate", "validate_model", "register", "containerize",
                 "deploy_staging"):
        path = out / "components" / f"{name}.yaml"
        assert path.is_file() and str(path) in result.stdout
    train = components.load_component_from_file(str(out / "components" / "train.yaml"))
    assert train.name == "train" and {"spec_json", "dataset_version", "run_id"} <= set(train.component_spec.inputs)
    evaluate = yaml.safe_load((out / "components" / "evaluate.yaml").read_text())
    outputs = evaluate["root"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
