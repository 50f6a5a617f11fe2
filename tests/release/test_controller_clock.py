"""``ReleaseController.canary`` with an injected clock: the canary's waits happen on the test's clock (no
second passes), so each step's interval, holds, a resumed release and unreadable signals are checked in
milliseconds. The registry is the session stack's (SeaweedFS); the metric source is scripted per step (a
stand-in for one model server's /metrics, as in ``test_paths_and_machine``), and the traffic driver records
the states the controller asks for."""

from __future__ import annotations

import uuid

import pytest

from kfrelease.registry import ModelRegistry
from kfrelease.release.controller import ReleaseController
from kfrelease.release.signals import MetricSourceError, StepHealth
from kfrelease.rollout.spec import CheckSpec, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.storage import store_for

PRODUCTION, CANDIDATE = "V1.1.0", "V1.2.0"
INTERVAL = 60
FAST = StepHealth(requests=600, errors=0, error_rate=0.0, latency_ms={0.99: 20.0})
QUIET = StepHealth(requests=2, errors=0, error_rate=0.0, latency_ms={0.99: None})  # below every check's min_samples


class FakeClock:
    """The controller's time (``monotonic`` and ``sleep``): sleeping moves it on at once and is recorded."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Steps:
    """The candidate's metrics, one reading per canary step: a StepHealth, or an exception raised by
    ``start`` ("start") or by ``health`` ("health") as a model server that does not answer its /metrics."""

    def __init__(self, *readings) -> None:
        self.readings = list(readings)
        self.current = None

    def __call__(self, version: str) -> Steps:
        assert version == CANDIDATE, version
        self.current = self.readings.pop(0)
        return self

    def start(self):
        if self.current == "start":
            raise MetricSourceError("the canary's /metrics did not answer (connection refused)")
        return object()

    def health(self, start, seconds: float) -> StepHealth:
        assert seconds == INTERVAL
        if self.current == "health":
            raise MetricSourceError("the canary's /metrics did not answer (timed out)")
        return self.current


class RecordingDriver:
    """The traffic driver's contract (``apply``, ``current``), recording each state asked for."""

    def __init__(self, current: TrafficState) -> None:
        self.applied = [current]

    def apply(self, state: TrafficState) -> None:
        self.applied.append(state)

    def current(self) -> TrafficState:
        return self.applied[-1]


@pytest.fixture
def release(stack):
    """A model with PRODUCTION in production and CANDIDATE in staging (entries written as training does,
    nothing trained), and a function building its controller on a fake clock."""
    name = f"clock-{uuid.uuid4().hex[:8]}"
    store = store_for("pipeline", stack)
    registry = ModelRegistry(store)
    schema = [{"name": "x", "dtype": "float64"}]
    for version, stage in ((PRODUCTION, "production"), (CANDIDATE, "staging")):
        registry.put_entry(
            {"name": name, "version": version, "tag": 1, "input_schema": schema, "verdict": {"passed": True}}
        )
        registry.set_stage(name, version, stage, "test", f"{stage} for this test")
    spec = load_rollout_spec(model=name).with_changes(
        canary={
            "steps": (25, 50, 100),
            "interval_seconds": INTERVAL,
            "max_holds": 2,
            "failure_threshold": 1,
            "checks": (
                CheckSpec(name="requests", series="requests", min_samples=50),
                CheckSpec(name="error_rate", series="error_rate", max=0.01, min_samples=50),
            ),
        }
    )

    def controller(signals: Steps, current: TrafficState | None = None):
        clock = FakeClock()
        driver = RecordingDriver(current or TrafficState(primary=PRODUCTION))
        c = ReleaseController(stack, spec, driver, store=store, signals=signals, clock=clock, report=False)
        return c, clock, driver

    return name, registry, controller


def weights(driver: RecordingDriver) -> list:
    return [s.canary_weight if s.canary else s.primary for s in driver.applied[1:]]


def test_every_step_waits_its_interval_on_the_injected_clock_and_passes_promote(release):
    name, registry, controller = release
    c, clock, driver = controller(Steps(FAST, FAST, FAST))
    outcome = c.canary(CANDIDATE, PRODUCTION)
    assert outcome.result == "promoted"
    assert clock.sleeps == [INTERVAL] * 3  # one interval per step, on the test's clock: no second passed
    assert weights(driver) == [25, 50, 100, CANDIDATE]
    assert registry.current(name, "production").version == CANDIDATE


def test_too_few_requests_hold_the_step_and_more_than_max_holds_roll_back(release):
    name, registry, controller = release
    # held twice at 25 % (max_holds 2), then enough traffic: the step advances and the release goes on
    c, clock, driver = controller(Steps(QUIET, QUIET, FAST, FAST, FAST))
    assert c.canary(CANDIDATE, PRODUCTION).result == "promoted"
    assert weights(driver) == [25, 25, 25, 50, 100, CANDIDATE]
    held = [e for e in registry.history(name, CANDIDATE) if e["evidence"].get("action") == "hold"]
    assert [e["evidence"]["holds"] for e in held] == [1, 2]
    assert "hold 1 of 2" in held[0]["why"] and "requests" in held[0]["why"]
    assert clock.sleeps == [INTERVAL] * 5


