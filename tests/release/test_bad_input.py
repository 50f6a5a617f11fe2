"""Bad input to a release gets a clear error and moves no traffic: a malformed rollout spec, a candidate
that is not in staging, an unreadable metric source."""

from __future__ import annotations

import socket
import uuid

import pytest

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
