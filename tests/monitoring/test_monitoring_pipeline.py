"""The monitoring pipeline under kfp.local: the page and one Evidently report per window as HTML artifacts,
windows recorded in the object store, drift against the registered model's curated training data."""

import uuid

import numpy as np
import pandas as pd
import pytest

from kfrelease.errors import ConfigError
from kfrelease.kfp.runner import run_local
from kfrelease.monitoring.passes import load_history
from kfrelease.monitoring.spark_app import monitoring_engine
from kfrelease.monitoring.synthetic import (
    publish_reference,
    register_entry,
    span_start,
    write_traffic,
)
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration
FEATURES = ["x1", "x2", "x3"]


def test_pipeline_writes_page_and_a_report_per_window(stack, run_cli, tmp_path):
    from kfrelease.pipelines.monitoring_pipeline import monitoring_pipeline

    model = f"mon-pipe-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(5)
    reference = pd.DataFrame(rng.normal(size=(300, 3)), columns=FEATURES)
    dataset_version = publish_reference(store_for("data-engineer", stack), f"{model}-data", reference)
    register_entry(
        store_for("pipeline", stack),
        model,
        "V2.1.0",
        FEATURES,
        rmse=1.0,
        dataset=f"{model}-data",
        dataset_version=dataset_version,
    )
    start = span_start(2)  # inside one UTC day: the 1-day window holds all of it
    for stage, shift in (("production", 0.0), ("staging", 4.0)):
        x = pd.DataFrame(rng.normal(size=(240, 3)), columns=FEATURES)
        y = x.sum(axis=1)
        write_traffic(
            store_for("serving", stack),
            model,
            "V2.1.0",
            stage,
            x + shift,
            y + rng.normal(size=240),
            y,
            start=start,
            step_seconds=30,
        )
    # the engine switch counts the lookback's logged predictions from the batches' footers: 480 -> DuckDB
    store = store_for("monitoring", stack)
    choice = monitoring_engine(store, model, "1d", "2d")
    assert (choice.engine, choice.predictions, choice.features) == ("duckdb", 2 * 240, FEATURES)
    with pytest.raises(ConfigError, match="needs Spark.*spark_image"):
        monitoring_engine(store, model, "1d", "2d", engine="spark")
    run_local(
        stack,
        monitoring_pipeline,
        model=model,
        window="1d",
        since="2d",
        min_labels=30,
        reports="latest",
    )
    keys = store_for("pipeline", stack).list("pipeline-root", f"monitoring/{model}/reports/")
    assert len(keys) == 2  # one per (version, stage) latest window
    fetched = run_cli("reports", model, "V2.1.0", "--out", str(tmp_path), check=True).stdout  # as .html files
    drift = sorted(tmp_path.glob("drift-*.html"))
    assert fetched.count("drift:") == 2 and len(drift) == 2 and "root_metric" in drift[0].read_text()
    history = load_history(store_for("pipeline", stack), model)
    latest = history.groupby("stage").tail(1).set_index("stage")
    assert latest.loc["staging", "drift_share"] == 1.0 and latest.loc["production", "drift_share"] < 0.5
    root = stack.home / "kfp-local"
    reports = sorted(root.glob("kfrelease-monitoring-*/**/report"))
    pages = sorted(root.glob("kfrelease-monitoring-*/monitor-model/page"))
    assert pages and "plotly" in pages[-1].read_text()
    run_dir = pages[-1].parents[1]
    mine = [r for r in reports if run_dir in r.parents]
    assert len(mine) == 2, mine
    for r in mine:
        text = r.read_text()
        assert "root_metric" in text and "x1" in text and len(text) > 100_000  # an Evidently report


def test_pipeline_compiles_with_the_engine_switch_and_a_report_task_per_window(tmp_path):
    import yaml
    from kfp import compiler

    from kfrelease.pipelines.monitoring_pipeline import monitoring_pipeline

    path = tmp_path / "monitoring.yaml"
    compiler.Compiler().compile(monitoring_pipeline, str(path))
    doc, platform = yaml.safe_load_all(path.read_text())
    assert list(doc["root"]["dag"]["tasks"]) == ["choose-monitoring-engine", "condition-branches-1"]
    # the steps that push to the Pushgateway (the embedded engine's monitor, the Spark branch's push; review
    # eks6 M1: the Spark branch pushed nothing) alone carry the step identity that mounts the credentials
    labelled = {
        name: e["podMetadata"]["labels"]
        for name, e in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()
        if "podMetadata" in e
    }
    monitoring = {"kfrelease.io/step-identity": "monitoring"}
    assert labelled == {"exec-monitor-model": monitoring, "exec-push-spark-window": monitoring}
    dags = {name: c["dag"]["tasks"] for name, c in doc["components"].items() if "dag" in c}
    branches = dags["comp-condition-branches-1"]
    conditions = {t["componentRef"]["name"]: t["triggerPolicy"]["condition"] for t in branches.values()}
    embedded = next(c for c, cond in conditions.items() if cond.endswith("== 'duckdb'"))
    spark = next(c for c, cond in conditions.items() if cond.startswith("!("))
    assert "monitor-model" in dags[embedded] and list(dags[spark]) == ["monitor-window-on-spark", "push-spark-window"]
    push = dags[spark]["push-spark-window"]  # after the application, on its result
    assert push["dependentTasks"] == ["monitor-window-on-spark"]
    assert push["inputs"]["parameters"]["result"]["taskOutputParameter"]["producerTask"] == "monitor-window-on-spark"
    loop = next(t for name, t in dags[embedded].items() if name.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("Output")
    assert doc["root"]["inputDefinitions"]["parameters"]["window"]["defaultValue"] == "1h"
