"""The monitoring notebook runs top to bottom (papermill) against the embedded stack and shows the same
history as `kfrelease monitor`, each window's metrics with their 95% confidence band."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from kfrelease.monitoring.passes import run_monitoring
from kfrelease.monitoring.synthetic import register_entry, write_traffic
from kfrelease.monitoring.window import WindowSpec
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "monitoring.ipynb"


def test_monitoring_notebook_loads_and_plots_the_history(stack, tmp_path):
    import papermill

    model = f"mon-nb-{uuid.uuid4().hex[:6]}"
    features = ["x1", "x2"]
    register_entry(store_for("pipeline", stack), model, "V1.1.0", features, rmse=1.0)
    rng = np.random.default_rng(3)
    x = pd.DataFrame(rng.normal(size=(300, 2)), columns=features)
    y = x["x1"] * 3 + 1
    write_traffic(
        store_for("serving", stack),
        model,
        "V1.1.0",
        "production",
        x,
        y + rng.normal(size=300),
        y,
        start=datetime.now(UTC) - timedelta(hours=3),
        step_seconds=36,
    )
    run = run_monitoring(stack, model, window=WindowSpec("time", 3600), min_labels=30, push=False)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"model": model},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    cells = nbformat.read(out, 4).cells
    text = "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))
    assert f"{len(run.windows)} windows recorded for {model}" in text
    assert "V1.1.0" in text and "production" in text and f"plotted {len(run.windows)} windows" in text
    figures = [o for c in cells for o in c.get("outputs", []) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "the notebook shows no plotly figure"
    traces = figures[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    bands = [t for t in traces if t.get("name", "").endswith("95% interval")]
    assert bands and all(t.get("fill") == "toself" for t in bands), "the notebook's chart draws no confidence band"
