"""The monitoring pipeline: compute the windows of a model, record and push them, and expose the page and
one Evidently drift report per window as KFP HTML artifacts. Schedule it (a KFP recurring run on the
cluster, e.g. hourly) or run it with ``kfrelease run monitoring`` / ``kfrelease monitor``."""

from kfp import dsl
from kfrelease.components.monitor import monitor_model, window_report


@dsl.pipeline(
    name="kfrelease-monitoring",
    description="Windowed MSE, RMSE, MAE, R2 and input drift per model version and stage, pushed to Prometheus, "
    "with an Evidently report per window.",
)
def monitoring_pipeline(
    model: str = "diabetes-progression",
    window: str = "1h",
    since: str = "1d",
    min_labels: int = 30,
    reports: str = "latest",
):
    monitored = monitor_model(
        model=model, window=window, since=since, min_labels=min_labels, reports=reports
    ).set_display_name("monitor")
    with dsl.ParallelFor(monitored.outputs["Output"]) as key:
        window_report(report_key=key).set_display_name("window report")
