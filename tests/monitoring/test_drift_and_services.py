"""kfrelease.quality.drift.data_drift (the shared drift function) and the monitoring services of the stack."""

import numpy as np
import pandas as pd
import pytest

from kfrelease import httpcalls
from kfrelease.errors import DataValidationError
from kfrelease.monitoring.scrape import PREDICTORS_JOB
from kfrelease.quality.drift import data_drift
from kfrelease.stack.slots import all_slots
from tests.waiting import eventually


def frames(shift=0.0, n=300):
    rng = np.random.default_rng(11)
    ref = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    cur = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    cur["a"] += shift
    return ref, cur


def test_drift_result_names_the_drifted_column_and_renders_html():
    ref, cur = frames(shift=2.0)
    result = data_drift(ref, cur, ["a", "b", "c"])
    assert result.drifted == ["a"] and result.share_drifted == pytest.approx(1 / 3)
    assert result.columns["a"]["method"] == "K-S p_value" and result.columns["a"]["score"] < 0.05
    assert set(result.as_dict()) >= {"share_drifted", "drifted", "columns"}
    assert "<html" in result.html().lower()


def test_large_windows_are_sampled_for_evidently():
    ref, cur = frames(n=3000)
    result = data_drift(ref, cur, ["a", "b"], max_rows=1000)
    assert result.rows_current == 1000 and result.rows_reference == 1000


@pytest.mark.parametrize("side", ["reference", "current"])
def test_missing_columns_or_empty_sides_are_clear_errors(side):
    ref, cur = frames()
    bad = {
        "reference": (ref.drop(columns="c"), cur),
        "current": (ref, cur.drop(columns="c")),
    }[side]
    with pytest.raises(DataValidationError, match=f"{side} data lacks the columns \\['c'\\]"):
        data_drift(*bad, ["a", "c"])
    with pytest.raises(DataValidationError, match="current data is empty"):
        data_drift(ref, cur.iloc[:0], ["a"])


@pytest.mark.integration
def test_prometheus_scrapes_the_monitoring_services_and_loads_the_rules(stack):

    from kfrelease.stack import supervisor

    for name in ("prometheus", "pushgateway", "alertmanager", "alert-receiver"):
        st = supervisor.service_status(stack, name)
        assert st.healthy and st.url.startswith("http://127.0.0.1:"), st
    # target discovery runs shortly after start
    targets = eventually(
        lambda: (
            len(t := httpcalls.get(stack.url("prometheus", "/api/v1/targets")).json()["data"]["activeTargets"])
            >= 6 + len(all_slots())
            and t
        ),
        30,
        "Prometheus discovering every scrape target",
    )
    jobs = {t["labels"]["job"] for t in targets}
    assert {
        "prometheus",
        "pushgateway",
        PREDICTORS_JOB,
        "logsink",
        "feedback",
        "alertmanager",
        "alert-receiver",
    } <= jobs
    predictor_ports = {
        t["scrapeUrl"].split(":")[2].split("/")[0] for t in targets if t["labels"]["job"] == PREDICTORS_JOB
    }
    assert predictor_ports == {str(slot.port(stack)) for slot in all_slots()}  # every stage and replica
    rules = httpcalls.get(stack.url("prometheus", "/api/v1/rules")).json()["data"]["groups"]
    assert {g["name"] for g in rules} == {
        "kfrelease-model-quality",
        "kfrelease-model-freshness",
    }
    status = httpcalls.get(stack.url("alertmanager", "/api/v2/status")).json()
    assert f"127.0.0.1:{stack.port('alert-receiver')}/alerts" in status["config"]["original"]
