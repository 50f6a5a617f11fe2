from typing import NamedTuple

from kfrelease.components.base import kfrelease_component


@kfrelease_component
def choose_monitoring_engine(
    model: str, window: str, since: str, engine: str = "auto", spark_image: str = ""
) -> NamedTuple("EngineChoice", [("engine", str), ("features", str), ("spark_window", str), ("since", str)]):
    """Which engine computes this monitoring pass: the embedded engine (DuckDB) or Spark.

    Args:
        model: model name in the registry.
        window: a duration (``1h``) or a count of labelled predictions (``500``).
        since: how far back to read the logs (``1d``).
        engine: ``auto`` (by the logged predictions of the lookback, ``choose_engine``), ``duckdb`` or ``spark``.
        spark_image: the Spark image; a pass that needs Spark without one is refused here, before any work.

    Returns:
        engine (``duckdb`` or ``spark``), the model's features (comma separated), the window and the
        lookback's ISO start in the form the Spark application takes.
    """
    import logging
    from collections import namedtuple

    from kfrelease.config import Settings
    from kfrelease.monitoring.spark_app import monitoring_engine
    from kfrelease.storage import store_for

    logging.basicConfig(level=logging.INFO)
    choice = monitoring_engine(store_for("monitoring", Settings.from_env()), model, window, since, engine, spark_image)
    out = namedtuple("EngineChoice", ["engine", "features", "spark_window", "since"])
    return out(choice.engine, ",".join(choice.features), choice.spark_window, choice.since)


@kfrelease_component
def monitor_window_on_spark(
    model: str,
    features: str,
    run_id: str,
    namespace: str,
    image: str,
    bucket_prefix: str,
    window: str = "time:86400",
    since: str = "",
    executors: int = 4,
    timeout_seconds: int = 3600,
) -> str:
    """One monitoring window on Apache Spark: submit the ``SparkApplication`` to the Kubeflow Spark Operator
    and wait until it completes (the same SQL as the embedded engine, ``kfrelease.lake.spark``).

    Args:
        model: model name in the registry.
        features: the model's input features, comma separated, in input-schema order.
        run_id: names the application and its result (idempotent: a retried step waits on the same one).
        namespace: where the Spark Operator runs applications (its service account reads the lake).
        image: Spark 4.0 + Python 3 image with kfrelease[spark] and the hadoop-aws jars.
        bucket_prefix: the buckets' prefix (``<prefix>inference-logs``...).
        window: ``time:<seconds>`` or ``count:<labels>``.
        since: ISO start of the logs to read (empty: all).
        executors: Spark executors.
        timeout_seconds: how long to wait for the operator's terminal state.

    Returns:
        The ``s3a://`` prefix where the application wrote the window's result (JSON).
    """
    from kubernetes import client, config

    from kfrelease.monitoring.spark_app import render_spark_application, submit_and_wait

    config.load_incluster_config()
    doc = render_spark_application(
        model,
        features.split(","),
        run_id=run_id,
        namespace=namespace,
        image=image,
        bucket_prefix=bucket_prefix,
        window=window,
        since=since or None,
        executors=executors,
    )
    submit_and_wait(client.CustomObjectsApi(), doc, timeout=timeout_seconds)
    args = doc["spec"]["arguments"]
    return args[args.index("--out") + 1]
