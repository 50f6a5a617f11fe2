from kfrelease.components.base import kfrelease_component


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

    from kfrelease.config import log_to_stderr
    from kfrelease.monitoring.spark_app import render_spark_application, submit_and_wait

    log_to_stderr()
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