def test_a_canary_held_past_max_holds_rolls_back_and_stays_releasable(release):
    name, registry, controller = release
    c, clock, driver = controller(Steps(QUIET, QUIET, QUIET))
    outcome = c.canary(CANDIDATE, PRODUCTION)
    assert outcome.result == "rolled_back"
    assert weights(driver) == [25, 25, 25, PRODUCTION]  # all traffic back to production
    last = registry.history(name, CANDIDATE)[-1]
    assert last["stage"] == "staging" and last["evidence"]["rejected"] is False
    assert "held 3 intervals in a row (max_holds 2)" in last["why"]
    assert registry.current(name, "production").version == PRODUCTION
    assert clock.sleeps == [INTERVAL] * 3


def test_a_rerun_release_resumes_at_the_step_the_traffic_is_at(release):
    _, _, controller = release
    # the release's pod was evicted at 50 %: its step runs again and starts there, not at 25 %
    c, clock, driver = controller(
        Steps(FAST, FAST), TrafficState(primary=PRODUCTION, canary=CANDIDATE, canary_weight=50)
    )
    assert c.canary(CANDIDATE, PRODUCTION).result == "promoted"
    assert weights(driver) == [50, 100, CANDIDATE]
    assert clock.sleeps == [INTERVAL] * 2


def test_another_candidate_at_the_canary_does_not_resume(release):
    _, _, controller = release
    c, _, driver = controller(
        Steps(FAST, FAST, FAST), TrafficState(primary=PRODUCTION, canary="V1.3.0", canary_weight=50)
    )
    assert c.canary(CANDIDATE, PRODUCTION).result == "promoted"
    assert weights(driver) == [25, 50, 100, CANDIDATE]


@pytest.mark.parametrize("where", ["start", "health"])
def test_unreadable_signals_fail_the_step_roll_back_and_leave_the_candidate_releasable(release, where):
    name, registry, controller = release
    c, clock, driver = controller(Steps(FAST, where))
    outcome = c.canary(CANDIDATE, PRODUCTION)
    assert outcome.result == "rolled_back"
    assert weights(driver) == [25, 50, PRODUCTION]
    last = registry.history(name, CANDIDATE)[-1]
    checks = {r["name"]: r for r in last["evidence"]["checks"]}
    assert {r["status"] for r in checks.values()} == {"failed"}
    assert all("could not be read" in r["detail"] or "did not answer" in r["detail"] for r in checks.values()), checks
    # unreadable metrics are the machine's fault, not the model's: left in staging, not rejected
    assert last["stage"] == "staging" and last["evidence"]["rejected"] is False
    assert registry.current(name, "production").version == PRODUCTION
    assert clock.sleeps == [INTERVAL] * 2


class RenewingDriver(RecordingDriver):
    """A cluster driver's ``wait`` (``KServeTrafficDriver.wait``): sleeps on the controller's clock and renews the
    model's release Lease; ``lose_at``: the renewal that finds the Lease taken (then nothing moves any more)."""

    def __init__(self, current: TrafficState, lose_at: int | None = None) -> None:
        super().__init__(current)
        self.renewals, self.lose_at, self.lost = 0, lose_at, False

    def wait(self, seconds: float, sleep) -> None:
        from kfrelease.k8s.driver.lease import LeaseLost

        sleep(seconds)
        self.renewals += 1
        if self.renewals == self.lose_at:
            self.lost = True
            raise LeaseLost("the release of V1.2.0 lost the Lease (now held by V1.3.0): it stops moving traffic")

    def apply(self, state: TrafficState) -> None:
        from kfrelease.k8s.driver.lease import LeaseLost

        if self.lost:
            raise LeaseLost("nothing was sent")
        super().apply(state)


def test_each_canary_interval_is_waited_through_the_driver_which_renews_the_release_lease(release):
    """A cluster release renews its model's Lease while it waits, so the Lease can be short (300 s) however long
    the canary interval is: the controller waits through the driver's ``wait`` when it has one."""
    _name, _registry, controller = release
    c, clock, _ = controller(Steps(FAST, FAST, FAST))
    c.driver = driver = RenewingDriver(TrafficState(primary=PRODUCTION))
    assert c.canary(CANDIDATE, PRODUCTION).result == "promoted"
    assert clock.sleeps == [INTERVAL] * 3 and driver.renewals == 3


def test_a_release_that_lost_its_lease_mid_canary_stops_there_and_says_so(release):
    from kfrelease.k8s.driver.lease import LeaseLost

    name, registry, controller = release
    c, _clock, _ = controller(Steps(FAST, FAST, FAST))
    c.driver = driver = RenewingDriver(TrafficState(primary=PRODUCTION), lose_at=2)
    with pytest.raises(LeaseLost) as err:
        c.canary(CANDIDATE, PRODUCTION)
    assert "V1.3.0" in str(err.value)
    assert weights(driver) == [25, 50]  # nothing after the loss: no promotion, no rollback of the other's traffic
    assert registry.current(name, "production").version == PRODUCTION
