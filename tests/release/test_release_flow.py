"""The release on the real embedded stack: SeaweedFS, registry, log sink, feedback service, nginx gateway,
KServe model servers, under continuous bounded client traffic (127.0.0.1) with delayed ground truth.

Scenario (the demo's, with small samples): merge 1 -> first model, provisional, production once its spec's
thresholds pass on its own labelled requests; merge 2 (better)
-> shadow -> canary steps -> promoted; merge 3 (worse, offline tolerance widened) -> shadow gate rejects
it, production unchanged. Then a candidate that passes the shadow gate but fails the canary accuracy check
is rolled back at the first step. Across all of it: 0 failed client requests, and every answered request
is in the prediction logs."""

from __future__ import annotations

import pandas as pd
import pytest

from kfrelease.demo.flow import create_release_demo_project
from kfrelease.lake import read_predictions
from kfrelease.registry import ModelRegistry
from kfrelease.release.embedded import run_release
from kfrelease.rollout.spec import CheckSpec
from kfrelease.stack.gateway import LocalGatewayDriver
from kfrelease.storage import store_for
from kfrelease.training.spec import load_project_at_commit, parse_spec
from kfrelease.training.steps import run_inline
from tests.release.conftest import (
    bad_spec_text,
    check_loss_free,
    release_first,
    small_spec,
    traffic,
    wait_logged,
)

pytestmark = pytest.mark.integration


@pytest.mark.slow(seconds=95, waits=True)
def test_demo_scenario_under_load_promotes_the_better_model_and_rejects_the_worse(release_env, run_cli):
    settings, ds, name, tmp = release_env
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name)
    spec = small_spec(name)
    registry = ModelRegistry(store_for("pipeline", settings))

    def train(n):
        model_spec, commit = load_project_at_commit(tmp / "project", shas[n - 1])
        return run_inline(model_spec, commit, settings=settings, containerize=False)

    v1 = train(1)
    assert v1.version == "V1.1.0" and v1.stage == "staging"
    first, first_traffic = release_first(settings, name, v1.version, spec)
    assert first.result == "promoted" and registry.current(name, "production").version == "V1.1.0"
    why = registry.history(name, "V1.1.0")[-1]["why"]  # names its evidence: the live thresholds check
    assert "first model of" in why and "provisional -> production" in why and "thresholds: threshold:" in why
    assert first_traffic.failed == 0, first_traffic.errors[:3]

    # 60 requests/s, as the first model's release: the shadow gate counts labelled pairs, not seconds (V1.2.0 is
    # only ~1.6 % better than V1.1.0: ~1,300 pairs, 52 s at 25/s, 22 s at 60/s)
    gen = traffic(settings, name, rate=60.0)
    try:
        v2 = train(2)
        assert v2.version == "V1.2.0" and v2.stage == "staging"
        second = run_release(settings, name, v2.version, spec)
        assert second.result == "promoted", second.decisions[-1]["why"]
        assert registry.current(name, "production").version == "V1.2.0"
        assert registry.get(name, "V1.1.0").stage == "archived"

        v3 = train(3)
        assert v3.stage == "staging", v3.verdict  # passed offline thanks to the widened tolerance
        # merge 3 is only slightly worse on live traffic (MSE ratio about 1.01): the gate rarely decides within
        # any wait, so it gets 9 s of shadow (about 500 labelled pairs at 60/s) instead of 60
        third = run_release(settings, name, v3.version, small_spec(name, shadow={"max_wait_seconds": 9}))
        # worse on live traffic: failed by the shadow gate, or at the latest by a canary check, or (when
        # the evidence does not decide within shadow.max_wait_seconds) stopped with production unchanged
        assert third.result in ("rejected", "rolled_back", "stopped"), third.decisions[-1]["why"]
        assert registry.get(name, v3.version).stage == ("staging" if third.result == "stopped" else "rejected")
        assert registry.current(name, "production").version == "V1.2.0"
    finally:
        stats = gen.stop()

    assert stats.failed == 0, stats.errors
    assert stats.sent == stats.ok > 200
    if third.result in (
        "rejected",
        "stopped",
    ):  # stopped in shadow: the worse model never answered a client
        assert set(stats.versions) <= {"V1.1.0", "V1.2.0"}

    # every decision is in the registry history, with its numbers
    h2 = registry.history(name, "V1.2.0")
    phases = [e["evidence"].get("phase") for e in h2]
    assert phases[0] is None and phases[1] == "shadow" and phases[-1] == "promote"
    gate = h2[1]["evidence"]["test"]
    assert gate["decision"] == "pass" and gate["ratio_interval"][1] < 1 + gate["margin"]
    assert f"n={gate['n']}" in h2[1]["why"] and "confidence sequence" in h2[1]["why"]
    # the decision shows the tail check and the worst slice, each with its interval (as the demo prints it)
    assert "tail: pass, rate difference " in h2[1]["why"] and "worst slice " in h2[1]["why"], h2[1]["why"]
    canary = [e for e in h2 if e["evidence"].get("phase") in ("canary", "promote")]
    assert [e["evidence"]["weight"] for e in canary] == [25, 50, 100]
    assert all("error_rate" in e["why"] and "p99" in e["why"] for e in canary)
    accuracy = [next(c for c in e["evidence"]["checks"] if c["name"] == "accuracy") for e in canary]
    assert all(c["status"] in ("passed", "skipped") for c in accuracy)  # never failed: V1.2.0 is better
    h3 = registry.history(name, v3.version)
    assert h3[-1]["evidence"]["phase"] in ("shadow", "rollback")
    if third.result == "rejected":  # the deciding check (accuracy, tail or a slice) is named, its bound crossed
        test3 = h3[-1]["evidence"]["test"]
        deciding = next(c for c in test3["checks"] if (c["check"], c["slice"]) == (test3["check"], test3["slice"]))
        assert deciding["status"] == "fail" and test3["check"] in h3[-1]["why"]
        floor = {"accuracy": 1.0, "tail": 0.0}.get(deciding["check"], 1.1)  # a slice: 1 + slice_margin
        assert deciding["interval"][0] > floor, deciding
        assert h3[-1]["evidence"]["n"] >= 42
        assert h3[-1]["evidence"]["report"].endswith("shadow-gate.html")
    elif third.result == "stopped":
        assert "insufficient evidence" in h3[-1]["why"] and "production unchanged" in h3[-1]["why"]
    else:
        acc = next(c for c in h3[-1]["evidence"]["checks"] if c["name"] == "accuracy")
        assert acc["status"] == "failed" and acc["interval"][0] > 1.0
    assert h2[1]["evidence"]["report"].endswith("shadow-gate.html")

    # the CLI shows every decision with its numbers
    shown = run_cli("models", "history", name, "V1.2.0", check=True).stdout
    assert (
        f"{h2[1]['evidence']['rmse_ratio']:.3f}" in shown
        and f"n={gate['n']}" in shown
        and "p99" in shown
        and "promoted" in shown
    )
    status = run_cli("release", "status", name, check=True).stdout
    assert "primary V1.2.0" in status
    assert ("insufficient" if third.result == "stopped" else "rejected") in status

    check_loss_free(settings, name, stats)  # every answered request is in the prediction logs


