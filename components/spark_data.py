from kfrelease.components.base import kfrelease_component


@kfrelease_component
def publish_on_spark(
    spec_yaml: str,
    run_id: str,
    namespace: str = "kfrelease-data",
    image: str = "",
    executors: int = 4,
    timeout_seconds: int = 6 * 3600,
    features_dir: str = "",
) -> str:
    """Ingest, validate, engineer features and publish on Apache Spark: the same rules, errors and version id as
    the embedded steps (``kfrelease.data.spark``). In a cluster: a ``SparkApplication`` submitted to the Kubeflow
    Spark Operator and waited on until its terminal state; elsewhere (the embedded stack): Spark in local mode.

    Args:
        spec_yaml: the dataset spec (YAML text), ``engine: spark``.
        run_id: names the application and its staging prefix (a retried step waits on the same one).
        namespace: where the Spark Operator runs the data engineers' applications.
        image: Spark 4.0 + Python 3 image with kfrelease[spark] (the cluster needs one).
        executors: Spark executors.
        timeout_seconds: how long to wait for the operator's terminal state.
        features_dir: a local folder where the feature step's module may be (embedded stack only).

    Returns:
        The published version id.
    """
    import os

    from kfrelease.config import log_to_stderr
    from kfrelease.data.spec import parse_spec
    from kfrelease.errors import ConfigError
    from kfrelease.storage import store_for

    log_to_stderr()
    spec = parse_spec(spec_yaml)
    store = store_for("data-engineer")
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        from kfrelease.data.spark import local_session, run_on_spark

        search = (features_dir,) if features_dir else ()
        return run_on_spark(spec, store, local_session(), run_id=run_id, search=search).version
    if not image:
        raise ConfigError(f"dataset {spec.name!r} names engine: spark; give the pipeline's spark_image")
    from kubernetes import client, config

    from kfrelease.data.spark import render_data_application, result_of
    from kfrelease.monitoring.spark_app import submit_and_wait

    config.load_incluster_config()
    doc = render_data_application(spec, run_id=run_id, namespace=namespace, image=image, executors=executors)
    submit_and_wait(client.CustomObjectsApi(), doc, timeout=timeout_seconds)
    return result_of(store, spec, run_id)
