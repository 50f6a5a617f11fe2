"""Monitoring beyond one machine: the window as a Kubeflow Spark Operator ``SparkApplication``, and when to
use it.

``render_spark_application`` writes the ``sparkoperator.k8s.io/v1beta2`` object (schema: the CRD vendored
from kubeflow/spark-operator v2.5.2, ``schemas/crds/spark-operator/``) that runs ``kfrelease.lake.spark``
(the same SQL as the embedded engine) over the lake's ``s3a://`` Hive layout and writes the window's result
as JSON. ``application_state`` reads the operator's ``status.applicationState.state``
(``api/v1beta2/sparkapplication_types.go``: SUBMITTED, RUNNING, COMPLETED, FAILED, SUBMISSION_FAILED, ...).

**When the monitoring pipeline switches engine** (``choose_engine``, applied by ``monitoring_engine`` in the
pipeline's first step): the embedded engine (DuckDB) up to ``SPARK_THRESHOLD`` logged predictions in the
lookback, Spark beyond. The benchmark
(``bench/results/monitoring.md``) measured 10M predictions in one DuckDB process on 2 shared cores within
2 GiB, cost per row flat from 1M to 10M; 50M keeps a 5x margin below the memory of a 16 GiB pipeline pod
(DuckDB spills to disk past its memory limit, so the limit is time rather than memory). Beyond it, or
when a window spans more than ``SPARK_DAYS`` days, Spark spreads the scan over executors.

The image runs Apache Spark 4.0 with Python 3 and kfrelease installed (``pip install kfrelease[spark]``)
and the ``hadoop-aws`` jars for ``s3a://``; S3 credentials come from IRSA (web identity), never from the
object.
"""

from __future__ import annotations

import datetime as dt
import logging
import time as _time
from dataclasses import dataclass

from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.k8s.render.spark import API_VERSION, application_name, spark_application
from kfrelease.registry import ModelRegistry

log = logging.getLogger(__name__)

SPARK_THRESHOLD = 50_000_000
SPARK_DAYS = 31
DONE = {"COMPLETED"}
FAILED = {"FAILED", "SUBMISSION_FAILED"}
ENTRYPOINT = "local:///opt/kfrelease/kfrelease/lake/spark.py"


class SparkApplicationFailed(KfreleaseError):
    """The Spark Operator reported the monitoring application as failed."""


def choose_engine(predictions: int, days: float = 1.0) -> str:
    """``"duckdb"`` for a window the embedded engine holds comfortably, ``"spark"`` beyond (see above)."""
    return "spark" if predictions > SPARK_THRESHOLD or days > SPARK_DAYS else "duckdb"


@dataclass(frozen=True)
class EngineChoice:
    """What the monitoring pipeline's first step decided (``monitoring_engine``)."""

    engine: str  # duckdb | spark
    predictions: int  # logged predictions in the lookback (estimated from the batches' footers)
    days: float
    features: list[str]  # the model's inputs, in input-schema order
    spark_window: str  # the window in ``kfrelease.lake.spark``'s form: time:<seconds> | count:<labels>
    since: str  # ISO start of the lookback
    reason: str


