"""The training DAG is declared once (``kfrelease.training.steps.TRAINING_STEPS``): the KFP pipeline and the
in-process run are both built from it, so a step added there is in both; and what travels between the steps is
typed (the model spec a ``dict`` parameter, the evidence evaluate's ``Metrics`` artifact checked by its digest)."""

from dataclasses import replace

import pytest
import yaml
from kfp import compiler, dsl

import kfrelease.pipelines.training_pipeline as training_pipeline_module
from kfrelease.pipelines.training_pipeline import training_pipeline
from kfrelease.training import steps
from kfrelease.training.evidence import EvidenceError, read_evidence, write_evidence
from kfrelease.training.spec import load_project_at_commit


def compiled(tmp_path, pipeline=training_pipeline) -> dict:
    path = tmp_path / "training.yaml"
    compiler.Compiler().compile(pipeline, str(path))
    return next(yaml.safe_load_all(path.read_text()))  # the pipeline spec (the platform spec follows)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> dict:
    return compiled(tmp_path_factory.mktemp("training"))


def tasks_of(package: dict) -> dict:
    tasks = dict(package["root"]["dag"]["tasks"])
    for comp in package["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return {name: t for name, t in tasks.items() if not name.startswith("condition-")}


#: a step added to the DAG in one entry: a second verdict on evaluate's evidence, after register
SECOND_OPINION = steps.Step(
    "second-opinion",
    "validate_model:validate_model",
    {"spec": "spec", "metrics": "evaluate.metrics", "evidence_digest": "evaluate.Output", "run_id": "run_id"},
    lambda a: {"Output": True, "result": read_evidence(a.metrics, a.evidence_digest)},
    after=("register",),
)


def with_step(monkeypatch, step) -> None:
    monkeypatch.setattr(steps, "TRAINING_STEPS", (*steps.TRAINING_STEPS, step))
    monkeypatch.setattr(training_pipeline_module, "TRAINING_STEPS", steps.TRAINING_STEPS)


def test_a_step_added_to_the_declared_dag_is_in_the_compiled_pipeline(tmp_path, monkeypatch):
    with_step(monkeypatch, SECOND_OPINION)
    # dsl.pipeline builds its graph when it decorates: build the same function again, on the longer list
    package = compiled(tmp_path, dsl.pipeline(name="kfrelease-training")(training_pipeline.pipeline_func))
    tasks = {t["taskInfo"]["name"]: t for t in tasks_of(package).values()}
    assert sorted(tasks) == sorted(s.name for s in steps.TRAINING_STEPS)  # every declared step, by its name
    added = tasks["second-opinion"]
    assert added["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"] == {
        "outputArtifactKey": "metrics",
        "producerTask": "evaluate",
    }
    assert added["inputs"]["parameters"]["evidence_digest"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "evaluate",
    }
    assert "register" in added["dependentTasks"]


def test_the_declared_identities_and_conditions_are_the_compiled_ones(package):
    by_name = {t["taskInfo"]["name"]: name for name, t in tasks_of(package).items()}
    gated = set(package["components"]["comp-condition-1"]["dag"]["tasks"])
    assert {by_name[s.name] for s in steps.TRAINING_STEPS if s.if_passed} == gated
    assert steps.UNTRUSTED_STEPS == ("train", "score-champion")  # tests/training/test_trust.py checks their pods
    assert sorted(steps.STEP_NAMES) == sorted(by_name)


def test_the_spec_and_the_evidence_travel_typed(package):
    assert package["root"]["inputDefinitions"]["parameters"]["spec"]["parameterType"] == "STRUCT"
    for name, comp in package["components"].items():
        parameters = (comp.get("inputDefinitions") or {}).get("parameters") or {}
        assert not [p for p in parameters if p.endswith("_json")], name  # no JSON text between steps
        if "spec" in parameters:
            assert parameters["spec"]["parameterType"] == "STRUCT", name
    evaluate = package["components"]["comp-evaluate"]
    assert evaluate["inputDefinitions"]["parameters"]["train_claims"]["parameterType"] == "STRUCT"
    assert evaluate["outputDefinitions"]["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    for consumer in ("comp-validate-model", "comp-register"):
        inputs = package["components"][consumer]["inputDefinitions"]
        assert inputs["artifacts"]["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
        assert inputs["parameters"]["evidence_digest"]["parameterType"] == "STRING"


def test_evidence_changed_after_evaluate_wrote_it_is_refused(tmp_path):
    path = tmp_path / "metrics"
    evidence = {"metrics": {"rmse": 53.2, "n": 89}, "held_out_rows": 89, "champion": None, "flavours": {}}
    digest = write_evidence(path, evidence)
    assert read_evidence(path, digest) == evidence  # exactly what evaluate computed: ints stay ints, None stays
    path.write_text(path.read_text().replace("53.2", "0.1"))
    with pytest.raises(EvidenceError, match="not the file evaluate wrote"):
        read_evidence(path, digest, "train-abc")
    path.unlink()
    with pytest.raises(EvidenceError, match="missing"):
        read_evidence(path, digest)


@pytest.mark.integration
def test_a_step_added_to_the_declared_dag_runs_inline(project, stack, monkeypatch):
    seen = {}

    def second_opinion(a):
        seen.update(a.inputs)
        made = SECOND_OPINION.inline(a)
        seen["evidence"] = made["result"]
        return made

    with_step(monkeypatch, replace(SECOND_OPINION, inline=second_opinion))
    repo, shas, _ = project
    spec, sha = load_project_at_commit(repo, shas[0])
    run = steps.run_inline(spec, sha, containerize=False)
    assert list(run.seconds) == [s.name for s in steps.TRAINING_STEPS if s.name != "containerize"]
    assert seen["evidence_digest"].startswith("sha256:") and seen["evidence"] == run.evidence  # evaluate's, checked
    assert run.version == "V1.1.0" and run.stage == "staging"
