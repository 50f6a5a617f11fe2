"""The monitoring window on Apache Spark: the same SQL as the embedded engine (``kfrelease.lake.join``,
``kfrelease.lake.windows``, ``kfrelease.lake.drift``) in the Spark dialect, over the same Parquet files.

Locally (tests, the benchmark) Spark runs in local mode over the files the lake reader downloaded; on EKS
the Kubeflow Spark Operator runs ``python -m kfrelease.lake.spark`` as a ``SparkApplication``
(``kfrelease.monitoring.spark_app``) over ``s3a://`` paths of the same Hive layout and writes the
window's result as JSON to the object store.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime, timedelta

import pandas as pd

from kfrelease.lake import join as J
from kfrelease.lake import read as R
from kfrelease.lake import schema as S
from kfrelease.lake import windows as LW
from kfrelease.lake.drift import psi_drift
from kfrelease.quality.metrics import InsufficientData

log = logging.getLogger(__name__)


def local_session(
    threads: int = 2, memory: str = "1g", *, app: str = "kfrelease-monitoring", conf: dict[str, str] | None = None
):
    """A small local-mode Spark session (no UI, no progress bar) for tests, the benchmark and the data pipeline's
    local ``engine: spark``. Its Python workers run this interpreter (PySpark starts them with ``PYSPARK_PYTHON``,
    read when the session's context starts). ``conf``: the job's own settings; by default the monitoring
    window's (UTC session time, ``threads`` shuffle partitions, non-ANSI casts as in ``kfrelease.monitoring.spark_app``)."""
    from pyspark.sql import SparkSession  # optional: pyspark (the spark extra)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if conf is None:
        conf = {
            "spark.sql.shuffle.partitions": str(threads),
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.ansi.enabled": "false",
        }
    builder = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", memory)
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def define_views(
    spark,
    event_paths: list[str],
    label_paths: list[str],
    features: list[str],
    since=None,
    until=None,
    categorical=(),
):
    """``events``, ``labels``, ``predictions``, ``truth``, ``joined`` as temporary views (the engine's);
    ``categorical``: the features read as category values."""

    def view(name, paths, schema):
        if paths:
            df = spark.read.option("mergeSchema", "true").parquet(*paths)  # version 1 files lack inputs_text
        else:
            df = spark.createDataFrame(schema.empty_table().to_pandas())
        df.createOrReplaceTempView(name)

    view("events", event_paths, S.PREDICTION_SCHEMA)
    view("labels", label_paths, S.LABEL_SCHEMA)
    lo, hi = R.sql_time(R.as_utc(since)), R.sql_time(R.as_utc(until))
    predictions = J.predictions_sql("events", features, J.SPARK, lo, hi, categorical=frozenset(categorical))
    spark.sql(predictions).createOrReplaceTempView("predictions")
    spark.sql(J.latest_labels_sql("labels", J.SPARK, lo)).createOrReplaceTempView("truth")
    joined = spark.sql(J.joined_sql("predictions", "truth")).cache()
    joined.createOrReplaceTempView("joined")
    return joined


def window_sums(spark, kind: str, size: int) -> pd.DataFrame:
    """The per-window sums (``kfrelease.lake.windows.window_sums_sql``) as a frame."""
    return spark.sql(LW.window_sums_sql("joined", kind, size, J.SPARK)).toPandas()


def window_result(
    spark,
    features: list[str],
    kind: str,
    size: int,
    reference: pd.DataFrame | None,
    min_labels: int = 1,
    categorical=(),
) -> list[dict]:
    """Every window's counts, first/last prediction and last truth times, metrics with their 95% intervals and
    (with a reference) PSI drift: what the engine computes. The SparkApplication writes this list as JSON
    (``main``); the monitoring pipeline's next step pushes it (``kfrelease.monitoring.spark_result``)."""
    out = []
    for r in window_sums(spark, kind, size).itertuples():
        row = {
            "version": r.model_version,
            "stage": r.stage,
            "w": int(r.w),
            "predictions": int(r.predictions),
            "labelled": int(r.labelled),
            "first_time": LW.iso_utc(r.first_time),
            "last_time": LW.iso_utc(r.last_time),
            "last_truth_time": LW.iso_utc(r.last_truth_time) if int(r.labelled) else None,
        }
        try:
            sums = [float(v) for v in (r.sse, r.sae, r.sst, r.se4, r.st4, r.sest)]
            row.update(LW.window_metrics(int(r.labelled), *sums, min_labels))
        except (InsufficientData, TypeError):  # too few labels; no sums (float(None)) where none are labelled
            pass
        if reference is not None:
            v, s = (
                str(r.model_version).replace("'", "''"),
                str(r.stage).replace("'", "''"),
            )
            rows = (
                f"(SELECT * FROM (SELECT *, {LW.window_id_sql(kind, size, J.SPARK)} AS _w FROM joined) x "
                f"WHERE model_version = '{v}' AND stage = '{s}' AND _w = {int(r.w)})"
            )
            d = psi_drift(spark, rows, reference, features, dialect=J.SPARK, categorical=categorical)
            row.update(
                drift_share=d.share_drifted,
                drifted=d.drifted,
                psi={k: c["score"] for k, c in d.columns.items()},
            )
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the SparkApplication: one window over ``--events``/``--labels`` Parquet paths."""
    p = argparse.ArgumentParser(prog="python -m kfrelease.lake.spark", description=main.__doc__)
    p.add_argument(
        "--events",
        nargs="+",
        required=True,
        help="Parquet paths or globs of the prediction logs",
    )
    p.add_argument(
        "--labels",
        nargs="*",
        default=[],
        help="Parquet paths or globs of the ground truth",
    )
    p.add_argument("--features", required=True, help="comma-separated input features, in order")
    p.add_argument("--window", default="time:86400", help="time:<seconds> or count:<labels>")
    p.add_argument("--since", help="ISO start, or a duration back from now (e.g. 1d: a scheduled application)")
    p.add_argument("--until")
    p.add_argument("--reference", help="Parquet path of the drift reference (the training data)")
    p.add_argument(
        "--out",
        help="where to write the result JSON (s3a:// or a local path; {now} becomes the UTC time, so a scheduled "
        "application writes each run to its own path); default stdout",
    )
    args = p.parse_args(argv)
    from pyspark.sql import SparkSession  # optional: pyspark (the spark extra)

    spark = SparkSession.builder.appName("kfrelease-monitoring").getOrCreate()
    kind, size = args.window.split(":")
    features = args.features.split(",")
    now = datetime.now(UTC)
    since = args.since
    if since and since[-1:] in ("s", "m", "h", "d") and since[:-1].replace(".", "", 1).isdigit():
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[since[-1]]
        since = (now - timedelta(seconds=float(since[:-1]) * unit)).isoformat()
    define_views(spark, args.events, args.labels, features, since, args.until)
    reference = spark.read.parquet(args.reference).toPandas() if args.reference else None
    doc = json.dumps(window_result(spark, features, kind, int(size), reference), default=str)
    if args.out:
        out = args.out.replace("{now}", now.strftime("%Y%m%dT%H%M%SZ"))
        spark.sparkContext.parallelize([doc], 1).saveAsTextFile(out)
    else:
        sys.stdout.write(doc + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
