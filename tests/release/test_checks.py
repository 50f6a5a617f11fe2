"""Canary checks as data: the judge (one measurement -> a status), the canary's state machine
(failure_threshold, holds, advance, promote), and where the canary's metrics come from on a cluster
(issue 14 item 3). Pure functions: no clock, no server."""

from __future__ import annotations

import pytest

from kfrelease.config import Settings
from kfrelease.release.checks import (
    CanaryAnalysis,
    CheckResult,
    CheckSpec,
    Measurement,
    judge,
    render_query,
)
from kfrelease.release.controller import (
    ReleaseError,
    metrics_source,
    prometheus_url,
    signals_for,
)
from kfrelease.release.signals import PrometheusMetrics
from kfrelease.rollout.spec import parse_rollout_spec

ERRORS = CheckSpec(name="error_rate", series="error_rate", max=0.01, min_samples=20)
ACCURACY = CheckSpec(name="accuracy", source="labels", min_samples=10)


def test_a_bound_is_judged_on_the_value_once_there_are_enough_requests():
    assert judge(ERRORS, Measurement(0.005, 100)).status == "passed"
    failed = judge(ERRORS, Measurement(0.02, 100))
    assert failed.status == "failed" and "above 0.01" in failed.describe()
    held = judge(ERRORS, Measurement(0.5, 19))  # too few requests: not counted yet, the step is held
    assert held.status == "held" and "19 of 20" in held.detail
    assert judge(CheckSpec(name="r2", series="error_rate", min=0.5), Measurement(0.4, 1)).status == "failed"


def test_an_unreadable_source_fails_and_no_observation_skips():
    r = judge(ERRORS, Measurement(error="metrics of http://127.0.0.1:1 cannot be read"))
    assert r.status == "failed" and "cannot be read" in r.describe()
    assert judge(ERRORS, Measurement(None, 100)).status == "skipped"


def test_the_accuracy_check_follows_the_paired_test():
    fail = {"decision": "fail", "ratio": 1.3, "ratio_interval": [1.1, 1.5], "reason": "worse"}
    r = judge(ACCURACY, Measurement(1.3, 50, fail))
    assert r.status == "failed" and r.interval == [1.1, 1.5] and "[1.1, 1.5] n=50" in r.describe()
    assert judge(ACCURACY, Measurement(0.9, 50, {"decision": "pass", "ratio": 0.9})).status == "passed"
    undecided = {"decision": "continue", "ratio": 1.0, "reason": "neither bound has crossed"}
    assert judge(ACCURACY, Measurement(1.0, 50, undecided)).status == "skipped"  # inconclusive: advance
    holding = ACCURACY.with_changes(on_inconclusive="hold")
    assert judge(holding, Measurement(1.0, 50, undecided)).status == "held"
    assert judge(ACCURACY, Measurement(None, 3, None)).status == "skipped"  # too few labels: does not count


def results(*statuses):
    return [CheckResult(f"check{i}", status) for i, status in enumerate(statuses)]


def test_passing_steps_advance_then_promote():
    a = CanaryAnalysis((10, 50, 100))
    assert a.next(results("passed", "skipped"))[0] == "advance" and a.weight == 50
    assert a.next(results("passed"))[0] == "advance" and a.weight == 100
    assert a.next(results("passed"))[0] == "promote" and a.done


def test_failure_threshold_counts_failed_checks_over_the_whole_canary():
    a = CanaryAnalysis((10, 50, 100), failure_threshold=2)
    action, why = a.next(results("failed"))
    assert action == "hold" and a.weight == 10 and "1 failed check(s) of 2 tolerated" in why
    assert a.next(results("passed"))[0] == "advance"
    assert a.next(results("failed"))[0] == "rollback" and a.done  # the second failure, at another step
    assert CanaryAnalysis((100,), failure_threshold=1).next(results("failed"))[0] == "rollback"


def test_holds_wait_for_traffic_at_most_max_holds_intervals_in_a_row():
    a = CanaryAnalysis((10, 100), max_holds=2)
    assert [a.next(results("held"))[0] for _ in range(2)] == ["hold", "hold"]
    assert a.next(results("passed"))[0] == "advance" and a.holds == 0  # a passing step resets the count
    assert [a.next(results("held"))[0] for _ in range(3)] == ["hold", "hold", "rollback"]
    assert CanaryAnalysis((100,), max_holds=0).next(results("held"))[0] == "rollback"


def test_a_failure_outweighs_a_hold():
    a = CanaryAnalysis((10, 100))
    assert a.next(results("held", "failed"))[0] == "rollback"


def test_a_declared_query_gets_the_steps_placeholders():
    q = 'sum(rate(istio_requests_total{{destination_workload=~"{model}-predictor.*",response_code=~"5.."}}[{window}]))'
    assert render_query(q, "m", "V1.2.0", "canary", 29.5) == (
        'sum(rate(istio_requests_total{destination_workload=~"m-predictor.*",response_code=~"5.."}[30s]))'
    )
    from kfrelease.errors import ConfigError

    with pytest.raises(ConfigError, match="placeholders are"):
        render_query("up{job={job}}", "m", "V1", "canary", 10)


