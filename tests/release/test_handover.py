"""The training pipeline's staging step hands over to the release, so one merge runs the whole path
unattended: locally a detached release runner (real stack, real kfp.local runs); on a cluster a new run
of the release pipeline on the KFP API server (a recording HTTP server stands in for the KFP API, which
cannot run on this machine)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from kfrelease.registry import ModelRegistry
from kfrelease.release.handover import record_path, stage_and_hand_over, start_release, wait_release
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.evidence import keep_evidence
from kfrelease.training.spec import parse_spec
from kfrelease.training.trigger import trigger, wait
from tests.recording_kfp import recording_kfp_api
from tests.release.conftest import bad_spec_text, small_spec, traffic

pytestmark = pytest.mark.integration


def _spec_file(tmp, name):
    path = tmp / "rollout.yaml"
    path.write_text(small_spec(name).to_yaml())
    return path


@pytest.mark.slow(seconds=47)
def test_a_merge_is_trained_staged_and_released_without_anyone_starting_the_release(release_env, monkeypatch):
    from kfrelease.demo.flow import create_release_demo_project

    settings, ds, name, tmp = release_env
    rollout = _spec_file(tmp, name).read_text()  # the project's rollout.yaml, committed with merge 1
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name, rollout=rollout)
    monkeypatch.setenv("KFRELEASE_AUTO_RELEASE", "1")
    monkeypatch.delenv("KFRELEASE_ROLLOUT_SPEC", raising=False)

    record = wait(settings, trigger(settings, shas[0], tmp / "project").run_id, timeout=600)
    version = record.state["version"]
    assert record.state["state"] == "succeeded" and record.state["verdict"] == "passed", record.state

    # nobody called start_release: the deploy-staging component did, and left its record
    handed = json.loads(record_path(settings, name, version).read_text())
    # the merge's rollout.yaml travelled with it: recorded in the entry, handed to the release
    assert ModelRegistry(store_for("pipeline", settings)).get(name, version).entry["rollout"] == rollout
    assert handed["pid"] > 0 and handed["spec"].endswith(f"{version}.rollout.yaml")
    assert Path(handed["spec"]).read_text() == rollout
    with traffic(settings, name, wait_served=300, rate=60.0):  # a first model: provisional until it passes live
        assert wait_release(settings, name, version, timeout=300) == "production"
    history = ModelRegistry(store_for("pipeline", settings)).history(name, version)
    assert any(e["evidence"].get("phase") == "provisional" for e in history), history
    staged = [e for e in history if e["stage"] == "staging"]
    assert staged and staged[0]["who"] == "training-pipeline", history
    assert history[-1]["stage"] == "production" and history[-1]["who"] != "training-pipeline", history
    # a second hand-over of the same version starts nothing, and says so
    assert start_release(settings, name, version) == {**handed, "existing": True}


def test_on_a_cluster_the_hand_over_submits_the_release_pipeline(stack, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("pipeline-pod-token")  # the PodDefault's projected token (audience pipelines.kubeflow.org)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    image = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease@sha256:" + "c" * 64
    monkeypatch.setenv("KFRELEASE_IMAGE", image)  # the step's own image, from the compiled training package
    spec_file = _spec_file(tmp_path, "diabetes-progression-cluster")
    with recording_kfp_api() as (host, api):
        monkeypatch.setenv("KFRELEASE_KFP_HOST", host)
        monkeypatch.setenv("KFRELEASE_AUTO_RELEASE", "1")
        record = start_release(stack, "diabetes-progression-cluster", "V1.2.0", str(spec_file))
    assert record["kfp_run_id"] == "kfp-run-1" and record["run_name"] == "release-diabetes-progression-cluster-V1.2.0"
    (run,) = api.posted("/apis/v2beta1/runs")
    pipeline_spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])  # kfp-kubernetes: two docs
    assert pipeline_spec["pipelineInfo"]["name"] == "kfrelease-release"
    assert {ex["container"]["image"] for ex in pipeline_spec["deploymentSpec"]["executors"].values()} == {image}
    params = run["runtime_config"]["parameters"]
    assert params["model"] == "diabetes-progression-cluster" and params["version"] == "V1.2.0"
    assert yaml.safe_load(params["spec_yaml"])["canary"]["steps"] == [25, 50, 100]
    assert api.posted_headers("/apis/v2beta1/runs")[0]["authorization"] == "Bearer pipeline-pod-token"
    assert api.posted("/apis/v2beta1/experiments")[0]["namespace"] == "kfrelease-release"
    # nothing was started locally
    assert not record_path(stack, "diabetes-progression-cluster", "V1.2.0").exists()


def test_stage_and_hand_over_stages_only_a_release_run_and_only_a_validated_version(stack):
    """The library core of the ``deploy_staging`` component (which only calls it): an experiment (no run
    record of the merge trigger) changes nothing; a release run stages a validated version and hands it over
    (off here: KFRELEASE_AUTO_RELEASE=0 on the test stack); a version that failed validation stays rejected
    and the step is recorded as skipped."""
    name = f"handover-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(bad_spec_text(name, "diabetes"))
    store = store_for("pipeline", stack)
    registry = ModelRegistry(store)
    for version, passed in (("V1.1.0", True), ("V1.2.0", False)):
        registry.put_entry(
            {
                "name": name,
                "version": version,
                "tag": 1,
                "input_schema": [{"name": "age", "dtype": "float64"}],
                "metrics": {"rmse": 50.0},
                "verdict": {"passed": passed, "reasons": [] if passed else ["rmse 250 above max_rmse 200"]},
            }
        )
    image = "registry.local/kfrelease/model:V1.1.0"

    assert stage_and_hand_over(stack, spec, "V1.1.0", image, "", "job-1") == "experiment"
    assert registry.get(name, "V1.1.0").stage is None, "an experiment staged a version"

    run_id = f"run-{uuid.uuid4().hex[:8]}"
    run_records.create_run(
        store, run_id, {"model": name, "spec_fingerprint": spec.fingerprint, "spec_json": spec.to_json()}
    )
    keep_evidence(store, run_id, {"version": "V1.1.0"}, "register")  # what this run's register step keeps
    assert stage_and_hand_over(stack, spec, "V1.1.0", image, run_id, "job-1") == "staging"
    staged = registry.history(name, "V1.1.0")[-1]
    assert staged["stage"] == "staging" and staged["who"] == "training-pipeline" and run_id in staged["why"]
    assert run_records.get_step(store, run_id, "deploy-staging")["state"] == "succeeded"
    assert not record_path(stack, name, "V1.1.0").exists(), "handed over with KFRELEASE_AUTO_RELEASE=0"
    # staging it again (KFP retried the step) writes no second event
    assert stage_and_hand_over(stack, spec, "V1.1.0", image, run_id, "job-1") == "staging"
    assert len(registry.history(name, "V1.1.0")) == 1

    other = f"run-{uuid.uuid4().hex[:8]}"
    run_records.create_run(
        store, other, {"model": name, "spec_fingerprint": spec.fingerprint, "spec_json": spec.to_json()}
    )
    keep_evidence(store, other, {"version": "V1.2.0"}, "register")
    assert stage_and_hand_over(stack, spec, "V1.2.0", image, other, "job-2") == "rejected"
    assert registry.get(name, "V1.2.0").stage is None
    step = run_records.get_step(store, other, "deploy-staging")
    assert step["state"] == "skipped" and "nothing staged" in step["skipped"], step
