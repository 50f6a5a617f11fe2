"""The Grafana dashboard: every query is valid PromQL (checked by the real local Prometheus) and uses only
gauges that the monitoring pushes."""

import re
import uuid

import pytest

from kfrelease import httpcalls
from kfrelease.monitoring.dashboard import load_dashboard, panel_queries
from kfrelease.monitoring.push import GAUGES, LABELLED_GAUGES, payload
from kfrelease.monitoring.window import WindowResult


def pushed_names():
    w = WindowResult(
        model="m",
        version="V1.1.0",
        stage="production",
        window="1h",
        start="2026-11-25T00:00:00Z",
        end="2026-11-25T01:00:00Z",
        predictions=10,
        labelled=10,
        status="ok",
        mse=1.0,
        rmse=1.0,
        mae=1.0,
        r2=0.5,
        drift_share=0.1,
        baseline_rmse=1.0,
        r2_floor=0.2,
        last_prediction_time="2026-11-25T00:10:00Z",
        last_truth_time="2026-11-25T00:11:00Z",
    )
    w.feature_drift = {
        "cut": {
            "score": 0.3,
            "drifted": True,
            "frequencies": {"Fair": {"reference": 0.03, "current": 0.3}},
            "unseen": [],
            "unseen_count": 0,
        }
    }
    series = {name for name, _labels, _value in payload(w)["series"]}
    assert series == set(LABELLED_GAUGES)  # a category feature's window pushes every labelled gauge
    return set(payload(w)["values"]) | set(GAUGES) | series


def test_dashboard_uses_only_pushed_gauges():
    names = set()
    for expr in panel_queries():
        names |= set(re.findall(r"\b(kfrelease_[a-z0-9_]+)", expr))
    assert names and names <= pushed_names(), names - pushed_names()
    d = load_dashboard()
    titles = " ".join(p["title"] for p in d["panels"])
    assert all(t in titles for t in ("R²", "RMSE", "MAE", "MSE", "Drifted share"))
    assert [v["name"] for v in d["templating"]["list"]] == [
        "datasource",
        "model",
        "version",
        "stage",
    ]


@pytest.mark.integration
def test_every_dashboard_query_is_valid_promql_on_the_local_prometheus(stack):
    model = f"dash-{uuid.uuid4().hex[:6]}"
    for expr in panel_queries():
        q = expr.replace("$model", model).replace("$version", ".*").replace("$stage", ".*")
        r = httpcalls.get(stack.url("prometheus", "/api/v1/query"), params={"query": q}, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "success", (q, r.text)
