from kfrelease.components.base import kfrelease_component


@kfrelease_component
def push_spark_window(model: str, result: str, window: str, min_labels: int) -> str:
    """Record and push the window a monitoring ``SparkApplication`` computed: the same record and the same
    Pushgateway gauges as the embedded engine's ``monitor`` step, so alerts and the automatic retrain work
    for a model monitored on Spark too (``kfrelease.monitoring.spark_result``).

    Args:
        model: model name in the registry.
        result: the ``s3a://`` prefix where the application wrote the window's result (``monitor on Spark``).
        window: the window in the application's form, ``time:<seconds>`` or ``count:<labels>``.
        min_labels: labelled predictions a window needs for a verdict (fewer: ``insufficient``).

    Returns:
        The key of the monitoring record written.
    """
    from kfrelease.config import Settings, log_to_stderr
    from kfrelease.monitoring.spark_result import push_spark_result
    from kfrelease.monitoring.window import WindowSpec

    log_to_stderr()
    kind, _, size = window.partition(":")
    run = push_spark_result(
        Settings.from_env(), model, result, window=WindowSpec(kind, int(size)), min_labels=min_labels
    )
    if run.push is not None and not run.push.ok:
        print(run.push.message)
    return run.record_key or ""
