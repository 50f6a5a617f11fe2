"""The merge trigger end to end on the embedded stack: a detached kfp.local run of the training pipeline
(both branches of its ``dsl.If``), the same commit giving the same run, the pushed image pulled back, bad
input refused, and submission to a KFP API server (a recording HTTP server stands in for the KFP API,
which cannot run on this machine)."""

import json

import pytest
import yaml

from kfrelease.demo.project import merge_change, spec_variant
from kfrelease.errors import ConfigError
from kfrelease.images import oci
from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.spec import load_project_at_commit
from kfrelease.training.steps import STEP_NAMES, run_inline
from kfrelease.training.trigger import trigger, wait
from tests.recording_kfp import recording_kfp_api
from tests.waiting import eventually

IMAGE = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease@sha256:" + "b" * 64  # what CI pushed

pytestmark = pytest.mark.integration


def registry() -> ModelRegistry:
    return ModelRegistry(store_for("pipeline"))


@pytest.mark.slow(seconds=57)
def test_merge_runs_the_pipeline_detached_and_the_image_matches_the_entry(project, stack, run_cli, tmp_path):
    repo, shas, name = project
    started = run_cli("trigger", "--commit", shas[0], "--repo", str(repo), check=True)
    run_id = f"train-{shas[0][:12]}"
    assert f"run {run_id} started" in started.stdout
    again = run_cli("trigger", "--commit", shas[0], "--repo", str(repo), check=True)  # same commit: same run
    assert f"run {run_id} exists already" in again.stdout

    record = wait(stack, run_id, timeout=240)
    assert record.status == "succeeded", record.state
    assert record.state["version"] == "V1.1.0" and record.state["verdict"] == "passed"
    assert record.state["outcome"] == "staged" and record.state["staging_candidate"] is True
    assert {s: record.steps[s]["state"] for s in STEP_NAMES} == {s: "succeeded" for s in STEP_NAMES}
    assert len([r for r in run_records.list_runs(store_for("pipeline")) if r.record["commit"] == shas[0]]) == 1

    mv = registry().get(name, "V1.1.0")
    assert mv.stage == "staging" and mv.commit == shas[0] and mv.run_id == run_id
    digest, rootfs = oci.pull(mv.image["ref"], tmp_path / "pulled")  # pull it back from the registry
    assert digest == mv.image["digest"]
    # a ridge converts to ONNX, verified by evaluate on the held-out rows: the served file is model.onnx, and the
    # sklearn file stays beside it in the registry (kfrelease.training.steps.served_flavour)
    assert mv.entry["artifact"]["flavour"] == "onnx" and mv.entry["artifact"]["flavours"]["onnx"]["verified"]
    artifact = store_for("pipeline").get_bytes("models", f"artifacts/{name}/V1.1.0/model.onnx")
    assert (rootfs / "models" / "model.onnx").read_bytes() == artifact
    assert store_for("pipeline").stat("models", f"artifacts/{name}/V1.1.0/model.joblib") is not None
    in_image = json.loads((rootfs / "models" / "model.json").read_text())
    assert {k: in_image[k] for k in ("name", "version", "input_schema", "target")} == {
        k: mv.entry[k] for k in ("name", "version", "input_schema", "target")
    }
    assert all((rootfs / "bin" / tool).exists() for tool in ("sh", "ln", "sleep"))  # what a ModelCar needs

    listed = run_cli("runs", check=True).stdout
    assert run_id in listed and "V1.1.0" in listed
    result = run_cli("runs", run_id, check=True).stdout  # what `trigger --wait` prints after the steps too
    assert f"rmse {mv.metrics['rmse']:.4g}" in result and "verdict: passed, stage staging" in result
    assert f"report evaluation: s3://{stack.bucket_prefix}models/artifacts/{name}/V1.1.0/evaluation.html" in result
    shown = json.loads(run_cli("models", "show", name, "V1.1.0", check=True).stdout)
    assert shown["image"]["digest"] == mv.image["digest"]
    assert shown["spec"]["estimator"] == "sklearn.linear_model.Ridge" and shown["spec"]["params"] == {"alpha": 10.0}
    fetched = run_cli("reports", name, "V1.1.0", "--out", str(tmp_path / "reports"), check=True).stdout
    assert "evaluation:" in fetched and "<html" in (tmp_path / "reports" / "evaluation.html").read_text().lower()
    assert "staging" in run_cli("models", "history", name, "V1.1.0", check=True).stdout


