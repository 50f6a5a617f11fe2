"""The monitoring pipeline: compute the windows of a model, record and push them, and expose the page and
one Evidently drift report per window as KFP HTML artifacts. Schedule it (a KFP recurring run on the
cluster, e.g. hourly) or run it with ``kfrelease run monitoring`` / ``kfrelease monitor``.

Its first step chooses the engine (``kfrelease.monitoring.spark_app.monitoring_engine``): the embedded
engine (DuckDB, ``monitor_model``) up to 50M logged predictions in the lookback and 31 days, the Kubeflow
Spark Operator beyond (``monitor_window_on_spark``, the same SQL, then ``push_spark_window`` records and
pushes its result as ``monitor`` does); ``engine`` forces one."""

from kfp import dsl

from kfrelease.components.choose_monitoring_engine import choose_monitoring_engine
from kfrelease.components.monitor import monitor_model
from kfrelease.components.push_spark_window import push_spark_window
from kfrelease.components.spark_monitor import monitor_window_on_spark
from kfrelease.components.window_report import window_report
from kfrelease.k8s.render.platform import MONITORING_STEP, step_label
from kfrelease.training.resources import apply_step_policy


@dsl.pipeline(
    name="kfrelease-monitoring",
    description="Windowed MSE, RMSE, MAE, R2 and input drift per model version and stage, pushed to Prometheus, "
    "with an Evidently report per window; on Spark beyond one machine.",
)
def monitoring_pipeline(
    model: str = "diabetes-progression",
    window: str = "1h",
    since: str = "1d",
    min_labels: int = 30,
    reports: str = "latest",
    engine: str = "auto",
    spark_namespace: str = "kfrelease-monitoring",
    spark_image: str = "",
    bucket_prefix: str = "",
):
    # Every step is uncached: a scheduled run must read the logs and labels of its own time, not replay the
    # outputs of an earlier run with the same parameters (KFP caches by inputs unless told not to).
    chosen = choose_monitoring_engine(
        model=model, window=window, since=since, engine=engine, spark_image=spark_image
    ).set_display_name("choose engine")
    apply_step_policy(chosen)
    with dsl.If(chosen.outputs["engine"] == "duckdb", name="embedded-engine"):
        monitored = monitor_model(
            model=model, window=window, since=since, min_labels=min_labels, reports=reports
        ).set_display_name("monitor")
        apply_step_policy(monitored)
        step_label(
            monitored, MONITORING_STEP
        )  # pushes to the Pushgateway: its credentials (platform.monitoring_push_access)
        with dsl.ParallelFor(monitored.outputs["Output"]) as key:
            apply_step_policy(window_report(report_key=key).set_display_name("window report"))
    with dsl.Else(name="spark"):
        spark = monitor_window_on_spark(
            model=model,
            features=chosen.outputs["features"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            namespace=spark_namespace,
            image=spark_image,
            bucket_prefix=bucket_prefix,
            window=chosen.outputs["spark_window"],
            since=chosen.outputs["since"],
        ).set_display_name("monitor on Spark")
        apply_step_policy(spark)
        pushed = push_spark_window(
            model=model, result=spark.output, window=chosen.outputs["spark_window"], min_labels=min_labels
        ).set_display_name("push Spark window")
        apply_step_policy(pushed)
        step_label(pushed, MONITORING_STEP)  # the Spark window's gauges: same push credentials as "monitor"
