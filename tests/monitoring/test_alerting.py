"""End to end on the real local Prometheus, Pushgateway, Alertmanager, our receiver and the real training
trigger: a model trained by the training pipeline is in production on the latest curated data; an alert
while no labelled traffic exists starts no run and says why; healthy traffic raises no alert; degraded
labelled traffic (noisy predictions on shifted inputs) fires the quality and drift alerts, Alertmanager
routes them to the receiver, which records them, builds a curated version from the labelled traffic (the
data engineers' role) and triggers exactly one auto-revision retrain on it (the others are rate-limited
or wait), and the retrain registers V1.1.1 trained on that version.

Prometheus and Alertmanager are restarted for this module with fast intervals (1 s scrape and evaluation,
``for: 0s``, 1 s group wait) and restored afterwards.
"""

import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kfrelease import httpcalls
from kfrelease.data.features import diabetes_features
from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.publish import get_version
from kfrelease.data.spec import load_spec, parse_spec
from kfrelease.demo.data import demo_batches
from kfrelease.demo.project import spec_variant
from kfrelease.monitoring import services as mon
from kfrelease.monitoring.newdata import check_new_data
from kfrelease.monitoring.passes import run_monitoring
from kfrelease.monitoring.receiver import AlertReceiver
from kfrelease.monitoring.synthetic import write_traffic
from kfrelease.monitoring.window import WindowSpec
from kfrelease.stack import supervisor
from kfrelease.storage import store_for
from tests.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fast_alerting(stack):
    """Prometheus and Alertmanager with second-scale intervals for this module; the session's own are put
    back afterwards, also when the fast ones fail to start (so later tests still find a Prometheus)."""
    try:
        for name in ("prometheus", "alertmanager"):
            supervisor.stop_service(stack, name)
        supervisor.start_service(stack, mon.alertmanager_service(stack, group_wait="1s", group_interval="2s"))
        supervisor.start_service(
            stack,
            mon.prometheus_service(stack, scrape_interval="1s", eval_interval="1s", alert_for="0s"),
        )
        yield stack
    finally:
        for name in ("prometheus", "alertmanager"):
            supervisor.stop_service(stack, name)
        supervisor.start_service(stack, mon.alertmanager_service(stack))
        supervisor.start_service(stack, mon.prometheus_service(stack))


@pytest.fixture(scope="module")
def production_model(fast_alerting):
    """A private dataset (batch 1; invalid rows quarantined), the demo model trained on it by the real
    training trigger and promoted to production."""
    from kfrelease.demo.project import create_demo_project
    from kfrelease.registry import ModelRegistry
    from kfrelease.training import trigger as training

    settings = fast_alerting
    name = f"diabetes-{uuid.uuid4().hex[:8]}"
    doc = yaml.safe_load(load_spec("diabetes").text)
    doc["name"], doc["source"], doc["on_invalid"] = name, {"prefix": f"{name}/"}, "quarantine"
    spec = parse_spec(yaml.safe_dump(doc), name)
    engineer = store_for("data-engineer", settings)

    def add_batch(n):
        engineer.put_bytes(
            "raw",
            f"{spec.source_prefix}batch-{n}.csv",
            demo_batches()[n - 1].to_csv(index=False).encode(),
        )
        return run_data_pipeline(spec, engineer).version

    first = add_batch(1)
    model = f"mon-e2e-{uuid.uuid4().hex[:6]}"
    repo = Path(tempfile.mkdtemp(prefix="mon-project-")) / "project"
    shas = create_demo_project(repo, name=model, dataset=name)
    run = training.wait(settings, training.trigger(settings, shas[0], str(repo)).run_id, timeout=240)
    assert run.status == "succeeded", run.state
    registry = ModelRegistry(store_for("pipeline", settings))
    registry.set_stage(model, "V1.1.0", "production", who="test", why="monitoring end-to-end test")
    return {"model": model, "dataset": name, "first": first, "registry": registry}


