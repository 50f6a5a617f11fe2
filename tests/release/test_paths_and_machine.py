"""No path to production without evidence, and canary checks that judge the model, not the machine (issue 23
items 2 and 5): which path a release takes, the refusal of a spec without absolute thresholds, the live
one-sample threshold test, latency and errors against production's over the same interval, rollbacks that
leave a version releasable, and model servers whose native thread pools are pinned."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kfrelease.registry import ModelRegistry
from kfrelease.release.checks import Measurement, judge
from kfrelease.release.controller import ReleaseController, ReleaseError, release_path
from kfrelease.release.decision import threshold_decide, threshold_limit
from kfrelease.release.signals import StepHealth
from kfrelease.rollout.spec import CheckSpec, GateRule, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.serving.threads import cores_given
from kfrelease.storage import store_for
from tests.release.conftest import bad_spec_text
from tests.training.conftest import PrivateDataset

P99 = CheckSpec(name="p99_latency_ms", series="p99_latency_ms", max=250.0, min_samples=5)
ERRORS = CheckSpec(name="error_rate", series="error_rate", max=0.01, min_samples=5)


def version(tag: int, features: list[str]):
    return SimpleNamespace(tag=tag, features=features)


def test_which_path_a_release_takes():
    x = ["age", "bmi"]
    assert release_path(version(1, x), None) == "first"  # nothing in production: no traffic to split
    assert release_path(version(1, x), version(1, x)) == "shadow"
    assert release_path(version(2, x), version(1, list(reversed(x)))) == "shadow"  # a tag bump, same inputs
    assert release_path(version(2, [*x, "bp"]), version(1, x)) == "canary"  # inputs differ: thresholds live


def test_a_p99_of_too_few_requests_is_not_judged():
    """The p99 of 60 requests is their maximum: skipped, never failed, below 500 requests."""
    r = judge(P99, Measurement(900.0, 60, baseline=20.0))
    assert r.status == "skipped" and "needs 500" in r.detail


def test_a_slow_canary_on_a_loaded_machine_passes_when_production_is_as_slow():
    r = judge(P99, Measurement(736.0, 600, baseline=690.0))  # both slow over the same interval: the machine
    assert r.status == "passed" and "the machine" in r.describe() and "vs production 690" in r.describe()
    slower = judge(P99, Measurement(736.0, 600, baseline=20.0))
    assert slower.status == "failed" and "1.5 x production's 20" in slower.detail
    assert judge(P99, Measurement(30.0, 600, baseline=25.0)).status == "passed"


def test_the_error_rate_is_compared_with_productions():
    assert judge(ERRORS, Measurement(0.03, 600, baseline=0.025)).status == "passed"  # both failing: not the model
    assert judge(ERRORS, Measurement(0.03, 600, baseline=0.0)).status == "failed"
    assert judge(ERRORS, Measurement(0.03, 600)).status == "failed"  # no baseline: the absolute bound


def test_the_live_threshold_test_passes_a_good_model_and_fails_a_bad_one():
    rng = np.random.default_rng(1)
    truth = rng.normal(150, 50, 1500)
    rule = GateRule(min_exposure=0.01)
    limit = threshold_limit("max_rmse", 60.0)
    good = threshold_decide(truth, truth + rng.normal(0, 40, 1500), "max_rmse", limit, rule)
    bad = threshold_decide(truth, truth + rng.normal(0, 75, 1500), "max_rmse", limit, rule)
    assert good.decision == "pass" and good.ratio_interval[1] < 1 and good.check == "threshold:max_rmse"
    assert bad.decision == "fail" and bad.ratio_interval[0] > 1 and "max_rmse" in bad.reason
    r2 = threshold_limit("min_r2", 0.3, target_variance=2500.0)
    assert r2 == pytest.approx(1750.0)
    with pytest.raises(Exception, match="variance"):
        threshold_limit("min_r2", 0.3)


def test_cores_given_follow_the_limit_the_server_was_given(tmp_path):
    quota = tmp_path / "cpu.max"
    assert cores_given({"OMP_NUM_THREADS": "3"}, quota) == 3
    quota.write_text("150000 100000\n")
    assert cores_given({}, quota) == 1
    quota.write_text("400000 100000\n")
    assert cores_given({}, quota) == 4
    quota.write_text("max 100000\n")
    assert cores_given({}, quota) == 1  # no quota (the embedded stack): one thread per model server


def test_a_model_server_process_pins_openmp_and_blas_to_its_cores():
    """In a fresh process with HistGradientBoosting loaded (its OpenMP runtime), as a model server starts."""
    code = (
        "import sklearn.ensemble, numpy\n"
        "from threadpoolctl import threadpool_info\n"
        "from kfrelease.serving.threads import pin_native_threads\n"
        "pin_native_threads()\n"
        "print(sorted({(p['user_api'], p['num_threads']) for p in threadpool_info()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    pools = eval(out.stdout)
    assert ("openmp", 1) in pools and all(n == 1 for _, n in pools)
    for server, load in (("host.py", "host.sync()"), ("predictor.py", "predictor = build(args)")):
        text = (Path(__file__).parents[2] / "serving" / server).read_text()  # both entry points pin first
        assert text.index("pin_native_threads()") < text.index(load)


# --- on the stack: the controller with stand-in metric sources (the model servers' /metrics) ----------------


class RecordingDriver:
    def __init__(self, primary: str | None):
        self.applied = [TrafficState(primary=primary)]

    def apply(self, state: TrafficState) -> None:
        self.applied.append(state)

    def current(self):
        return self.applied[-1]


class NoSleep:
    def monotonic(self) -> float:
        return 0.0

    def sleep(self, seconds: float) -> None:
        pass


class Series:
    """A stand-in for one model server's /metrics over the canary's steps: one StepHealth per step."""

    def __init__(self, p99s: list[float], error_rate: float = 0.0):
        self.p99s, self.error_rate = list(p99s), error_rate

    def start(self):
        return object()

    def health(self, start, seconds: float) -> StepHealth:
        p99 = self.p99s.pop(0) if len(self.p99s) > 1 else self.p99s[0]
        return StepHealth(600, 600 * self.error_rate, self.error_rate, {0.99: p99})


def spec_text(name: str, dataset: str, estimator: str, thresholds: str = "max_rmse: 200.0, ") -> str:
    text = bad_spec_text(name, dataset)
    text = text.replace("{class: sklearn.dummy.DummyRegressor, params: {strategy: constant, constant: 0.0}}", estimator)
    return text.replace("max_rmse: 200.0, ", thresholds)


@pytest.fixture
def two_versions(stack):
    """V1.1.0 (a mean predictor) in production and V1.2.0 (HistGradientBoosting: OpenMP threads) in staging."""
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    registry = ModelRegistry(store_for("pipeline", stack))
    mean = "{class: sklearn.dummy.DummyRegressor, params: {strategy: mean}}"
    v1 = run_inline(parse_spec(spec_text(name, ds.name, mean)), "a" * 40, settings=stack, containerize=False)
    registry.set_stage(name, v1.version, "production", "test", "in production")
    hgb = "{class: sklearn.ensemble.HistGradientBoostingRegressor, params: {max_iter: 50}}"
    v2 = run_inline(parse_spec(spec_text(name, ds.name, hgb)), "b" * 40, settings=stack, containerize=False)
    assert v2.stage == "staging", v2.verdict
    return stack, name, registry, v1.version, v2.version, ds


def canary_spec(name: str):
    spec = load_rollout_spec(model=name)
    return spec.with_changes(
        canary={
            "steps": (50, 100),
            "interval_seconds": 1,
            "checks": (
                CheckSpec(name="requests", series="requests", min_samples=5),
                ERRORS,
                P99,
                CheckSpec(name="accuracy", source="labels", min_samples=10),
            ),
        }
    )


@pytest.mark.integration
def test_a_latency_blip_of_a_multithreaded_candidate_does_not_reject_it_for_good(two_versions):
    settings, name, registry, v1, v2, _ = two_versions
    spec = canary_spec(name)

    def controller(canary_p99, production_p99):
        canary, production = Series(canary_p99), Series(production_p99)  # one reading per step
        return ReleaseController(
            settings,
            spec,
            RecordingDriver(v1),
            signals=lambda _v: canary,
            baseline_signals=lambda _v: production,
            clock=NoSleep(),
            report=False,
        )

    # a blip at the first step while production was fast over the same interval: rolled back, NOT rejected
    first = controller([736.0, 30.0], [20.0]).canary(v2, v1)
    assert first.result == "rolled_back"
    last = registry.history(name, v2)[-1]
    assert last["stage"] == "staging" and last["evidence"]["rejected"] is False
    assert "releasable again" in last["why"] and "1.5 x production's 20" in last["why"]
    # released again: its latency matches production's (a loaded machine slows both): promoted
    second = controller([700.0, 40.0], [650.0, 35.0]).canary(v2, v1)
    assert second.result == "promoted", second.decisions[-1]["why"]
    assert registry.current(name, "production").version == v2


@pytest.mark.integration
def test_a_tag_bump_with_other_inputs_needs_the_live_threshold_check_to_pass(two_versions):
    """A tag bump whose inputs differ from production's: canary steps with the derived ``thresholds`` check,
    which holds the last step until it passes; without labelled traffic it never does: rolled back after
    shadow.max_wait_seconds, left in staging (insufficient evidence, not a failure)."""
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    settings, name, registry, v1, _, ds = two_versions
    text = spec_text(name, ds.name, "{class: sklearn.linear_model.Ridge, params: {alpha: 1.0}}")
    text = text.replace("tag: 1", "tag: 2").replace(", bmi_bp]", "]")
    bump = run_inline(parse_spec(text), "c" * 40, settings=settings, containerize=False)
    mv, prod = registry.get(name, bump.version), registry.current(name, "production")
    assert release_path(mv, prod) == "canary"
    spec = canary_spec(name).with_changes(shadow={"max_wait_seconds": 3})
    c = ReleaseController(
        settings,
        spec,
        RecordingDriver(v1),
        signals=lambda _v: Series([30.0]),
        baseline_signals=lambda _v: Series([30.0]),
        clock=NoSleep(),
        report=False,
    )
    out = c.canary(bump.version, v1)
    assert out.result == "rolled_back"
    history = registry.history(name, bump.version)
    assert all(any(ch["name"] == "thresholds" for ch in e["evidence"]["checks"]) for e in history[1:])
    assert all(not any(ch["name"] == "accuracy" for ch in e["evidence"]["checks"]) for e in history[1:])
    assert history[-1]["stage"] == "staging" and registry.current(name, "production").version == v1


@pytest.mark.integration
def test_a_spec_without_absolute_thresholds_cannot_be_released(stack):
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    text = spec_text(name, ds.name, "{class: sklearn.linear_model.Ridge, params: {alpha: 1.0}}", thresholds="")
    text = text.replace("min_r2: -100.0, ", "")
    v = run_inline(parse_spec(text), "d" * 40, settings=stack, containerize=False)
    driver = RecordingDriver("V0.0.0")
    spec = load_rollout_spec(model=name)
    with pytest.raises(ReleaseError) as err:
        ReleaseController(stack, spec, driver).run(v.version)
    message = str(err.value)
    assert v.stage != "staging" or ("validation.max_rmse" in message and "validation.min_r2" in message)
    assert len(driver.applied) == 1  # no traffic moved
    assert ModelRegistry(store_for("pipeline", stack)).current(name, "production") is None


@pytest.mark.integration
@pytest.mark.slow(seconds=55, waits=True)
def test_a_tag_bump_reaches_production_only_through_shadow_and_a_passed_live_threshold_check(release_env):
    """Tag 2 with production's inputs: shadowed against the tag-1 production, then canary steps whose last
    one waits for the one-sample test of the spec's thresholds on the canary's own labelled requests."""
    from kfrelease.demo.flow import create_release_demo_project
    from kfrelease.release.embedded import run_release
    from kfrelease.training.spec import load_project_at_commit, parse_spec
    from kfrelease.training.steps import run_inline
    from tests.release.conftest import release_first, small_spec, traffic

    settings, ds, name, tmp = release_env
    shas = create_release_demo_project(tmp / "project", name=name, dataset=ds.name)
    registry = ModelRegistry(store_for("pipeline", settings))
    first_spec, commit = load_project_at_commit(tmp / "project", shas[0])
    v1 = run_inline(first_spec, commit, settings=settings, containerize=False)
    # the path is tested here, not the gate's margin (test_release_flow's demo scenario holds this pair to 0.02):
    # tag 2 is only ~1.6 % better than tag 1, so at margin 0.02 the gate needed ~1,300 labelled pairs (52 s at
    # 25 requests/s); at 0.1 it passes after a few hundred, and still only after min_exposure's ~375
    spec = small_spec(name, shadow={"margin": 0.1})
    assert release_first(settings, name, v1.version, spec)[0].result == "promoted"
    second_spec, commit = load_project_at_commit(tmp / "project", shas[1])
    # tag 2 keeps max_rmse 70 (live MSE about 0.7 of its square) and drops min_r2 (its live R² is about
    # 0.2-0.35: the live test would need a few thousand labelled requests to pass 0.1)
    text = second_spec.text.replace("tag: 1", "tag: 2")
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("min_r2:")) + "\n"
    assert "min_r2" not in text
    bumped = parse_spec(text, code=second_spec.code)
    v2 = run_inline(bumped, commit, settings=settings, containerize=False)
    assert v2.version == "V2.1.0" and v2.stage == "staging", v2.verdict
    # 60 requests/s as for the first model: the live thresholds check counts labelled requests, not seconds
    with traffic(settings, name, rate=60.0) as gen:
        out = run_release(settings, name, v2.version, spec)
        stats = gen.stop()
    assert out.result == "promoted", out.decisions[-1]["why"]
    assert stats.failed == 0, stats.errors
    history = registry.history(name, v2.version)
    phases = [e["evidence"].get("phase") for e in history]
    assert "shadow" in phases and phases[-1] == "promote"  # shadowed: its inputs are production's
    last = next(c for c in history[-1]["evidence"]["checks"] if c["name"] == "thresholds")
    assert last["status"] == "passed" and last["interval"][1] < 1.0  # its MSE surely below max_rmse^2
    assert "thresholds" in history[-1]["why"] and history[-1]["evidence"]["tag_bump"] is True


@pytest.fixture
def first_version(stack):
    """A first model (no production model at all) in staging."""
    from kfrelease.training.spec import parse_spec
    from kfrelease.training.steps import run_inline

    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    ridge = "{class: sklearn.linear_model.Ridge, params: {alpha: 1.0}}"
    v = run_inline(parse_spec(spec_text(name, ds.name, ridge)), "f" * 40, settings=stack, containerize=False)
    assert v.stage == "staging", v.verdict
    return stack, name, ModelRegistry(store_for("pipeline", stack)), v.version


@pytest.mark.integration
@pytest.mark.parametrize("at_limit", ["keep_staging", "reject"])
def test_a_first_model_undecided_by_the_limit_is_withdrawn_and_never_production(first_version, at_limit):
    """No labelled request arrives: the thresholds check holds the provisional step until
    shadow.max_wait_seconds, then the first model is withdrawn (the conservative choice: nothing unproven keeps
    answering on its own), left in staging, or rejected with shadow.at_limit: reject."""
    settings, name, registry, v = first_version
    spec = canary_spec(name).with_changes(shadow={"max_wait_seconds": 3, "at_limit": at_limit})
    driver = RecordingDriver(None)
    c = ReleaseController(settings, spec, driver, signals=lambda _v: Series([30.0]), clock=NoSleep(), report=False)
    out = c.run(v)
    assert out.result == ("rejected" if at_limit == "reject" else "rolled_back")
    assert driver.applied[1] == TrafficState(primary=None, canary=v, canary_weight=100)  # provisional
    assert driver.applied[-1].versions() == [] and "insufficient evidence" in driver.applied[-1].unavailable
    history = registry.history(name, v)
    assert [e["evidence"].get("phase") for e in history[1:3]] == ["provisional", "provisional"]
    assert all(e["stage"] != "production" for e in history) and registry.current(name, "production") is None
    held = next(ch for ch in history[-1]["evidence"]["checks"] if ch["name"] == "thresholds")
    assert held["status"] == "held" and history[-1]["evidence"]["undecided"] is True
    assert history[-1]["stage"] == ("rejected" if at_limit == "reject" else "staging")
    assert "insufficient evidence" in history[-1]["why"]


@pytest.mark.integration
def test_a_first_model_withdrawn_for_its_error_rate_stays_releasable(first_version):
    """An infrastructure cause (its error rate, with no production to compare with: the absolute bound) withdraws
    it but does not reject it: only an accuracy decision does."""
    settings, name, registry, v = first_version
    driver = RecordingDriver(None)
    c = ReleaseController(
        settings, canary_spec(name), driver, signals=lambda _v: Series([30.0], 0.2), clock=NoSleep(), report=False
    )
    out = c.run(v)
    assert out.result == "rolled_back" and registry.get(name, v).stage == "staging"
    last = registry.history(name, v)[-1]
    assert last["evidence"]["rejected"] is False and "a traffic check failed" in last["why"]
    assert "error_rate 0.2" in last["why"] and "releasable again" in last["why"]
    assert "a traffic check failed" in driver.applied[-1].unavailable and registry.current(name, "production") is None
