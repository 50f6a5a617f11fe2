"""A first model (no production model at all) reaches production only through live evidence (issue 23, Build 2):
it serves all traffic as provisional, there being nothing to split against or compare with, and becomes
production once the one-sample sequential test of its spec's absolute thresholds passes on its own labelled
requests (and its traffic checks pass); a first model that is wrong on live requests is rolled back (no
production model again: the gateway answers 503 naming why) and rejected, never production. On the real
embedded stack: gateway, model servers, prediction logs, feedback, registry."""

from __future__ import annotations

import uuid

import pytest
import yaml

from kfrelease import httpcalls
from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.spec import load_spec
from kfrelease.data.spec import parse_spec as parse_dataset_spec
from kfrelease.demo.data import batches_of
from kfrelease.demo.flow import create_release_demo_project
from kfrelease.demo.project import second_spec_variant
from kfrelease.demo.traffic import friedman_rows, holdout_rows
from kfrelease.registry import ModelRegistry
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack.gateway import LocalGatewayDriver
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit, parse_spec
from kfrelease.training.steps import run_inline
from tests.release.conftest import release_first, small_spec

pytestmark = pytest.mark.integration


def _history_never_production(registry, model: str, version: str) -> list[dict]:
    history = registry.history(model, version)
    assert all(e["stage"] != "production" for e in history), [e["why"] for e in history]
    return history


def test_a_first_model_that_meets_its_thresholds_goes_provisional_then_production(stack):
    """The demo's second model (Friedman #1 data, a ridge; max_rmse 6, min_r2 0.3) on a private dataset."""
    data = f"friedman-{uuid.uuid4().hex[:8]}"
    doc = yaml.safe_load(load_spec("friedman").text)
    doc["name"], doc["source"] = data, {"prefix": f"{data}/"}
    engineer = store_for("data-engineer")
    engineer.put_bytes("raw", f"{data}/batch-1.csv", batches_of("friedman")[0].to_csv(index=False).encode())
    run_data_pipeline(parse_dataset_spec(yaml.safe_dump(doc), data), engineer)
    model = f"friedman-response-{uuid.uuid4().hex[:6]}"
    v = run_inline(
        parse_spec(second_spec_variant(1, name=model, dataset=data)), "e" * 40, settings=stack, containerize=False
    )
    assert v.stage == "staging", v.verdict
    registry = ModelRegistry(store_for("pipeline", stack))
    spec = small_spec(model)
    try:
        out, stats = release_first(stack, model, v.version, spec, rows=friedman_rows())
        assert out.result == "promoted", out.decisions[-1]["why"]
        history = registry.history(model, v.version)
        phases = [e["evidence"].get("phase") for e in history]
        assert phases[1] == "provisional" and phases[-1] == "promote", phases
        assert all(e["stage"] == "staging" for e in history[:-1])  # provisional is not production
        assert "nothing to split against or compare with" in history[1]["why"] and "provisional" in history[1]["why"]
        last = history[-1]
        assert last["stage"] == "production" and last["evidence"]["replaces"] is None
        thresholds = next(c for c in last["evidence"]["checks"] if c["name"] == "thresholds")
        assert thresholds["status"] == "passed" and thresholds["interval"][1] < 1.0  # its loss surely below the limit
        test = last["evidence"]["test"]
        assert test["decision"] == "pass" and test["ratio_interval"][1] < 1.0 and test["n"] >= 8
        assert (
            "thresholds: threshold:" in last["why"]
            and " passed: " in last["why"]
            and "labelled requests" in last["why"]
        )
        assert registry.current(model, "production").version == v.version
        assert LocalGatewayDriver(stack, spec).current() == TrafficState(primary=v.version)
        assert stats.failed == 0 and stats.ok > 100, stats.errors[:3]
        assert set(stats.versions) == {v.version}
    finally:
        LocalGatewayDriver(stack, spec).forget()


def test_a_first_model_wrong_on_live_requests_is_rolled_back_and_rejected_never_production(release_env):
    """Merge 1 of the demo (max_rmse 70) passes offline; live, its answers are ~250 off the labels that
    arrive (its inputs moved or its code broke in serving: the held-out rows no longer describe its traffic)."""
    settings, ds, name, tmp = release_env
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name)
    model_spec, commit = load_project_at_commit(tmp / "project", shas[0])
    v1 = run_inline(model_spec, commit, settings=settings, containerize=False)
    assert v1.stage == "staging", v1.verdict
    registry = ModelRegistry(store_for("pipeline", settings))
    wrong = [(features, truth + 250.0) for features, truth in holdout_rows()]
    out, stats = release_first(settings, name, v1.version, small_spec(name), rows=wrong)

    assert out.result == "rejected", out.decisions[-1]["why"]
    history = _history_never_production(registry, name, v1.version)
    last = history[-1]
    assert last["stage"] == "rejected" and last["evidence"]["phase"] == "rollback" and last["evidence"]["rejected"]
    failed = next(c for c in last["evidence"]["checks"] if c["name"] == "thresholds")
    assert failed["status"] == "failed" and failed["interval"][0] > 1.0  # its loss surely above the limit
    assert "its spec's thresholds failed on live requests" in last["why"] and "no production model" in last["why"]
    assert registry.current(name, "production") is None
    assert stats.ok > 0 and set(stats.versions) == {v1.version}  # it served (provisional) until rolled back

    # no production model again: the gateway says why, in a 503 (not a 404 that names no reason)
    state = LocalGatewayDriver(settings, small_spec(name)).current()
    assert state.versions() == [] and "rolled back" in state.unavailable
    r = httpcalls.post(
        settings.url("gateway", f"/v1/models/{name}:predict"), json={"instances": [[0.0] * 11]}, timeout=10
    )
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert f"{name} has no production model" in error and v1.version in error and "rolled back" in error
    assert "thresholds failed" in error and "rejected" in error
    listed = httpcalls.get(settings.url("gateway", "/v1/models"), timeout=10).json()["models"]
    assert name not in listed