@pytest.mark.slow(seconds=47)
def test_a_model_worse_than_production_is_rejected_and_nothing_is_staged(project, stack, run_cli):
    repo, shas, name = project
    first, sha1 = load_project_at_commit(repo, shas[0])
    champion = run_inline(first, sha1, containerize=False)
    registry().set_stage(name, champion.version, "production", "release-pipeline", "promoted for this test")

    # a model that ignores its inputs (always the 90th percentile of the training target): worse than production
    # beyond noise on the 48 held-out rows (MSE ratio ~6.5; merge 3's 5-nearest-neighbours, ~1.65, is not)
    broken = {"class": "sklearn.dummy.DummyRegressor", "params": {"strategy": "quantile", "quantile": 0.9}}
    worse = spec_variant(1, first.text, estimator=broken)
    sha_worse = merge_change(repo, "quantile-model", {"model.yaml": worse}, "Predict the 90th percentile")
    run_cli("trigger", "--commit", sha_worse, "--repo", str(repo), check=True)
    record = wait(stack, f"train-{sha_worse[:12]}", timeout=240)
    assert record.status == "succeeded" and record.state["verdict"] == "rejected"
    assert record.steps["containerize"]["state"] == "skipped" and record.steps["deploy-staging"]["state"] == "skipped"

    rejected = registry().get(name, record.state["version"])
    assert rejected.stage == "rejected" and rejected.image is None
    reasons = rejected.verdict["reasons"]  # it misses the thresholds too (RMSE about 130, R² below 0)
    assert [r.split(" ")[0] for r in reasons] == ["rmse", "r2", "against"], reasons
    rmse_reason, r2_reason, reason = reasons
    limits = yaml.safe_load(first.text)["validation"]  # the example's declared thresholds
    assert f"> {limits['max_rmse']:g} on 48 held-out rows" in rmse_reason
    assert f"< {limits['min_r2']:g} on 48 held-out rows" in r2_reason
    assert reason.startswith(
        f"against production {champion.version} on 48 held-out rows neither model trained on: fail"
    )
    assert "confidence sequence" in reason and "margin 0.0404" in reason  # the interval, the rule
    assert registry().history(name, rejected.version)[0]["stage"] == "rejected"
    assert registry().current(name, "staging") is None  # the champion moved on to production; nothing new staged
    assert registry().current(name, "production").version == champion.version
    drift = next(c for c in rejected.verdict["checks"] if c["name"] == "drift")
    assert "input columns drifted" in drift["detail"] or "unavailable" in drift["detail"]
    assert record.state["outcome"] == "rejected" and "nothing staged" in record.state["summary"]
    assert "rejected by validation" in record.steps["deploy-staging"]["skipped"]

    # a thresholds-only merge (wider validation thresholds, same definition, same data): the verdict of the
    # registered version stands; nothing is registered or staged, no step that did nothing is green, and
    # `trigger --wait` exits non-zero saying what to change (docs/training.md, "Thresholds-only merges")
    broken_model, _ = load_project_at_commit(repo, sha_worse)
    wider = spec_variant(1, broken_model.text, validation={"max_rmse": 1000.0, "tolerance": 10.0})
    sha = merge_change(repo, "wider-thresholds", {"model.yaml": wider}, "Accept the knn model: wider thresholds")
    waited = run_cli("trigger", "--commit", sha, "--repo", str(repo), "--wait")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    # found before any training: no runner, every step skipped with the reason
    assert f"run train-{sha[:12]} finished without training (succeeded); thresholds-only: " in waited.stdout
    (line,) = [ln for ln in waited.stdout.splitlines() if ln.startswith(f"run train-{sha[:12]}: thresholds-only")]
    assert f"is {name} {rejected.version}" in line and "change the model definition" in line
    again = run_records.get_run(store_for("pipeline"), f"train-{sha[:12]}")
    assert again.state["outcome"] == "thresholds-only" and again.state["version"] == rejected.version
    assert again.state["staging_candidate"] is False and again.state["trained"] is False
    assert {again.steps[s]["state"] for s in STEP_NAMES} == {"skipped"} and "pid" not in again.state
    assert [v.version for v in registry().list(name)] == [champion.version, rejected.version]
    assert registry().current(name, "staging") is None and registry().get(name, rejected.version).image is None