def monitoring_engine(
    store, model: str, window: str, since: str, engine: str = "auto", spark_image: str = "", now=None
) -> EngineChoice:
    """Choose the engine of one monitoring pass of ``model``: ``engine`` ``duckdb`` or ``spark`` as given,
    ``auto`` by ``choose_engine`` on the logged predictions of the lookback ``since`` (e.g. ``1d``), counted
    from the Parquet footers of its batches (ranged reads, no row is read; a request and its response are
    two logged rows). Spark needs ``spark_image``: refused with a clear error before anything runs."""
    from kfrelease.lake.read import count_logged_rows  # heavy: pandas
    from kfrelease.monitoring.window import WindowSpec  # heavy: pandas

    if engine not in ("auto", "duckdb", "spark"):
        raise ConfigError(f"engine is {engine!r}; use auto, duckdb or spark")
    lookback, spec = WindowSpec.parse(since), WindowSpec.parse(window)
    if lookback.kind != "time":
        raise ConfigError(f"since is {since!r}; give a duration such as 1d")
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(seconds=lookback.size)
    days = lookback.size / 86400
    predictions = count_logged_rows(store, model, start, now) // 2
    chosen = engine if engine != "auto" else choose_engine(predictions, days)
    why = (
        f"{engine} as asked"
        if engine != "auto"
        else f"{predictions} logged predictions over {days:g} days "
        f"({'beyond' if chosen == 'spark' else 'within'} {SPARK_THRESHOLD} / {SPARK_DAYS} days)"
    )
    if chosen == "spark" and not spark_image:
        raise ConfigError(
            f"monitoring {model} needs Spark ({why}); give the pipeline's spark_image "
            "(Spark 4.0 with kfrelease[spark] and hadoop-aws), or engine=duckdb"
        )
    registry = ModelRegistry(store)
    current = registry.current(model, "production") or next(iter(registry.list(model)[-1:]), None)
    features = [c["name"] for c in (current.entry.get("input_schema") or [])] if current else []
    if chosen == "spark" and not features:
        raise ConfigError(f"model {model!r} has no registered version with an input schema; Spark needs the features")
    log.info("monitoring %s on %s: %s", model, chosen, why)
    return EngineChoice(chosen, predictions, days, features, f"{spec.kind}:{spec.size}", start.isoformat(), why)


def _name(model: str, run_id: str) -> str:
    return application_name("monitor", model, run_id)


def render_spark_application(
    model: str,
    features: list[str],
    *,
    run_id: str,
    namespace: str,
    image: str,
    bucket_prefix: str,
    service_account: str = "kfrelease-monitoring",
    window: str = "time:86400",
    since: str | None = None,
    until: str | None = None,
    executors: int = 4,
    executor_memory: str = "4g",
) -> dict:
    """The SparkApplication of one monitoring window of ``model`` (validated by the tests against the CRD)."""
    logs = f"s3a://{bucket_prefix}inference-logs/model={model}/"
    labels = f"s3a://{bucket_prefix}feedback/model={model}/"
    out = f"s3a://{bucket_prefix}pipeline-root/monitoring/{model}/spark/{run_id}"
    args = ["--events", logs, "--labels", labels, "--features", ",".join(features), "--window", window, "--out", out]
    if since:
        args += ["--since", since]
    if until:
        args += ["--until", until]
    return spark_application(
        name=_name(model, run_id),
        namespace=namespace,
        labels={"kfrelease.io/model": _name(model, "")[len("monitor-") :]},
        image=image,
        entrypoint=ENTRYPOINT,
        arguments=args,
        spark_conf={
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.ansi.enabled": "false",
            "spark.hadoop.fs.s3a.aws.credentials.provider": (
                "software.amazon.awssdk.auth.credentials.WebIdentityTokenFileCredentialsProvider"
            ),
            "spark.hadoop.mapreduce.input.fileinputformat.input.dir.recursive": "true",
        },
        service_account=service_account,
        executors=executors,
        executor_memory=executor_memory,
    )


def application_state(obj: dict) -> str:
    """The operator's state of a SparkApplication ("" before the operator saw it)."""
    return str(((obj.get("status") or {}).get("applicationState") or {}).get("state") or "")


def submit_and_wait(api, doc: dict, *, timeout: float = 3600.0, poll: float = 10.0, clock=None, sleep=None) -> dict:
    """Create ``doc`` with ``api`` (a ``kubernetes.client.CustomObjectsApi``) and wait until the operator
    reports COMPLETED (returns the object) or a failure (raises ``SparkApplicationFailed``). An object of
    the same name that already exists is waited on, not duplicated (a retried pipeline step)."""
    clock = clock or _time.monotonic
    sleep = sleep or _time.sleep
    group, version = API_VERSION.split("/")
    ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
    try:
        api.create_namespaced_custom_object(group, version, ns, "sparkapplications", doc)
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise
    deadline = clock() + timeout
    while True:
        obj = api.get_namespaced_custom_object(group, version, ns, "sparkapplications", name)
        state = application_state(obj)
        if state in DONE:
            return obj
        if state in FAILED:
            message = ((obj.get("status") or {}).get("applicationState") or {}).get("errorMessage", "")
            raise SparkApplicationFailed(
                f"SparkApplication {ns}/{name} ended {state}: {message or 'no message'}; see the driver's log "
                f"(kubectl -n {ns} logs {name}-driver)"
            )
        if clock() >= deadline:
            raise SparkApplicationFailed(
                f"SparkApplication {ns}/{name} not finished after {timeout:.0f} s (state {state or 'new'}); it keeps "
                f"running: check `kubectl -n {ns} get sparkapplication {name}`"
            )
        sleep(poll)


