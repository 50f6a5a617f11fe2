"""The registry on the embedded stack: the version scenario of the issue, concurrent registrations,
idempotency, rejected models and the append-only stage history."""

import json
import threading
import uuid

import pytest

from kfrelease.demo.project import spec_variant
from kfrelease.errors import Conflict, KfreleaseError, NotFound
from kfrelease.registry import ModelRegistry, TrainedModel
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit, parse_spec
from kfrelease.training.steps import run_inline

pytestmark = pytest.mark.integration


def registry() -> ModelRegistry:
    return ModelRegistry(store_for("pipeline"))


def entries(model: str) -> list[str]:
    return [v.version for v in registry().list(model)]


def trained(name: str, **fields) -> TrainedModel:
    """A model to register; what a test does not set is the same for every call."""
    same = {
        "tag": 1,
        "spec_fingerprint": "f",
        "dataset": "d",
        "dataset_version": "v1",
        "commit": "c",
        "run_id": "r",
        "metrics": {},
        "verdict": {"passed": True},
        "input_schema": [],
        "target": "y",
        "model_bytes": b"m",
    }
    return TrainedModel(name=name, **{**same, **fields})


def test_merge_scenario_v1_1_0_to_v2_1_0(project, dataset, stack, run_cli):
    """first merge -> V1.1.0; new hyper-parameters -> V1.2.0; new data, same spec -> V1.2.1; nothing changed
    -> still V1.2.1 and no new entry; tag bumped -> V2.1.0 (the steps of the pipeline, run in-process)."""
    repo, shas, name = project
    first, sha1 = load_project_at_commit(repo, shas[0])
    run1 = run_inline(first, sha1, containerize=False)
    assert run1.version == "V1.1.0" and run1.registration["created"] and run1.stage == "staging"
    assert run1.verdict["champion"]["comparable"] is False  # the first model of a tag has no champion
    assert run1.verdict["champion"]["detail"] == "no production model yet: nothing to compare"

    second, sha2 = load_project_at_commit(repo, shas[1])  # build: model.py (scaled ridge): a new definition
    assert second.fingerprint != first.fingerprint
    assert run_inline(second, sha2, containerize=False).version == "V1.2.0"

    new_data = dataset.add_batch(2)  # batch 2 arrives in raw; the data pipeline publishes a new version
    assert new_data != dataset.first_version
    run3 = run_inline(second, sha2, containerize=False)
    assert run3.version == "V1.2.1" and run3.dataset_version == new_data

    again = run_inline(second, sha2, containerize=False)
    assert again.version == "V1.2.1" and not again.registration["created"]
    assert entries(name) == ["V1.1.0", "V1.2.0", "V1.2.1"]

    bumped = parse_spec(spec_variant(2, second.text, tag=2), code=second.code)
    assert run_inline(bumped, sha2, containerize=False).version == "V2.1.0"
    assert entries(name) == ["V1.1.0", "V1.2.0", "V1.2.1", "V2.1.0"]

    v121 = registry().get(name, "V1.2.1")
    assert v121.commit == sha2 and v121.spec_fingerprint == second.fingerprint
    assert v121.dataset_version == new_data and v121.run_id == run3.run_id
    assert set(v121.metrics) >= {"mse", "rmse", "mae", "r2"} and v121.verdict["passed"] is True
    assert [c["name"] for c in v121.input_schema] == list(second.features) and v121.target == "progression"
    assert v121.image is None  # not containerized in this test

    diff = json.loads(run_cli("models", "diff", name, "V1.1.0", "V1.2.1", "--json", check=True).stdout)
    changed = {c["what"]: (c["a"], c["b"]) for c in diff["changes"]}
    assert changed["estimator"] == ("sklearn.linear_model.Ridge", None) and changed["build"] == (
        None,
        "model.py:build_model",
    )
    assert changed["dataset_version"] == (dataset.first_version, new_data) and "def build_model" in diff["code_diff"]
    assert {m["metric"] for m in diff["metrics"]} == {"mse", "rmse", "mae", "r2"}
    # on the same rows: V1.1.0's 48 held-out rows are all held out by V1.2.1 too (the hash split of grown data)
    same = diff["same_rows"]
    assert same["n"] == 48 and same["rows_a"] == 48 and same["rows_b"] > 48 and same["dataset_version"] == new_data
    assert [m[0] for m in same["metrics"]] == ["mse", "rmse", "mae", "r2"] and "confidence sequence" in same["test"]
    text = run_cli("models", "diff", name, "V1.1.0", "V1.2.1", check=True).stdout
    assert f"on the same 48 held-out rows (held out by both, labels of {new_data})" in text
    assert f"metrics as registered, each on its own held-out rows (48 and {same['rows_b']})" in text
    # a version that kept no held-out predictions (registered before they were kept) is not compared on rows
    legacy = registry().register(
        trained(name, tag=3, spec_fingerprint="old", input_schema=v121.input_schema, target="progression")
    )
    text = run_cli("models", "diff", name, "V1.1.0", legacy.version.version, check=True).stdout
    assert f"not compared on the same rows: {legacy.version.version} kept no held-out predictions" in text