def test_bad_input_is_refused_before_anything_is_written(project, dataset, stack, run_cli):
    repo, shas, name = project
    bad = run_cli("trigger", "--commit", "0" * 40, "--repo", str(repo))
    assert (
        bad.returncode == 1 and "is not in the repository" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    )

    unknown = merge_change(
        repo,
        "typo",
        {
            "model.yaml": spec_variant(
                1, name=name, dataset=dataset.name, estimator={"class": "sklearn.linear_model.Ridgee"}
            )
        },
        "typo",
    )
    refused = run_cli("trigger", "--commit", unknown, "--repo", str(repo))
    assert refused.returncode == 1 and "unknown estimator 'sklearn.linear_model.Ridgee'" in refused.stderr
    assert store_for("pipeline").stat("models", f"runs/train-{unknown[:12]}/run.json") is None  # no run

    no_data = merge_change(
        repo, "no-data", {"model.yaml": spec_variant(1, name=name, dataset="no-such-dataset")}, "wrong dataset"
    )
    refused = run_cli("trigger", "--commit", no_data, "--repo", str(repo))
    assert refused.returncode == 1 and "dataset 'no-such-dataset' has no published version" in refused.stderr
    assert store_for("pipeline").stat("models", f"runs/train-{no_data[:12]}/run.json") is None

    no_column = merge_change(
        repo,
        "no-column",
        {"model.yaml": spec_variant(1, name=name, dataset=dataset.name, features=["age", "glucose"])},
        "a feature the data lacks",
    )
    refused = run_cli("trigger", "--commit", no_column, "--repo", str(repo))
    assert refused.returncode == 1 and "feature(s) ['glucose'] not in dataset" in refused.stderr
    assert "\x1b[" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert store_for("pipeline").stat("models", f"runs/train-{no_column[:12]}/run.json") is None

    bad_rollout = merge_change(
        repo,
        "bad-rollout",
        {"rollout.yaml": "canary: {steps: [50, 10, 100]}\n"},
        "A rollout spec with steps out of order",
    )
    refused = run_cli("trigger", "--commit", bad_rollout, "--repo", str(repo))
    assert refused.returncode == 1 and "rollout.yaml@" in refused.stderr and "not strictly increasing" in refused.stderr
    assert store_for("pipeline").stat("models", f"runs/train-{bad_rollout[:12]}/run.json") is None

    spec, sha = load_project_at_commit(repo, shas[0])
    from kfrelease.errors import DataValidationError, NotFound
    from kfrelease.training.spec import parse_spec

    with pytest.raises(NotFound, match="has no version 'feedfacefeedface'"):
        run_inline(spec, sha, dataset_version="feedfacefeedface")
    missing = parse_spec(spec_variant(1, spec.text, features=[*spec.features, "glucose"]))
    with pytest.raises(DataValidationError, match=r"feature\(s\) \['glucose'\]"):
        run_inline(missing, sha)
    assert registry().list(name) == []  # nothing registered, so no image either


