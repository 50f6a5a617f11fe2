"""The shadow gate's join and verdict, and the canary signals parsed from a real model server's /metrics text
format, as plain functions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import Field

from kfrelease.quality.metrics import regression_metrics
from kfrelease.release.checks import judge, traffic_measurement
from kfrelease.release.shadow import join_shadow, shadow_verdict
from kfrelease.release.signals import PrometheusMetrics, health_between, histogram_quantile, parse_snapshot
from kfrelease.rollout import series as series_module
from kfrelease.rollout.series import SERIES
from kfrelease.rollout.spec import CanarySpec, CheckSpec, GateRule, RolloutSpec, RolloutSpecError
from kfrelease.specs import Items, Section, parse

ROOT = Path(__file__).resolve().parents[2]


def logs(n: int, cand_noise: float, prod_noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(150, 50, n)
    ids = [f"r{i}" for i in range(n)]
    t = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for i in range(n):
        rows.append(
            (
                ids[i],
                0,
                t,
                "V1.1.0",
                "production",
                1.0,
                truth[i] + rng.normal(0, prod_noise),
            )
        )
        rows.append(
            (
                ids[i],
                0,
                t,
                "V1.2.0",
                "staging",
                1.0,
                truth[i] + rng.normal(0, cand_noise),
            )
        )
    preds = pd.DataFrame(
        rows,
        columns=[
            "request_id",
            "instance",
            "time",
            "model_version",
            "stage",
            "bmi",
            "prediction",
        ],
    )
    fb = pd.DataFrame({"request_id": ids, "instance": 0, "truth": truth, "time": t})
    return preds, fb


def test_both_models_are_scored_on_exactly_the_same_labelled_requests():
    preds, fb = logs(500, 10, 20)
    fb = fb.iloc[:400]  # 100 requests not labelled yet
    preds = preds[~((preds["request_id"] == "r0") & (preds["stage"] == "staging"))]  # shadow missed r0
    pairs = join_shadow(preds, fb, "V1.2.0", "V1.1.0")
    assert len(pairs) == 399 and "r0" not in set(pairs["request_id"])
    v = shadow_verdict(pairs, "V1.2.0", "V1.1.0", GateRule(min_exposure=0.01), scale=20.0)
    assert v.decision == "pass" and v.evidence["test"]["check"] == "tail"  # the tail check passes last
    assert "tail: pass, rate difference" in v.summary() and "worst slice" in v.summary()
    assert v.evidence["candidate"] == regression_metrics(pairs["truth"], pairs["candidate"])
    assert v.evidence["production"] == regression_metrics(pairs["truth"], pairs["production"])
    assert v.evidence["test"]["n"] == 399
    lo, hi = v.evidence["test"]["ratio_interval"]
    assert (
        f"on the same n=399 labelled requests: MSE ratio {v.evidence['test']['ratio']:.3f} [{lo:.3f}, {hi:.3f}]"
        in v.summary()
    )


def test_a_worse_candidate_fails_and_too_few_labels_continue():
    preds, fb = logs(300, 30, 10)
    pairs = join_shadow(preds, fb, "V1.2.0", "V1.1.0")
    v = shadow_verdict(pairs, "V1.2.0", "V1.1.0", GateRule(), scale=10.0)
    assert v.decision == "fail" and v.evidence["test"]["ratio_interval"][0] > 1.0
    assert "worse than production" in v.reasons[0]
    w = shadow_verdict(pairs.iloc[:29], "V1.2.0", "V1.1.0", GateRule(min_labelled_samples=30), scale=10.0)
    assert w.decision == "continue" and "29 labelled pairs" in w.reasons[0]
    assert "candidate" not in w.evidence  # no numbers shown on too little evidence


def test_a_close_call_is_not_decided_on_a_noisy_ratio():
    """The issue's case: RMSE ratio 0.99 on 168 pairs decided ``pass`` before; its interval contains 1."""
    preds, fb = logs(168, 19.8, 20, seed=3)
    pairs = join_shadow(preds, fb, "V1.2.0", "V1.1.0")
    v = shadow_verdict(pairs, "V1.2.0", "V1.1.0", GateRule(), scale=20.0)
    assert v.decision == "continue"
    late = shadow_verdict(pairs, "V1.2.0", "V1.1.0", GateRule(), scale=20.0, at_limit=True)
    assert late.decision == "insufficient"


def test_the_latest_label_wins():
    preds, fb = logs(30, 1, 1)
    later = fb.assign(truth=fb["truth"] + 1000, time=fb["time"] + pd.Timedelta(seconds=1))
    pairs = join_shadow(preds, pd.concat([fb, later]), "V1.2.0", "V1.1.0")
    assert len(pairs) == 30 and (pairs["truth"] > 900).all()


def test_histogram_quantile_interpolates_like_promql():
    # 100 observations: 90 in (0, 0.01], 10 in (0.01, 0.1]
    buckets = {0.01: 90, 0.1: 100, math.inf: 100}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 * 50 / 90)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 9 / 10)
    assert histogram_quantile(0.99, {0.1: 0, math.inf: 0}) is None