SPARK_IMAGE_NAME = "kfrelease-spark"
SPARK_DRIVER_ROLE = "kfrelease-spark-driver"
SPARK_SUBMITTER_ROLE = "kfrelease-spark-submitter"
_PART_OF = {"app.kubernetes.io/part-of": "kfrelease"}


def spark_rbac(namespace: str, service_account: str, submitter_ns: str, submitter_sa: str) -> list[dict]:
    """What running the monitoring window on Spark needs in ``namespace``: the driver's Role (the rules of the
    operator chart's spark Role, kubeflow/spark-operator v2.5.2
    ``charts/spark-operator-chart/templates/spark/rbac.yaml``: the driver creates and deletes its executor
    pods, their services and config maps) bound to ``service_account``, and the pipeline step's Role (create
    and read SparkApplications, ``submit_and_wait``; nothing it could stop or delete) bound to
    ``submitter_ns/submitter_sa``."""
    rbac = "rbac.authorization.k8s.io"
    driver_rules = [
        {
            "apiGroups": [""],
            "resources": ["pods", "configmaps", "persistentvolumeclaims", "services"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
        }
    ]
    submit_rules = [
        {"apiGroups": ["sparkoperator.k8s.io"], "resources": ["sparkapplications"], "verbs": ["create", "get"]}
    ]
    docs = []
    for role, rules, (sa_ns, sa) in (
        (SPARK_DRIVER_ROLE, driver_rules, (namespace, service_account)),
        (SPARK_SUBMITTER_ROLE, submit_rules, (submitter_ns, submitter_sa)),
    ):
        meta = {"name": role, "namespace": namespace, "labels": dict(_PART_OF)}
        docs.append({"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta, "rules": rules})
        docs.append(
            {
                "apiVersion": f"{rbac}/v1",
                "kind": "RoleBinding",
                "metadata": dict(meta),
                "roleRef": {"apiGroup": rbac, "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
            }
        )
    return docs


def render_scheduled_monitoring(
    model: str,
    features: list[str],
    *,
    namespace: str,
    image: str,
    bucket_prefix: str,
    service_account: str = "kfrelease-monitoring",
    schedule: str = "15 0 * * *",
    suspend: bool = True,
) -> dict:
    """A ``ScheduledSparkApplication`` (CRD vendored from kubeflow/spark-operator v2.5.2,
    ``charts/spark-operator-chart/crds/sparkoperator.k8s.io_scheduledsparkapplications.yaml``) running the
    previous day's window of ``model`` on Spark. Rendered suspended: the monitoring pipeline chooses the
    engine per pass (``monitoring_engine``); set ``suspend: false`` for a model whose daily logs are beyond
    one machine (``choose_engine``), so that its window runs on Spark every night without a pipeline."""
    app = render_spark_application(
        model,
        features,
        run_id="daily",
        namespace=namespace,
        image=image,
        bucket_prefix=bucket_prefix,
        service_account=service_account,
        since="1d",
    )
    args = app["spec"]["arguments"]
    args[args.index("--out") + 1] += "-{now}"  # each night's result to its own path
    return {
        "apiVersion": API_VERSION,
        "kind": "ScheduledSparkApplication",
        "metadata": {**app["metadata"], "name": _name(model, "daily")},
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "suspend": suspend,
            "successfulRunHistoryLimit": 3,
            "failedRunHistoryLimit": 3,
            "template": app["spec"],
        },
    }