def test_with_a_kfp_host_the_compiled_pipeline_is_submitted_once(project, stack, tmp_path, monkeypatch):
    repo, shas, name = project
    from kfrelease.errors import ConfigError

    monkeypatch.setenv("KFRELEASE_IMAGE", "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease:0.1.0")
    with pytest.raises(ConfigError, match="does not name the project image by digest"):
        trigger(stack, shas[1], repo, kfp_host="http://127.0.0.1:9")  # refused before any run record
    monkeypatch.setenv("KFRELEASE_IMAGE", IMAGE)
    token = tmp_path / "kfp-token"
    token.write_text("ci-token-123")  # what the CI workflow mints with `kubectl create token kfrelease-ci`
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    with recording_kfp_api() as (host, api):
        record = trigger(stack, shas[1], repo, kfp_host=host)
        again = trigger(stack, shas[1], repo, kfp_host=host)
    assert record.created and not again.created and again.run_id == record.run_id
    assert record.state["state"] == "submitted" and record.state["kfp_run_id"] == "kfp-run-1"
    posted = api.posted("/apis/v2beta1/runs")
    assert len(posted) == 1  # the second trigger found the run record and submitted nothing
    run = posted[0]
    assert run["display_name"] == f"train-{shas[1][:12]}" and run["experiment_id"] == "exp-1"
    # with a kfp-kubernetes platform spec the SDK sends {"pipeline_spec": ..., "platform_spec": ...}
    pipeline_spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    assert pipeline_spec["pipelineInfo"]["name"] == "kfrelease-training"
    # every step runs the pinned image and hands it on (the deploy-staging step compiles the release on it)
    for ex in pipeline_spec["deploymentSpec"]["executors"].values():
        assert (
            ex["container"]["image"] == IMAGE and {"name": "KFRELEASE_IMAGE", "value": IMAGE} in ex["container"]["env"]
        )
    assert (
        "exec-train" in run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    )
    params = run["runtime_config"]["parameters"]
    assert params["commit"] == shas[1] and params["run_id"] == record.run_id
    assert params["model_memory"] == "2Gi" and params["model_memory_limit"] == "4Gi"  # the spec's (default) resources
    # the model spec is a typed parameter (STRUCT), sent as a JSON object (kfp.Client: RuntimeConfig.parameters)
    assert pipeline_spec["root"]["inputDefinitions"]["parameters"]["spec"]["parameterType"] == "STRUCT"
    assert params["spec"]["code"]["model.py"].startswith('"""Optional model code')
    assert registry().list(name) == []  # nothing ran locally
    # multi-user KFP: the CI service account's token and the release namespace
    assert api.posted_headers("/apis/v2beta1/runs")[0]["authorization"] == "Bearer ci-token-123"
    experiments = api.posted("/apis/v2beta1/experiments")
    assert experiments and experiments[0]["namespace"] == "kfrelease-release"


def _marking_build(marker, body: str = "    from sklearn.linear_model import Ridge\n\n    return Ridge()\n") -> str:
    """A build file that writes ``marker`` when it is executed (module level) and when its function runs."""
    return (
        "import pathlib\n\n"
        f"pathlib.Path({str(marker)!r}).write_text('module')\n\n\n"
        "def build_model():\n"
        f"    pathlib.Path({str(marker)!r}).write_text('build_model')\n" + body
    )


