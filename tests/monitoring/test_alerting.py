"""End to end on the real local Prometheus, Pushgateway, Alertmanager and our receiver: degraded traffic
fires an alert that reaches the receiver, which records it and triggers one auto-revision retrain;
healthy traffic raises nothing.

Prometheus and Alertmanager are restarted for this module with fast intervals (1 s scrape/evaluation,
``for: 0s``, 1 s group wait) and restored afterwards.
"""

import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import numpy as np
import pandas as pd
import pytest

from kfrelease.monitoring import services as mon
from kfrelease.monitoring.receiver import AlertReceiver
from kfrelease.monitoring.run import run_monitoring
from kfrelease.monitoring.synthetic import register_entry, write_traffic
from kfrelease.monitoring.window import WindowSpec
from kfrelease.stack import supervisor
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration
FEATURES = ["x1", "x2", "x3"]


def wait_for(check, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    delay = 0.1
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def fast_alerting(stack):
    for name in ("prometheus", "alertmanager"):
        supervisor.stop_service(stack, name)
    supervisor.start_service(stack, mon.alertmanager_service(stack, group_wait="1s", group_interval="2s"))
    supervisor.start_service(stack, mon.prometheus_service(stack, scrape_interval="1s", eval_interval="1s",
                                                           alert_for="0s"))
    yield stack
    for name in ("prometheus", "alertmanager"):
        supervisor.stop_service(stack, name)
    supervisor.start_service(stack, mon.alertmanager_service(stack))
    supervisor.start_service(stack, mon.prometheus_service(stack))


def traffic(n, seed, noise=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 3)), columns=FEATURES)
    y = 10 * x["x1"] - 5 * x["x2"] + 2 * x["x3"] + 50
    pred = y + rng.normal(scale=noise, size=n)
    return x + shift, pred, y


def prom(stack, query):
    r = httpx.get(stack.url("prometheus", "/api/v1/query"), params={"query": query}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def am_alerts(stack, model):
    r = httpx.get(stack.url("alertmanager", "/api/v2/alerts"), params={"filter": f'model="{model}"'}, timeout=5)
    r.raise_for_status()
    return r.json()


def test_degraded_traffic_fires_alerts_and_one_retrain_healthy_traffic_does_not(fast_alerting):
    stack = fast_alerting
    serving, pipeline = store_for("serving", stack), store_for("pipeline", stack)
    model = f"mon-it-{uuid.uuid4().hex[:6]}"
    reference, _, _ = traffic(500, seed=0)
    register_entry(pipeline, model, "V1.1.0", FEATURES, rmse=1.0)
    now = datetime.now(timezone.utc)

    # healthy: good predictions, inputs like training -> gauges visible in Prometheus, no alert
    x, pred, y = traffic(200, seed=3)
    write_traffic(serving, model, "V1.1.0", "production", x, pred, y, start=now - timedelta(minutes=30))
    run = run_monitoring(stack, model, window=WindowSpec("count", 200), min_labels=50, latest_only=True,
                         reference=reference, r2_floor=0.8)
    (healthy,) = run.windows
    assert healthy.status == "ok" and healthy.r2 > 0.95 and healthy.drift_share < 0.5 and run.push.ok
    sel = f'{{model="{model}"}}'
    wait_for(lambda: prom(stack, f"kfrelease_model_r2{sel}"), what="Prometheus to scrape the pushed R2")
    evaluated = time.time()
    wait_for(lambda: all(g["lastEvaluation"] and pd.Timestamp(g["lastEvaluation"]).timestamp() > evaluated + 2
                         for g in httpx.get(stack.url("prometheus", "/api/v1/rules")).json()["data"]["groups"]),
             what="three more rule evaluations")
    assert prom(stack, f"ALERTS{sel}") == []
    assert am_alerts(stack, model) == []

    # degraded: noisy predictions on shifted inputs -> R2, RMSE and drift alerts fire and reach the receiver
    x, pred, y = traffic(200, seed=2, noise=15.0, shift=3.0)
    write_traffic(serving, model, "V1.1.0", "production", x, pred, y, start=now - timedelta(minutes=5))
    run = run_monitoring(stack, model, window=WindowSpec("count", 200), min_labels=50, latest_only=True,
                         reference=reference, r2_floor=0.8)
    (bad,) = run.windows
    assert bad.r2 < 0.8 and bad.rmse > 1.5 and bad.drift_share == 1.0
    firing = wait_for(lambda: {a["labels"]["alertname"] for a in am_alerts(stack, model)} >= {
        "ModelR2BelowFloor", "ModelRMSEAboveBaseline", "ModelInputDrift"} and am_alerts(stack, model),
        what="the quality and drift alerts in Alertmanager")
    assert {a["labels"]["version"] for a in firing} == {"V1.1.0"}

    receiver = AlertReceiver(stack, store=pipeline)
    recorded = wait_for(lambda: [a for a in receiver.alerts() if a["labels"].get("model") == model
                                 and a["status"] == "firing"] or None,
                        what="the receiver to record the alerts")
    assert {a["labels"]["alertname"] for a in recorded} <= {"ModelR2BelowFloor", "ModelRMSEAboveBaseline",
                                                            "ModelInputDrift", "ModelNoGroundTruth"}
    decisions = wait_for(lambda: [d for d in receiver.retrains(model) if "decision" in d and "status" not in d]
                         if len(receiver.retrains(model)) >= 2 else None, what="a retrain decision")
    triggered = [d for d in decisions if d["decision"] == "triggered"]
    assert len(triggered) == 1, decisions  # one retrain; the other alerts are rate-limited or busy
    assert all(d["decision"] in ("rate-limited", "busy") for d in decisions if d is not triggered[0])
    result = wait_for(lambda: [d for d in receiver.retrains(model) if d.get("status")], timeout=120,
                      what="the retrain result record")[0]
    assert result["reason"].startswith("alert ") and model in result["reason"]
    # see test_retrain_result below for what the training trigger produced
    pytest.retrain_result = result


def test_retrain_result_is_an_auto_revision(fast_alerting):
    result = getattr(pytest, "retrain_result", None)
    if result is None:
        pytest.skip("the alerting test did not get to a retrain")
    try:
        import kfrelease.training.trigger  # noqa: F401
    except ImportError:
        assert result["status"] == "failed" and "kfrelease.training.trigger" in result["error"]
        pytest.skip("kfrelease.training.trigger does not exist yet: the receiver called the trigger path, "
                    "which failed with ModuleNotFoundError (recorded)")
    assert result["status"] == "done", result
