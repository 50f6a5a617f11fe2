"""The end of a monitoring pass on Spark: read the window result the ``SparkApplication`` wrote
(``kfrelease.lake.spark.main``: one JSON list of windows, written with ``saveAsTextFile`` as ``part-*`` files
under ``s3a://<prefix>pipeline-root/monitoring/<model>/spark/<run>``, ``kfrelease.monitoring.spark_app``),
turn it into the embedded engine's ``WindowResult``s (same status rules: ``no-ground-truth``,
``insufficient`` below ``min_labels``, else ``ok`` with metrics and their 95% intervals), record it under
``monitoring/<model>/runs/`` and push the latest windows to the Pushgateway (``passes.record_and_push``):
the same gauges, so the same alerts and the same automatic retrain as a model monitored on one machine.
"""

from __future__ import annotations

import functools
import logging

import orjson

from kfrelease.config import Settings
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.lake import windows as LW
from kfrelease.monitoring import sources
from kfrelease.monitoring.passes import RESULT_BUCKET, MonitorRun, new_run_id, record_and_push
from kfrelease.monitoring.window import (
    DEFAULT_R2_FLOOR,
    MonitorOutcome,
    WindowResult,
    WindowSpec,
    settle,
    window_bounds,
)
from kfrelease.quality.metrics import InsufficientData
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)


def result_prefix(store: ObjectStore, out: str, model: str) -> str:
    """The key prefix (ending in ``/``) in ``pipeline-root`` of the application's ``--out`` URI, which must be
    ``monitoring/<model>/spark/<run>``: the URI reaches the push step as the Spark step's output, through KFP's
    metadata store, and only the monitoring identity writes under ``monitoring/`` (the untrusted steps write
    their own training tasks' outputs: ``kfrelease.k8s.render.eks.untrusted_step_policy``), so no other file of
    the bucket is pushed as this model's window (review eks7 P3)."""
    scheme, _, rest = out.partition("://")
    bucket, _, key = rest.partition("/")
    own = f"monitoring/{model}/spark/"
    run = key.strip("/").removeprefix(own)
    if (
        scheme not in ("s3a", "s3")
        or bucket != store.bucket(RESULT_BUCKET)
        or not key.startswith(own)
        or not run
        or "/" in run
        or ".." in run
    ):
        raise ConfigError(
            f"the Spark result {out!r} is not s3a://{store.bucket(RESULT_BUCKET)}/{own}<run> "
            "(where the monitoring SparkApplication writes this model's window, kfrelease.monitoring.spark_app)"
        )
    return key.strip("/") + "/"


def read_spark_result(store: ObjectStore, out: str, model: str) -> list[dict]:
    """The windows the application wrote at ``out`` (every ``part-*`` file, one JSON list per line)."""
    prefix = result_prefix(store, out, model)
    parts = sorted(o.key for o in store.iter(RESULT_BUCKET, prefix) if o.key.rsplit("/", 1)[-1].startswith("part-"))
    if not parts:
        raise KfreleaseError(
            f"no result at {out}/part-*: the SparkApplication wrote nothing there (see its driver's log)"
        )
    rows: list[dict] = []
    for key in parts:
        for line in store.get_bytes(RESULT_BUCKET, key).splitlines():
            if line.strip():
                rows.extend(orjson.loads(line))
    return rows


def _computed(row: dict, min_labels: int) -> dict:
    """The numbers the application computed for a window, held to this step's ``min_labels`` too."""
    LW.require_labels(int(row["labelled"]), min_labels)
    if row.get("mse") is None:  # the application's own ``--min-labels`` was higher
        raise InsufficientData(f"{row['labelled']} labelled rows; the Spark application gave no verdict on them")
    return row


def spark_windows(
    model: str, rows: list[dict], spec: WindowSpec, min_labels: int, baselines: dict[str, dict]
) -> MonitorOutcome:
    """The application's windows as ``WindowResult``s (``compute_windows_engine``'s rules)."""
    outcome = MonitorOutcome(model, [])
    if not rows:
        outcome.warnings.append(f"no predictions of model {model!r} were logged in the period (Spark)")
    for r in sorted(rows, key=lambda r: (str(r["version"]), str(r["stage"]), int(r["w"]))):
        base = baselines.get(str(r["version"]), {})
        start, end = window_bounds(spec, int(r["w"]), r.get("first_time"), r.get("last_time"))
        res = WindowResult(
            model=model,
            version=str(r["version"]),
            stage=str(r["stage"]),
            window=spec.label,
            start=start,
            end=end,
            predictions=int(r["predictions"]),
            labelled=int(r["labelled"]),
            status="ok",
            baseline_rmse=base.get("rmse"),
            r2_floor=base.get("r2_floor", DEFAULT_R2_FLOOR),
            last_prediction_time=r.get("last_time"),
            last_truth_time=r.get("last_truth_time"),
        )
        settle(res, functools.partial(_computed, r, min_labels))
        if r.get("psi") is not None:
            drifted = list(r.get("drifted") or [])
            res.drift_share, res.drifted = r.get("drift_share"), drifted
            res.feature_drift = {f: {"score": s, "drifted": f in drifted} for f, s in r["psi"].items()}
        outcome.windows.append(res)
    return outcome


def push_spark_result(
    settings: Settings,
    model: str,
    out: str,
    *,
    window: WindowSpec,
    min_labels: int,
    read_store: ObjectStore | None = None,
    write_store: ObjectStore | None = None,
    push: bool = True,
) -> MonitorRun:
    """Read the Spark application's result at ``out``, record its windows and push the latest ones."""
    reader = read_store or store_for("monitoring", settings)
    writer = write_store or store_for("pipeline", settings)
    rows = read_spark_result(writer, out, model)  # pipeline-root: the pipeline role's bucket
    outcome = spark_windows(
        model, rows, window, min_labels, sources.baselines_of(sources.model_versions(reader, model))
    )
    run = MonitorRun(new_run_id(), outcome)
    record_and_push(settings, writer, run, window, min_labels, push=push)
    log.info("%s: %d Spark window(s) from %s recorded at %s", model, len(outcome.windows), out, run.record_key)
    return run