@pytest.mark.slow(seconds=20)
def test_a_cluster_trigger_submits_without_running_the_projects_code(project, stack, run_cli, tmp_path, monkeypatch):
    """Review 2 H1: CI runs `kfrelease trigger --kfp-host` with the CI role's AWS credentials and the kfrelease-ci
    KFP token (which may start any pipeline); the trigger built the estimator first, executing the merged build
    file in that process. Now it checks the spec statically and only the untrusted train step runs the code."""
    repo, shas, _ = project
    marker = tmp_path / "build-ran"
    first, _ = load_project_at_commit(repo, shas[0])
    code = _marking_build(marker)
    sha = merge_change(
        repo, "marker", {"model.yaml": spec_variant(2, first.text), "model.py": code}, "A build file with side effects"
    )
    token = tmp_path / "kfp-token"
    token.write_text("ci-token-123")
    env = {"KFRELEASE_IMAGE": IMAGE, "KF_PIPELINES_SA_TOKEN_PATH": str(token)}
    with recording_kfp_api() as (host, api):
        out = run_cli("trigger", "--commit", sha, "--repo", str(repo), "--kfp-host", host, env=env, check=True)
    assert f"run train-{sha[:12]} started (submitted) kfp-run-1" in out.stdout
    assert not marker.exists(), f"the trigger executed the project's build file ({marker.read_text()})"
    (run,) = api.posted("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"]["spec"]["code"]["model.py"] == code  # the train step's

    # what can be told without running the code is still refused before any run exists
    typo = {"class": "sklearn.linear_model.Ridge", "params": {"alpah": 1}}
    refusals = [
        ({"model.py": code.replace("def build_model():", "def build_model(:")}, "model.py failed to load: SyntaxError"),
        ({"model.py": code.replace("def build_model", "def make_model")}, "model.py defines no function 'build_model'"),
        (
            {"model.yaml": spec_variant(1, first.text, estimator=typo)},
            "estimator.params.alpah: sklearn.linear_model.Ridge has no such parameter (did you mean 'alpha'?)",
        ),
    ]
    monkeypatch.setenv("KFRELEASE_IMAGE", IMAGE)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    for n, (files, message) in enumerate(refusals):
        bad = merge_change(repo, f"bad-{n}", files, message)
        with recording_kfp_api() as (host, api), pytest.raises(ConfigError) as refused:
            trigger(stack, bad, repo, kfp_host=host)
        assert message in str(refused.value) and not api.posted("/apis/v2beta1/runs")
        assert store_for("pipeline").stat("models", f"runs/train-{bad[:12]}/run.json") is None
    assert not marker.exists()


@pytest.mark.slow(seconds=25)
def test_a_build_function_that_fails_fails_the_train_step_and_says_why(project, stack, run_cli, tmp_path):
    """What only running the build code shows (here: it raises) is the untrusted train step's failure, in the
    run's one line and its train step, not retried (the trigger no longer runs the code to find it early)."""
    repo, shas, name = project
    marker = tmp_path / "build-ran"
    first, _ = load_project_at_commit(repo, shas[0])
    raising = _marking_build(marker, "    raise ValueError('alpha must be positive')\n")
    sha = merge_change(
        repo, "raises", {"model.yaml": spec_variant(2, first.text), "model.py": raising}, "A build function that raises"
    )
    waited = run_cli("trigger", "--commit", sha, "--repo", str(repo), "--wait")
    assert waited.returncode == 1, waited.stdout + waited.stderr
    why = "model.py:build_model raised ValueError: alpha must be positive"
    said = " ".join(waited.stdout.split())  # the console may wrap the run's line
    assert f"run train-{sha[:12]}: failed, model code: " in said and why in said and "not retried" in said, said
    record = run_records.get_run(store_for("pipeline"), f"train-{sha[:12]}")
    assert record.status == "failed" and record.state["cause"] == "model code"
    assert record.steps["train"]["state"] == "failed" and why in record.steps["train"]["error"]
    assert marker.read_text() == "build_model"  # the train step ran it (the trigger did not)
    assert registry().list(name) == []