def test_eight_concurrent_registrations_get_eight_distinct_versions(stack):
    """8 threads, each with its own registry client, register 8 different definitions at the same moment."""
    name = f"race-{uuid.uuid4().hex[:6]}"
    barrier = threading.Barrier(8)
    results, errors = [None] * 8, []

    def register(i: int) -> None:
        reg = registry()
        try:
            barrier.wait(timeout=30)
            model = trained(
                name, spec_fingerprint=f"definition-{i}", run_id=f"run-{i}", model_bytes=f"model {i}".encode()
            )
            results[i] = reg.register(model).version.version
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(results) == [f"V1.{m}.0" for m in range(1, 9)]  # distinct, none lost, no gaps
    assert entries(name) == [f"V1.{m}.0" for m in range(1, 9)]
    reg = registry()
    for v in reg.list(name):  # each version holds its own run's model, never another's
        i = int(v.run_id.split("-")[1])
        assert reg.store.get_bytes("models", f"artifacts/{name}/{v.version}/model.joblib") == f"model {i}".encode()


def test_concurrent_runs_of_the_same_definition_and_data_share_one_version(stack):
    name = f"same-{uuid.uuid4().hex[:6]}"
    barrier = threading.Barrier(4)
    results = []

    def register() -> None:
        reg = registry()
        barrier.wait(timeout=30)
        r = reg.register(trained(name, run_id=uuid.uuid4().hex))
        results.append((r.version.version, r.created))

    threads = [threading.Thread(target=register) for _ in range(4)]
    [t.start() for t in threads]
    [t.join(timeout=120) for t in threads]
    assert sorted(results) == [("V1.1.0", False)] * 3 + [("V1.1.0", True)]


def test_stage_history_is_append_only_and_production_replaces_production(stack):
    name = f"stages-{uuid.uuid4().hex[:6]}"
    reg = registry()
    v1 = reg.register(trained(name, spec_fingerprint="a", run_id="r1")).version
    v2 = reg.register(trained(name, spec_fingerprint="b", run_id="r2")).version
    rejected = trained(name, spec_fingerprint="c", run_id="r3", verdict={"passed": False, "reasons": ["rmse too high"]})
    bad = reg.register(rejected).version
    assert bad.stage == "rejected" and reg.history(name, bad.version)[0]["why"] == "rmse too high"

    assert reg.current(name, "production") is None
    reg.set_stage(name, v1.version, "production", "release-pipeline", "canary passed", {"rmse": 1.0})
    reg.set_stage(name, v2.version, "staging", "training-pipeline", "passed validation")
    assert reg.current(name, "production").version == "V1.1.0" and reg.current(name, "staging").version == "V1.2.0"
    reg.set_stage(name, v2.version, "production", "release-pipeline", "canary passed")
    assert reg.current(name, "production").version == "V1.2.0" and reg.current(name, "staging") is None
    history = reg.history(name, "V1.1.0")
    assert [e["stage"] for e in history] == ["production", "archived"]
    assert history[0]["who"] == "release-pipeline" and history[0]["evidence"] == {"rmse": 1.0}
    assert history[1]["why"] == "replaced in production by V1.2.0"

    with pytest.raises(KfreleaseError, match="rejected by validation"):  # a rejected model is never staged
        reg.set_stage(name, bad.version, "staging", "someone", "try anyway")
    with pytest.raises(KfreleaseError, match="unknown stage"):
        reg.set_stage(name, v1.version, "qa", "someone", "")
    with pytest.raises(Conflict):  # entries are immutable: no second create
        reg.store.put_json("models", f"registry/{name}/versions/V1.1.0/entry.json", {}, if_none_match=True)
    with pytest.raises(NotFound, match="no version V9.9.9"):
        reg.get(name, "V9.9.9")


def test_image_is_written_once(stack):
    name = f"image-{uuid.uuid4().hex[:6]}"
    reg = registry()
    reg.register(trained(name))
    assert reg.set_image(name, "V1.1.0", "reg/x:V1.1.0", "sha256:aa").image["digest"] == "sha256:aa"
    assert reg.set_image(name, "V1.1.0", "reg/x:V1.1.0", "sha256:aa").image["digest"] == "sha256:aa"  # same: no-op
    with pytest.raises(Conflict, match="already has image"):
        reg.set_image(name, "V1.1.0", "reg/x:V1.1.0", "sha256:bb")
    assert reg.store.get_json("models", f"artifacts/{name}/V1.1.0/model.json")["image"]["digest"] == "sha256:aa"


def test_a_registration_killed_midway_leaves_no_version_and_the_next_run_goes_on(stack):
    """SIGKILL after the claim and the artifact, before the entry: no version is visible; a retry of the same
    definition and data waits for the dead claim, then registers under the next free number (V1.1.0 is burnt,
    so the definition's next auto revision)."""
    import os
    import subprocess
    import sys

    name = f"crash-{uuid.uuid4().hex[:6]}"
    code = (
        "import sys\nfrom kfrelease.registry import ModelRegistry, TrainedModel\n"
        "from kfrelease.storage import store_for\n"
        "ModelRegistry(store_for('pipeline')).register(TrainedModel(name=sys.argv[1], tag=1, spec_fingerprint='f',"
        " dataset='d', dataset_version='v1', commit='c', run_id='killed', metrics={}, verdict={'passed': True},"
        " input_schema=[], target='y', model_bytes=b'm'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, name],
        env={**os.environ, "KFRELEASE_CRASH_AT": "register.after_artifact"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9  # killed at the crash point
    assert registry().list(name) == []  # the claim and artifact exist, but no version does
    with pytest.raises(NotFound):
        registry().get(name, "V1.1.0")
    retry = registry().register(trained(name, run_id="retry"), same_claim_wait=0.5)
    assert retry.created and retry.version.version == "V1.1.1" and entries(name) == ["V1.1.1"]