def prom(stack, query):
    r = httpcalls.get(stack.url("prometheus", "/api/v1/query"), params={"query": query}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def am_alerts(stack, model):
    r = httpcalls.get(
        stack.url("alertmanager", "/api/v2/alerts"),
        params={"filter": f'model="{model}"'},
        timeout=5,
    )
    r.raise_for_status()
    return r.json()


def inputs(features):
    """Batch 2's rows (the training population) as the model's inputs, and their truth."""
    rows = diabetes_features(demo_batches()[1])  # with the curated engineered feature
    return rows[features], rows["progression"].to_numpy()


def quality_alert(model, name="ModelR2BelowFloor"):
    labels = {"alertname": name, "kind": "quality", "model": model, "version": "V1.1.0", "stage": "production"}
    return {"status": "firing", "labels": labels, "fingerprint": uuid.uuid4().hex[:16]}


def auto_runs(stack, model):
    return [o.key for o in store_for("pipeline", stack).iter("models", f"runs/auto-{model}-")]


@pytest.mark.slow(seconds=48)
def test_degraded_labelled_traffic_alerts_and_retrains_on_it_an_alert_without_newer_data_starts_nothing(
    fast_alerting, production_model
):
    stack, model, registry = (
        fast_alerting,
        production_model["model"],
        production_model["registry"],
    )
    # no labelled traffic yet and production was trained on the latest version: no run, and why
    quiet = AlertReceiver(stack, store=store_for("pipeline", stack), min_interval=0)
    (nothing,) = quiet.handle({"alerts": [quality_alert(model)]})["decisions"]
    assert nothing["decision"] == "no-new-data", nothing
    assert "no newer data than production's" in nothing["detail"] and "no labelled request" in nothing["detail"]
    assert nothing["curation"]["trained_on"] == production_model["first"] and quiet.threads == []
    assert auto_runs(stack, model) == []

    entry = registry.get(model, "V1.1.0").entry
    features = [c["name"] for c in entry["input_schema"]]
    baseline = entry["metrics"]["rmse"]
    serving = store_for("serving", stack)
    x, truth = inputs(features)
    rng = np.random.default_rng(7)
    now = datetime.now(UTC)

    def monitored(inputs, predictions, minutes_ago: int):
        """Production's labelled traffic of these inputs and predictions, then a monitoring pass over it."""
        start = now - timedelta(minutes=minutes_ago)
        write_traffic(serving, model, "V1.1.0", "production", inputs, predictions, truth, start=start, step_seconds=1)
        return run_monitoring(stack, model, window=WindowSpec("count", len(x)), min_labels=50, latest_only=True)

    # healthy: inputs from the training population, predictions within the model's own error
    run = monitored(x, truth + rng.normal(scale=0.5 * baseline, size=len(x)), minutes_ago=30)
    (healthy,) = run.windows
    assert healthy.status == "ok" and healthy.rmse < 1.5 * baseline and healthy.r2 > healthy.r2_floor
    assert healthy.drift_share is not None and healthy.drift_share <= 0.5 and run.push.ok
    declared = yaml.safe_load(spec_variant(1))["validation"]["min_r2"]  # the example's model.yaml
    assert healthy.r2_floor == declared and healthy.baseline_rmse == baseline  # from the spec and the registry
    sel = f'{{model="{model}"}}'
    eventually(
        lambda: prom(stack, f"kfrelease_model_r2{sel}"),
        timeout=60,
        what="Prometheus to scrape the pushed R2",
    )
    evaluated = time.time()
    eventually(
        lambda: all(
            pd.Timestamp(g["lastEvaluation"]).timestamp() > evaluated + 2
            for g in httpcalls.get(stack.url("prometheus", "/api/v1/rules")).json()["data"]["groups"]
        ),
        timeout=60,
        what="more rule evaluations",
    )
    assert prom(stack, f"ALERTS{sel}") == []
    assert am_alerts(stack, model) == []

    # degraded: shifted inputs and noisy predictions -> R2, RMSE and drift alerts
    shifted = x.assign(bmi=x["bmi"] + 12, bp=x["bp"] + 25, s5=x["s5"] + 1.0, bmi_bp=x["bmi_bp"] * 1.8)
    shifted = shifted.assign(**{c: shifted[c] * 1.5 for c in ("s1", "s2", "s3", "s4", "s6", "age")})
    run = monitored(shifted, truth + rng.normal(scale=4 * baseline, size=len(x)), minutes_ago=5)
    (bad,) = run.windows
    assert bad.r2 < 0.2 and bad.rmse > 1.5 * baseline and bad.drift_share > 0.5
    expected = {"ModelR2BelowFloor", "ModelRMSEAboveBaseline", "ModelInputDrift"}
    firing = eventually(
        lambda: (a := am_alerts(stack, model)) and {x["labels"]["alertname"] for x in a} >= expected and a,
        timeout=60,
        what="the quality and drift alerts in Alertmanager",
    )
    assert {a["labels"]["version"] for a in firing} == {"V1.1.0"}

    receiver = AlertReceiver(stack, store=store_for("pipeline", stack))
    recorded = eventually(
        lambda: (
            {
                a["labels"]["alertname"]
                for a in receiver.alerts()
                if a["labels"].get("model") == model and a["status"] == "firing"
            }
            >= expected
        ),
        timeout=60,
        what="the receiver to record the three alerts",
    )
    assert recorded
    decisions = eventually(
        lambda: (
            (d := [r for r in receiver.retrains(model) if "status" not in r and r["decision"] != "no-new-data"])
            and len(d) >= 3
            and d
        ),
        timeout=60,
        what="a retrain decision per alert",
    )
    assert [d["decision"] for d in decisions].count("triggered") == 1, decisions
    assert all(d["decision"] in ("triggered", "rate-limited", "busy") for d in decisions)
    (triggered,) = [d for d in decisions if d["decision"] == "triggered"]
    curation = triggered["curation"]  # the labelled traffic (healthy and degraded) is the new data
    assert curation["newer"] and curation["labelled"] == 2 * len(x) and curation["added"] > len(x)
    assert curation["added"] + curation["quarantined"] == curation["labelled"]
    assert curation["base_version"] == production_model["first"] != curation["version"]
    manifest = get_version(
        store_for("data-scientist", stack), production_model["dataset"], curation["version"]
    ).manifest
    base_rows = get_version(store_for("data-scientist", stack), production_model["dataset"], curation["base_version"])
    assert manifest["row_count"] == base_rows.row_count + curation["added"]
    assert manifest["quarantined_count"] == curation["quarantined"]  # out-of-range shifted rows, with reasons
    assert manifest["lineage"]["kind"] == "labelled-traffic" and manifest["lineage"]["production_version"] == "V1.1.0"
    sources = [src["key"] for src in manifest["sources"]]
    assert any("inference-logs" in k and f"model={model}/date=" in k for k in sources), sources
    assert any("feedback" in k and f"model={model}/date=" in k for k in sources), sources
    result = eventually(
        lambda: [r for r in receiver.retrains(model) if r.get("status")],
        timeout=60,
        what="the trigger's answer",
    )[0]
    assert result["status"] == "done", result
    run_id = result["result"]["run_id"]
    assert run_id.startswith(f"auto-{model}-V1.1.0-") and result["result"]["auto"] is True

    from kfrelease.training import trigger as training

    final = training.wait(stack, run_id, timeout=240)
    assert final.status == "succeeded", final.state
    retrained = registry.get(model, "V1.1.1")  # same tag and definition, newer data: auto revision + 1
    assert retrained.entry["dataset_version"] == curation["version"]
    assert retrained.entry["run_id"] == run_id

    # the new-data hook takes the same path: the retrain for this data version exists already (idempotent)
    hook = AlertReceiver(stack, store=store_for("pipeline", stack), min_interval=0)
    (row,) = check_new_data(hook, [model])
    assert row["latest"] == curation["version"] and row["trained_on"] == production_model["first"]
    assert row["action"] == "triggered"
    for t in hook.threads:
        t.join(timeout=60)
    again = [r for r in hook.retrains(model) if r.get("status") and "new curated data" in r["reason"]]
    assert again and again[0]["result"]["run_id"] == run_id and again[0]["result"]["created"] is False
    assert check_new_data(hook, [model])[0]["action"] == "already-handled"