CLUSTER_SPEC = """model: m
canary:
  metrics_source: prometheus
  prometheus_url: http://prometheus-operated.monitoring:9090
  checks:
    - {name: requests, series: requests, min_samples: 20}
    - name: istio_5xx
      query: 'sum(rate(istio_requests_total{{destination_workload=~"{model}-predictor.*",response_code=~"5.."}}[{window}]))'
      max: 0.5
      min_samples: 20
"""


def test_the_cluster_prometheus_url_and_queries_are_configuration(monkeypatch):
    """Issue 14 item 3: in a pipeline pod the canary's metrics come from the cluster's Prometheus, not from
    http://127.0.0.1:... of the embedded stack; a spec may name it, as the platform does."""
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")
    monkeypatch.setenv("KFRELEASE_PROMETHEUS_URL", "http://prometheus-operated.monitoring:9090/")
    spec = parse_rollout_spec(CLUSTER_SPEC)
    source = signals_for(Settings.from_env(), spec, "V1.2.0")
    assert isinstance(source, PrometheusMetrics)
    assert source.url == "http://prometheus-operated.monitoring:9090"
    assert source.namespace == spec.serving.namespace  # the predictors' PodMonitor targets' namespace
    assert spec.canary.check_named("istio_5xx").query.startswith("sum(rate(istio_requests_total")


def test_on_a_cluster_the_merge_does_not_choose_the_canarys_prometheus(monkeypatch):
    """Review eks5 L2: the merged rollout.yaml's canary.prometheus_url replaced the platform's pinned
    KFRELEASE_PROMETHEUS_URL, so the merge chose the server its canary's traffic evidence was read from."""
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")
    monkeypatch.setenv("KFRELEASE_PROMETHEUS_URL", "http://prometheus-operated.monitoring.svc:9090")
    elsewhere = parse_rollout_spec(CLUSTER_SPEC.replace("prometheus-operated.monitoring", "metrics.attacker.example"))
    with pytest.raises(ReleaseError, match=r"^canary.prometheus_url http://metrics.attacker.example:9090 is not the "):
        signals_for(Settings.from_env(), elsewhere, "V1.2.0")  # what preflight asks first: nothing moved yet
    # the embedded stack still reads what the spec names
    monkeypatch.delenv("KFRELEASE_TARGET")
    assert prometheus_url(Settings.from_env(), elsewhere) == "http://metrics.attacker.example:9090"


def test_on_a_cluster_auto_means_prometheus_and_a_missing_url_is_refused(monkeypatch):
    monkeypatch.setenv("KFRELEASE_TARGET", "cluster")
    monkeypatch.delenv("KFRELEASE_PROMETHEUS_URL", raising=False)
    spec = parse_rollout_spec("model: m\n")
    assert metrics_source(spec) == "prometheus"
    with pytest.raises(ReleaseError, match="KFRELEASE_PROMETHEUS_URL.*no traffic was moved"):
        signals_for(Settings.from_env(), spec, "V1.2.0")
    with pytest.raises(ReleaseError, match="KFRELEASE_PROMETHEUS_URL.*no traffic was moved"):
        signals_for(Settings.from_env(), parse_rollout_spec(CLUSTER_SPEC), "V1.2.0")  # not the spec's instead
    monkeypatch.setenv("KFRELEASE_PROMETHEUS_URL", "http://prom.monitoring:9090")
    assert prometheus_url(Settings.from_env(), spec) == "http://prom.monitoring:9090"
    predictor = parse_rollout_spec("model: m\ncanary: {metrics_source: predictor}\n")
    with pytest.raises(ReleaseError, match="predictor reads the model servers on 127.0.0.1"):
        signals_for(Settings.from_env(), predictor, "V1.2.0")


def test_on_the_embedded_stack_auto_reads_the_model_servers(monkeypatch):
    monkeypatch.delenv("KFRELEASE_TARGET", raising=False)
    assert metrics_source(parse_rollout_spec("model: m\n")) == "predictor"


def test_models_history_shows_each_decisions_interval_and_n():
    from kfrelease.cli.models import _test_columns

    shadow = {
        "phase": "shadow",
        "test": {"decision": "pass", "ratio": 0.968, "ratio_interval": [0.929, 1.014], "n": 346},
    }
    assert _test_columns(shadow) == ("pass", "0.968 [0.929, 1.014]", "346")
    step = {
        "phase": "canary",
        "checks": [
            {"name": "error_rate", "status": "passed", "value": 0.0, "interval": None, "n": 50},
            {"name": "accuracy", "status": "failed", "value": 4.6, "interval": [3.7, 6.3], "n": 256},
        ],
    }
    assert _test_columns(step) == ("failed", "4.600 [3.700, 6.300]", "256")
    assert _test_columns({"phase": "promote"}) == ("", "", "")