def metrics_text(ok: int, invalid: int, attempts: int, latencies: list[float]) -> str:
    """What a predictor's /metrics serves (the same metric names and labels, made by prometheus_client)."""
    reg = CollectorRegistry()
    requests = Counter(
        "kfrelease_predictor_requests",
        "",
        ["model", "version", "stage", "protocol", "outcome"],
        registry=reg,
    )
    latency = Histogram(
        "kfrelease_predictor_request_seconds",
        "",
        ["model", "version", "stage"],
        registry=reg,
        buckets=(0.001, 0.01, 0.1, 1.0),
    )
    pre = Histogram("request_preprocess_seconds", "", ["model_name"], registry=reg)
    requests.labels("m", "V1.2.0", "canary", "v1", "ok").inc(ok)
    requests.labels("m", "V1.2.0", "canary", "v1", "invalid").inc(invalid)
    for _ in range(attempts):
        pre.labels("m").observe(0.0001)
    for x in latencies:
        latency.labels("m", "V1.2.0", "canary").observe(x)
    return generate_latest(reg).decode()


def test_error_rate_and_p99_come_from_the_deltas_of_two_scrapes():
    before = parse_snapshot(metrics_text(10, 0, 10, [0.0005] * 10), "m", "V1.2.0")
    after = parse_snapshot(metrics_text(105, 5, 120, [0.0005] * 10 + [0.05] * 95), "m", "V1.2.0")
    h = health_between(before, after)
    assert h.requests == 110 and h.errors == 10  # 110 attempts: 95 ok, 5 invalid (4xx, not errors), 10 failed
    assert h.error_rate == pytest.approx(10 / 110)
    assert 10 < h.latency_ms[0.99] <= 100
    restarted = health_between(after, parse_snapshot(metrics_text(3, 0, 3, [0.0005] * 3), "m", "V1.2.0"))
    assert restarted.requests == 3 and restarted.errors == 0  # counters went down: the server restarted


def test_the_readme_example_of_a_new_canary_series_is_one_declaration(monkeypatch):
    """README, "Adding a canary series is one declaration plus its use": the entry it shows, added to ``SERIES``, is a
    name the rollout spec accepts (and its JSON Schema lists), a latency quantile both metric sources measure, and a
    value the judge holds against production's, with no other edit; a series nobody declared is refused in one line."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Adding a canary series is one declaration plus its use", 1)[1].split("\n### ", 1)[0]
    entry = section.split("```python\n", 1)[1].split("```", 1)[0]
    use = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    refused = " ".join(re.search(r"\(`(rollout\.yaml: canary\.checks[^`]+)`\)", section, re.DOTALL).group(1).split())
    ((name, declared),) = eval("{" + entry + "}", vars(series_module)).items()
    monkeypatch.setitem(SERIES, name, declared)

    # the rollout spec as declared, its names taken from SERIES again (a Literal is fixed when its class is built)
    class Check(CheckSpec):
        series: Literal[tuple(SERIES)] | None = Field(None, description="traffic: the built-in series read.")

    class Canary(CanarySpec):
        checks: Items[Check] = Field((), description="The checks judged at every step.")

    class Rollout(RolloutSpec):
        canary: Section[Canary] = Field(None, description="The canary steps and their checks.")

    def load(text: str):
        return parse(Rollout, text, "rollout.yaml", "a mapping", empty_ok=True)

    check = load(use).canary.check_named(name)
    assert check.series == name and check.max == 150
    assert name in json.dumps(Rollout.model_json_schema())
    with pytest.raises(RolloutSpecError) as err:
        load(use.replace(f"series: {name}", "series: p95"))
    assert str(err.value) == refused

    # both sources measure it: the model server's histogram, and the query Prometheus is asked
    query = PrometheusMetrics("http://prometheus:9090", "m", "V1.2.0").queries(30)["p95"]
    assert query.startswith(
        "histogram_quantile(0.95, sum by (le) (increase(kfrelease_predictor_request_seconds_bucket{"
    )
    empty = parse_snapshot(metrics_text(0, 0, 0, []), "m", "V1.2.0")

    def step(latencies):
        return health_between(
            empty, parse_snapshot(metrics_text(len(latencies), 0, len(latencies), latencies), "m", "V1.2.0")
        )

    slow_canary = step([0.005] * 180 + [0.5] * 20)  # 10 % of its answers take 0.5 s
    assert slow_canary.latency_ms[0.95] == pytest.approx(550.0)  # within the (0.1, 1] s bucket, as PromQL has it
    fast, slow = step([0.005] * 200), step([0.5] * 200)
    assert judge(check, traffic_measurement(check, slow_canary, fast)).status == "failed"
    judged = judge(check, traffic_measurement(check, slow_canary, slow))  # production as slow: the machine
    assert judged.status == "passed" and "the machine" in judged.detail
    few = step([0.5] * 99)
    assert judge(check, traffic_measurement(check, few, fast)).detail.startswith("99 requests; a p95 needs 100")
