"""Bad input to a release gets a clear error and moves no traffic: a malformed rollout spec, a candidate
that is not in staging, an unreadable metric source."""

from __future__ import annotations

import socket
import uuid

import pytest

from kfrelease.errors import AccessDenied
from kfrelease.registry import ModelRegistry
from kfrelease.release.controller import ReleaseController, ReleaseError
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.storage import store_for
from tests.release.conftest import bad_spec_text
from tests.training.conftest import PrivateDataset

pytestmark = pytest.mark.integration


class RecordingDriver:
    """A TrafficDriver that records what it is asked to apply (the test checks nothing was)."""

    def __init__(self):
        self.applied = []

    def apply(self, state: TrafficState) -> None:
        self.applied.append(state)

    def current(self):
        return self.applied[-1] if self.applied else TrafficState(primary="V1.1.0")


@pytest.fixture
def staged(stack):
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    spec = parse_spec(bad_spec_text(name, ds.name))
    first = run_inline(spec, "a" * 40, settings=stack, containerize=False)
    return stack, name, first.version


def test_a_candidate_not_in_staging_moves_no_traffic(staged, run_cli):
    settings, name, version = staged
    registry = ModelRegistry(store_for("pipeline", settings))
    registry.set_stage(name, version, "production", "test", "first model")
    driver = RecordingDriver()
    spec = load_rollout_spec(model=name)
    with pytest.raises(ReleaseError, match="not in staging"):
        ReleaseController(settings, spec, driver).run(version)
    with pytest.raises(Exception, match="no version V9.9.9"):
        ReleaseController(settings, spec, driver).run("V9.9.9")
    assert driver.applied == []
    proc = run_cli("release", "run", name, version)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not in staging" in proc.stderr


def test_an_unreadable_metric_source_moves_no_traffic(staged, monkeypatch):
    settings, name, version = staged
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("KFRELEASE_PROMETHEUS_PORT", str(closed))
    spec = load_rollout_spec(model=name).with_changes(canary={"metrics_source": "prometheus"})
    driver = RecordingDriver()
    with pytest.raises(ReleaseError, match="metric source 'prometheus'.*no traffic was moved"):
        ReleaseController(settings, spec, driver).run(version)
    assert driver.applied == []
    assert ModelRegistry(store_for("pipeline", settings)).get(name, version).stage == "staging"


def test_a_malformed_rollout_spec_is_refused_before_anything_moves(stack, run_cli, tmp_path):
    from kfrelease.stack.gateway import read_gateway_record

    before = read_gateway_record(stack)
    bad = tmp_path / "rollout.yaml"
    bad.write_text("model: m\ncanary:\n  steps: [50, 25, 100]\n")
    proc = run_cli("release", "run", "m", "V1.1.0", "--spec", str(bad))
    assert proc.returncode == 1 and "not strictly increasing" in proc.stderr and "nothing was changed" in proc.stderr
    bad.write_text("model: m\ncanary:\n  steps: [10, 150]\n")
    proc = run_cli("release", "run", "m", "V1.1.0", "--spec", str(bad))
    assert proc.returncode == 1 and "from 1 to 100" in proc.stderr
    assert read_gateway_record(stack) == before


