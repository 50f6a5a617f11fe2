"""The UI's monitoring page: the monitoring page's own plotly figure and latest-window table
(``kfrelease.monitoring.report``) over the recorded history (``kfrelease.monitoring.passes.load_history``),
one chart per window kind (a 1-hour window and a 200-label window never share a chart), and a link to
each version's drift reports. plotly.js is served once by the UI (``/static/plotly.min.js``)."""

from __future__ import annotations

import pandas as pd

from kfrelease.monitoring.passes import current_table, load_history
from kfrelease.monitoring.report import current_table_html, figure
from kfrelease.training.results import find_reports


def monitoring_page(reader, model: str) -> dict:
    history = load_history(reader.store, model)
    charts = []
    if len(history):
        for kind, windows in history.groupby("window", sort=True):
            fig = figure(windows.reset_index(drop=True), f"{model}, window {kind}")
            charts.append(
                {"window": kind, "windows": len(windows), "html": fig.to_html(full_html=False, include_plotlyjs=False)}
            )
    current = current_table(history) if len(history) else pd.DataFrame()
    reg = reader.registry()
    versions = sorted(set(history["version"])) if len(history) else []
    drift = {v: [r for r in find_reports(reader.store, reg, model, v) if r.kind == "drift"] for v in versions}
    return {
        "model": model,
        "windows": len(history),
        "charts": charts,
        "table": current_table_html(current),
        "drift": drift,
    }
