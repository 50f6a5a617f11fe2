"""The rollout spec is checked on load: a bad spec is refused before any traffic moves."""

import pytest

from kfrelease.rollout.spec import (
    GateRule,
    RolloutSpecError,
    ShadowSpec,
    bind_model,
    load_rollout_spec,
    parse_rollout_spec,
)
from kfrelease.rollout.traffic import TrafficState

BASE = "model: m\n"


def test_default_spec_names_no_model_and_is_bound_to_the_model_it_is_loaded_for():
    spec = load_rollout_spec()
    assert spec.model == ""  # no hidden global default model
    assert load_rollout_spec(model="alpha").model == "alpha"
    assert parse_rollout_spec("canary: {interval_seconds: 5}\n").canary.interval_seconds == 5
    with pytest.raises(RolloutSpecError, match="is for model 'm', not 'beta'"):
        bind_model(parse_rollout_spec(BASE), "beta")


def test_default_spec_loads_with_documented_defaults():
    spec = load_rollout_spec()
    assert spec.canary.steps == (10, 25, 50, 100)
    assert [c.name for c in spec.canary.checks] == ["requests", "error_rate", "p99_latency_ms", "accuracy"]
    assert spec.shadow.mirror_percent == 100 and spec.canary.metrics_source == "auto"


@pytest.mark.parametrize(
    "canary, message",
    [
        ("steps: [25, 10, 100]", "canary.steps is not strictly increasing: [25, 10, 100]"),
        ("steps: [10, 10, 100]", "not strictly increasing"),
        ("steps: [10, 150]", "canary.steps lists weight 150; each step is a whole percent from 1 to 100"),
        ("steps: [0, 100]", "weight 0"),
        ("steps: [10, 50]", "must end at 100"),
        ("steps: []", "canary.steps is empty"),
        ("steps: [10, true, 100]", "canary.steps[1] must be a whole number, not True"),
        ("interval_seconds: 0", "interval_seconds must be above 0"),
        ("failure_threshold: 0", "canary.failure_threshold must be at least 1, not 0"),
        ("max_holds: -1", "canary.max_holds must be at least 0, not -1"),
        ("metrics_source: graphite", "metrics_source 'graphite' is unknown"),
        ("checks: {max_error_rate: 0.01}", "canary.checks is a list of checks"),
        ("checks: [{name: e, series: errors}]", "canary.checks[0].series 'errors' is unknown"),
        ("checks: [{name: e, series: error_rate, query: x}]", "canary.checks[0]: give exactly one of series"),
        ("checks: [{name: e, query: 'vector(1)'}]", "check 'e' has a query; queries need canary.metrics_source"),
        ("checks: [{name: a, source: labels, max: 2}]", "a labels check takes no series"),
        ("checks: [{name: e, series: error_rate, min: 2, max: 1}]", "canary.checks[0]: min 2 is above max 1"),
        ("checks: [{name: e, series: error_rate, min_samples: -1}]", "min_samples must be at least 0"),
        ("checks: [{name: a, source: labels}, {name: a, source: labels}]", "lists the name(s) a twice"),
        ("checks: [{name: e, series: error_rate, p99: 5}]", "unknown key"),
        ("min_requests: 5", "canary.min_requests is no longer a setting"),
    ],
)
def test_bad_canary_sections_are_refused(canary, message):
    with pytest.raises(RolloutSpecError) as err:
        parse_rollout_spec(BASE + "canary: {" + canary + "}\n", "rollout.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("rollout.yaml: ") and str(err.value).endswith("; nothing was changed")


def test_bad_shadow_and_unknown_sections_are_refused():
    with pytest.raises(RolloutSpecError, match="shadow.mirror_percent must be at most 100, not 120"):
        parse_rollout_spec(BASE + "shadow: {mirror_percent: 120}\n")
    with pytest.raises(RolloutSpecError, match="unknown key 'blue_green'; known: model, shadow"):
        parse_rollout_spec(BASE + "blue_green: {}\n")
    with pytest.raises(RolloutSpecError, match="a mapping of sections"):
        parse_rollout_spec("[canary]\n")
    with pytest.raises(RolloutSpecError, match="does not exist"):
        load_rollout_spec("/nonexistent/rollout.yaml")


@pytest.mark.parametrize(
    "shadow, message",
    [
        ("max_rmse_ratio: 1.0", "shadow.max_rmse_ratio is no longer a setting; it was replaced by shadow.margin"),
        ("error_rate: 0.6", "shadow: error_rate 0.6 must be above 0 and below 0.5"),
        ("max_wait_seconds: 0", "shadow.max_wait_seconds must be above 0, not 0"),
        ("mirror_percent: -1", "shadow.mirror_percent must be at least 0, not -1"),
        ("margin: -0.1", "margin -0.1 must be at least 0"),
        ("loss: huber", "loss 'huber' is unknown"),
        ("boundary: magic", "boundary 'magic' is unknown"),
        ("at_limit: promote", "at_limit 'promote' is unknown"),
        ("min_labelled_samples: 100, max_samples: 50", "max_samples 50 is below min_labelled_samples 100"),
    ],
)
def test_bad_shadow_gates_are_refused(shadow, message):
    with pytest.raises(RolloutSpecError, match=message):
        parse_rollout_spec(BASE + "shadow: {" + shadow + "}\n")


def test_the_shadow_section_is_the_decision_rule():
    rule = parse_rollout_spec(
        BASE + "shadow: {margin: 0.05, error_rate: 0.01, min_labelled_samples: 50}\n"
    ).shadow.rule()
    assert (rule.margin, rule.error_rate, rule.min_labelled_samples, rule.loss) == (0.05, 0.01, 50, "squared")
    assert isinstance(rule, ShadowSpec) and set(ShadowSpec.model_fields) < set(GateRule.model_fields)  # declared once
    assert set(GateRule.model_fields) - set(ShadowSpec.model_fields) == {"burn_in"}


def test_with_changes_rechecks():
    spec = load_rollout_spec()
    assert spec.with_changes(canary={"interval_seconds": 2}).canary.interval_seconds == 2
    assert spec.with_changes(canary={"interval_seconds": 2}).canary.checks == spec.canary.checks  # merged
    with pytest.raises(RolloutSpecError, match="canary.steps is not strictly increasing: \\[50, 20, 100\\]"):
        spec.with_changes(canary={"steps": (50, 20, 100)})
    with pytest.raises(RolloutSpecError, match="canary.min_requests is no longer a setting"):
        spec.with_changes(canary={"min_requests": 5})


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
