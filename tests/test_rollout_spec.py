"""The rollout spec is checked on load: a bad spec is refused before any traffic moves."""

import pytest

from kfrelease.rollout.spec import RolloutSpecError, load_rollout_spec, parse_rollout_spec
from kfrelease.rollout.traffic import TrafficState

BASE = "model: m\n"


def test_default_spec_loads_with_documented_defaults():
    spec = load_rollout_spec()
    assert spec.model == "diabetes-progression"
    assert spec.canary.steps == (10, 25, 50, 100)
    assert spec.shadow.mirror_percent == 100 and spec.canary.metrics_source == "predictor"


@pytest.mark.parametrize(
    "canary, message",
    [
        ("steps: [25, 10, 100]", "not strictly increasing"),
        ("steps: [10, 10, 100]", "not strictly increasing"),
        ("steps: [10, 150]", "weight 150"),
        ("steps: [0, 100]", "weight 0"),
        ("steps: [10, 50]", "must end at 100"),
        ("steps: []", "empty"),
        ("interval_seconds: 0", "interval_seconds must be above 0"),
        ("metrics_source: graphite", "metrics_source 'graphite' is unknown"),
        ("checks: {max_error_rate: 2}", "max_error_rate 2 is outside 0..1"),
        ("checks: {max_rmse_ratio: -1}", "max_rmse_ratio must be above 0"),
        ("checks: {p99: 5}", "unknown key"),
    ],
)
def test_bad_canary_sections_are_refused(canary, message):
    with pytest.raises(RolloutSpecError, match=message):
        parse_rollout_spec(BASE + "canary: {" + canary + "}\n")


def test_bad_shadow_and_unknown_sections_are_refused():
    with pytest.raises(RolloutSpecError, match="mirror_percent 120 is outside 0..100"):
        parse_rollout_spec(BASE + "shadow: {mirror_percent: 120}\n")
    with pytest.raises(RolloutSpecError, match="unknown section"):
        parse_rollout_spec(BASE + "blue_green: {}\n")
    with pytest.raises(RolloutSpecError, match="at least 'model'"):
        parse_rollout_spec("canary: {}\n")
    with pytest.raises(RolloutSpecError, match="does not exist"):
        load_rollout_spec("/nonexistent/rollout.yaml")


def test_with_changes_rechecks():
    spec = load_rollout_spec()
    assert spec.with_changes(canary={"interval_seconds": 2}).canary.interval_seconds == 2
    with pytest.raises(RolloutSpecError):
        spec.with_changes(canary={"steps": (50, 20, 100)})


def test_traffic_states():
    s = TrafficState(primary="V1.1.0", shadow="V1.2.0", mirror_percent=100)
    c = s.with_canary("V1.2.0", 25)
    assert c.canary_weight == 25 and c.primary == "V1.1.0"
    assert c.promoted() == TrafficState(primary="V1.2.0")
    assert c.rolled_back() == TrafficState(primary="V1.1.0")
    with pytest.raises(RolloutSpecError, match="outside 0..100"):
        TrafficState(primary="V1", canary="V2", canary_weight=101)
    with pytest.raises(RolloutSpecError, match="needs a canary version"):
        TrafficState(primary="V1", canary_weight=10)