def test_auto_retrain_uses_the_production_definition_on_the_latest_data(project, dataset, stack, monkeypatch):
    """What monitoring's alert receiver and new-data hook call (submitted to the recording KFP API here)."""
    repo, shas, name = project
    monkeypatch.setenv("KFRELEASE_IMAGE", IMAGE)
    spec, sha = load_project_at_commit(repo, shas[1])
    prod = run_inline(spec, sha, containerize=False)
    registry().set_stage(name, prod.version, "production", "release-pipeline", "promoted for this test")
    new_data = dataset.add_batch(2)

    with recording_kfp_api() as (host, api):
        record = trigger(stack, None, None, kfp_host=host, auto=True, model=name, reason="alert: RMSE above target")
        again = trigger(stack, None, None, kfp_host=host, auto=True, model=name, reason="second alert")
    assert record.created and not again.created and record.run_id == f"auto-{name}-{prod.version}-{new_data[:12]}"
    assert record.record["reason"] == "alert: RMSE above target" and record.record["commit"] == sha
    assert record.record["spec_fingerprint"] == spec.fingerprint and record.record["dataset_version"] == new_data
    posted = api.posted("/apis/v2beta1/runs")
    assert len(posted) == 1 and posted[0]["runtime_config"]["parameters"]["dataset_version"] == new_data

    from kfrelease.errors import KfreleaseError

    with pytest.raises(KfreleaseError, match="no production version"):
        trigger(stack, None, None, auto=True, model=f"{name}-none")


@pytest.mark.slow(seconds=47)
def test_new_curated_data_retrains_production_by_default_at_most_once_per_interval(project, dataset, stack):
    """Publishing a newer curated version of a production model's dataset starts an auto revision (no
    `retrain` section in model.yaml: on by default, through the receiver's poller and the training trigger);
    a second publish within the rate limit starts nothing, and its record says why."""

    from kfrelease.data.pipeline import run_data_pipeline
    from kfrelease.demo.data import holdout
    from kfrelease.monitoring.newdata import (
        BUCKET,
        check_new_data,
        claim_key,
        start_poller,
    )
    from kfrelease.monitoring.receiver import AlertReceiver
    from kfrelease.training.retrain import NEW_DATA_MIN_INTERVAL_MINUTES

    repo, shas, name = project
    spec, sha = load_project_at_commit(repo, shas[0])
    champion = run_inline(spec, sha, containerize=False)
    registry().set_stage(name, champion.version, "production", "release-pipeline", "promoted for this test")
    store = store_for("pipeline")
    receiver = AlertReceiver(stack, store=store, min_interval=0)
    poller = start_poller(receiver, interval=0.5)  # what the stack's receiver service runs (every 30 s by default)
    try:
        second = dataset.add_batch(2)
        run_id = f"auto-{name}-{champion.version}-{second[:12]}"
        eventually(
            lambda: store.stat("models", f"runs/{run_id}/run.json") is not None,
            60,
            f"an auto revision started for {second}",
            interval=0.5,
        )
    finally:
        poller.stop.set()
    record = wait(stack, run_id, timeout=240)
    assert record.status == "succeeded" and record.record["auto"] is True, record.state
    assert record.state["version"] == "V1.1.1" and record.state["outcome"] == "staged"  # auto revision + 1
    assert registry().get(name, "V1.1.1").entry["dataset_version"] == second
    assert store.get_json(BUCKET, claim_key(name, second))["action"] == "triggered"

    de = store_for("data-engineer")  # another publish, a minute later: within the rate limit
    de.put_bytes("raw", f"{dataset.spec.source_prefix}batch-3.csv", holdout().to_csv(index=False).encode())
    third = run_data_pipeline(dataset.spec, de).version
    (row,) = check_new_data(receiver, [name])
    assert row["latest"] == third and row["action"] == "rate-limited", row
    why = store.get_json(BUCKET, claim_key(name, third))
    assert why["action"] == "rate-limited" and f"at most one per {NEW_DATA_MIN_INTERVAL_MINUTES:g} min" in why["detail"]
    assert f"on {dataset.name} {second}" in why["detail"]
    assert not [r for r in run_records.list_runs(store) if r.record.get("dataset_version") == third]