@pytest.mark.slow(seconds=31, waits=True)
def test_a_candidate_failing_the_canary_check_is_rolled_back_within_one_interval(release_env, monkeypatch):
    settings, ds, name, tmp = release_env
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name)
    registry = ModelRegistry(store_for("pipeline", settings))
    model_spec, commit = load_project_at_commit(tmp / "project", shas[0])
    v1 = run_inline(model_spec, commit, settings=settings, containerize=False)
    # the shadow gate is lenient here (margin 50: up to 51 x production's MSE), the canary's accuracy check is not
    spec = small_spec(
        name,
        # (no tail or slice checks in the shadow: every answer of the constant model is a gross error)
        shadow={
            "margin": 50.0,
            "fail_above": "margin",
            "min_labelled_samples": 20,
            "min_exposure": 0,
            "worst_slice": False,
        },
        canary={
            "steps": (20, 50, 100),
            "interval_seconds": 6,
            "checks": (
                *small_spec(name).canary.checks[:3],
                CheckSpec(name="accuracy", source="labels", min_samples=8, margin=0.02),
            ),
        },
    )
    assert release_first(settings, name, v1.version, spec)[0].result == "promoted"
    # offline validation takes its paired test from the release's rollout spec (no tail check, margin 50): the
    # constant model passes it, as it passes the shadow gate, and only the canary's accuracy check stops it
    (tmp / "rollout.yaml").write_text(spec.to_yaml())
    monkeypatch.setenv("KFRELEASE_ROLLOUT_SPEC", str(tmp / "rollout.yaml"))
    bad = run_inline(
        parse_spec(bad_spec_text(name, ds.name)),
        "b" * 40,
        settings=settings,
        containerize=False,
    )
    assert bad.stage == "staging" and bad.version == "V1.2.0"

    with traffic(settings, name) as gen:
        outcome = run_release(settings, name, bad.version, spec)
        stats = gen.stop()
    assert outcome.result == "rolled_back", outcome.decisions[-1]["why"]
    last = registry.history(name, bad.version)[-1]
    assert last["stage"] == "rejected" and last["evidence"]["action"] == "rollback"
    # rolled back at the first step whose paired accuracy test decided (earlier ones: too few labels, or
    # undecided, never passed)
    history = registry.history(name, bad.version)
    earlier = [e for e in history if e["evidence"].get("phase") == "canary"]
    for e in earlier:
        assert next(c for c in e["evidence"]["checks"] if c["name"] == "accuracy")["status"] == "skipped"
    weight = last["evidence"]["weight"]
    assert weight in (20, 50)
    acc = next(c for c in last["evidence"]["checks"] if c["name"] == "accuracy")
    assert acc["status"] == "failed" and acc["interval"][0] > 1.0 and acc["n"] >= 8
    # rolled back within one interval of the failed check
    checked = pd.Timestamp(last["evidence"]["window"]["until"])
    assert (pd.Timestamp(last["when"]) - checked).total_seconds() < spec.canary.interval_seconds
    assert registry.current(name, "production").version == v1.version
    assert LocalGatewayDriver(settings, spec).current().canary is None

    # 0 failed requests; every answer logged; the bad model answered about its step's share, never after
    assert stats.failed == 0, stats.errors
    wait_logged(settings, name, stats.ok_ids)
    frame = read_predictions(store_for("monitoring", settings), name)
    client = frame[frame["request_id"].isin(set(stats.ok_ids)) & (frame["stage"] != "staging")]  # not the shadow
    served_bad = client[client["model_version"] == bad.version]
    during = client[(client["time"] >= served_bad["time"].min()) & (client["time"] <= pd.Timestamp(last["when"]))]
    share = len(served_bad) / len(during)
    assert len(served_bad) > 0 and share <= weight / 100 + 0.10, (
        len(served_bad),
        len(during),
    )
    assert served_bad["time"].max() <= pd.Timestamp(last["when"])  # nothing after the rollback
    check_loss_free(settings, name, stats)