def test_the_rollout_step_alone_moves_no_traffic_without_a_passed_shadow_gate(staged, monkeypatch):
    """Review eks3 N5: the release identity may run the ``rollout`` component alone (an inline pipeline of just
    that step is admitted as the driver), and it promoted a same-tag candidate whose shadow gate never ran."""
    from kfrelease.release import pipeline_steps
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    settings, name, first = staged
    registry = ModelRegistry(store_for("pipeline", settings))
    registry.set_stage(name, first, "production", "test", "first model")
    spec_text = bad_spec_text(name, registry.get(name, first).entry["dataset"]).replace(
        "constant: 0.0", "constant: 1.0"
    )
    candidate = run_inline(parse_spec(spec_text), "b" * 40, settings=settings, containerize=False).version
    assert candidate != first
    driver = RecordingDriver()
    monkeypatch.setattr(pipeline_steps, "driver_for", lambda *a, **k: driver)
    spec = load_rollout_spec(model=name)
    with pytest.raises(ReleaseError, match=f"no passed shadow gate against production {first};.*no traffic was moved"):
        pipeline_steps.rollout_step(settings, spec, candidate)
    assert driver.applied == [] and registry.get(name, candidate).stage == "staging"
    controller = ReleaseController(settings, spec, driver)
    # review 4 R4: a pass event in the registry history does not count: the pipeline role writes the registry, and
    # on a cluster that is default-editor's (every trusted training step, any run a run creator starts)
    evidence = {"phase": "shadow", "decision": "pass", "production_version": first}
    registry.set_stage(name, candidate, "staging", "test", "shadow gate pass", evidence)
    assert not pipeline_steps.shadow_gate_passed(controller, candidate, first)
    # nor can the pipeline role write the verdict the rollout step reads (the object store refuses it)
    key = pipeline_steps.shadow_verdict_key(name, candidate)
    with pytest.raises(AccessDenied, match="role 'pipeline' may not"):
        store_for("pipeline", settings).put_json(pipeline_steps.RELEASES, key, {**evidence, "candidate": candidate})
    # a pass against another production, or a failed gate, does not count; the verdict the shadow step records does
    for decision, production in (("pass", "V9.9.9"), ("fail", first)):
        pipeline_steps.record_shadow_verdict(settings, name, candidate, production, decision)
        assert not pipeline_steps.shadow_gate_passed(controller, candidate, first)
    pipeline_steps.record_shadow_verdict(settings, name, candidate, first, "pass")
    assert pipeline_steps.shadow_gate_passed(controller, candidate, first)


def test_a_release_step_runs_only_with_the_rollout_spec_recorded_with_the_candidate(stack, monkeypatch):
    """Review 4 R3: a release step's ``spec_yaml`` is a pipeline parameter, which on a cluster lives in Kubeflow
    Pipelines' metadata store, writable by every pod (kubeflow/manifests v1.11.0 and 26.03
    applications/pipeline/upstream/base/metadata/options/istio/istio-authorization-policy.yaml: ALLOW
    ``rules: [{}]``; kubeflow/pipelines 2.16.0 backend/src/v2/driver/resolve.go resolveInputs reads the parameters
    from the parent DAG execution's MLMD ``inputs``). Merged code or the candidate's pickle rewrote it to
    ``shadow.margin: 1e9`` and the gate "passed" on the spec it was given. Now every release step runs with the
    spec recorded with the candidate in the registry and refuses any other, before it builds a driver."""
    from kfrelease.release import pipeline_steps
    from kfrelease.training import run_records
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    settings = stack
    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    spec = parse_spec(bad_spec_text(name, ds.name))
    recorded = load_rollout_spec(model=name).with_changes(shadow={"margin": 0.03, "min_labelled_samples": 200})
    store = store_for("pipeline", settings)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    record = {
        "model": name,
        "spec_fingerprint": spec.fingerprint,
        "spec_json": spec.to_json(),
        "rollout_yaml": recorded.to_yaml(),
        "commit": "a" * 40,
    }
    run_records.create_run(store, run_id, record)
    version = run_inline(spec, "a" * 40, run_id=run_id, settings=settings, containerize=False).version
    built = []
    monkeypatch.setattr(pipeline_steps, "driver_for", lambda *a, **k: built.append(a) or RecordingDriver())
    forged = recorded.with_changes(shadow={"margin": 1e9, "min_labelled_samples": 2})
    for step in (pipeline_steps.preflight_step, pipeline_steps.shadow_step, pipeline_steps.rollout_step):
        with pytest.raises(ReleaseError, match=f"not the rollout spec recorded with {name} {version}.*no traffic"):
            step(settings, forged, version)
    assert built == []  # refused before any driver existed
    # the recorded spec itself, or an empty spec_yaml (the packaged default), runs with the recorded spec
    for given in (recorded, load_rollout_spec(model=name)):
        assert pipeline_steps.recorded_spec(settings, given, version).model_dump() == recorded.model_dump()
    # a version registered without a rollout.yaml: a person's spec on the embedded stack, only the default on a cluster
    bare = run_inline(
        parse_spec(bad_spec_text(name, ds.name).replace("constant: 0.0", "constant: 1.0")),
        "b" * 40,
        settings=settings,
        containerize=False,
    ).version
    assert pipeline_steps.recorded_spec(settings, forged, bare) == forged
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")
    with pytest.raises(ReleaseError, match="not the packaged default rollout spec"):
        pipeline_steps.recorded_spec(settings, forged, bare)
    default = load_rollout_spec(model=name)
    assert pipeline_steps.recorded_spec(settings, default, bare).model_dump() == default.model_dump()
