"""The same window on Spark (local mode) and on the embedded engine (DuckDB): equal numbers on the same
Parquet files (counts exactly, metrics and PSI within 1e-9)."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from kfrelease.lake import join as J
from kfrelease.lake import schema as S
from kfrelease.lake import windows as LW
from kfrelease.lake.drift import psi_drift
from kfrelease.lake.engine import _files_view, connect, define_views

FEATURES = ["age", "sex", "bmi"]
T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def _write(tmp_path, n=2000):
    rng = np.random.default_rng(7)
    lines, labels = [], []
    for i in range(n):
        t = (T0 + dt.timedelta(seconds=3 * i)).isoformat()
        x = [
            float(rng.normal(50, 10)),
            float(rng.choice([1.0, 2.0])),
            float(rng.gamma(2, 3)),
        ]
        for version, isvc in (("V1.1.0", "m"), ("V1.2.0", "m-staging")):
            ev = {
                "id": f"r{i}",
                "time": t,
                "source": "http://localhost:9081/",
                "model": "m",
                "model_version": version,
                "stage": "staging" if "staging" in isvc else "production",
                "inferenceservicename": isvc,
                "endpoint": "default",
            }
            lines.append({**ev, "type": "request", "instances": [x]})
            lines.append(
                {
                    **ev,
                    "type": "response",
                    "predictions": [x[0] * 0.5 + float(rng.normal(0, 3))],
                }
            )
        if i % 2 == 0:
            labels.append({"request_id": f"r{i}", "truth": x[0] * 0.5, "time": t})
        if i % 7 == 0:  # a later correction wins
            labels.append(
                {
                    "request_id": f"r{i}",
                    "truth": x[0] * 0.4,
                    "time": (T0 + dt.timedelta(days=1)).isoformat(),
                }
            )
    lines += lines[:50]  # repeated events count once
    paths = {}
    for bucket, rows, fn, schema in (
        ("events", lines, S.event_rows, S.PREDICTION_SCHEMA),
        ("labels", labels, S.label_rows, S.LABEL_SCHEMA),
    ):
        paths[bucket] = []
        for (_, part), table in S.group_by_partition((("m", r) for r in rows), fn, schema).items():
            f = tmp_path / bucket / part / "b.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(S.parquet_bytes(table))
            paths[bucket].append(str(f))
    reference = pd.DataFrame(
        {
            "age": rng.normal(50, 10, 442),
            "sex": rng.choice([1.0, 2.0], 442),
            "bmi": rng.gamma(2, 2.5, 442),
        }
    )
    return paths, reference


def test_spark_local_mode_gives_the_engines_numbers(tmp_path):
    from kfrelease.lake.spark import define_views as spark_views
    from kfrelease.lake.spark import local_session, window_result

    paths, reference = _write(tmp_path)
    con = connect()
    _files_view(con, "events", paths["events"], S.PREDICTION_SCHEMA)
    _files_view(con, "labels", paths["labels"], S.LABEL_SCHEMA)
    define_views(con, FEATURES)
    mine = []
    for r in con.execute(LW.window_sums_sql("joined", "time", 86400)).df().itertuples():
        row = {
            "version": r.model_version,
            "stage": r.stage,
            "w": int(r.w),
            "predictions": int(r.predictions),
            "labelled": int(r.labelled),
            **LW.metrics_from_sums(int(r.labelled), r.sse, r.sae, r.sst),
            "intervals": LW.intervals_from_sums(int(r.labelled), r.sse, r.sae, r.sst, r.se4, r.st4, r.sest),
            "last_time": r.last_time,
        }
        rows = (
            f"(SELECT * FROM (SELECT *, {LW.window_id_sql('time', 86400)} AS _w FROM joined) "
            f"WHERE model_version = '{r.model_version}' AND stage = '{r.stage}' AND _w = {int(r.w)})"
        )
        d = psi_drift(con, rows, reference, FEATURES)
        row.update(
            drift_share=d.share_drifted,
            drifted=d.drifted,
            psi={k: c["score"] for k, c in d.columns.items()},
        )
        mine.append(row)
    spark = local_session(threads=1)
    try:
        spark_views(spark, paths["events"], paths["labels"], FEATURES)
        theirs = window_result(spark, FEATURES, "time", 86400, reference)
    finally:
        spark.stop()
    key = lambda r: (r["version"], r["stage"], r["w"])
    mine, theirs = sorted(mine, key=key), sorted(theirs, key=key)
    assert [key(r) for r in mine] == [key(r) for r in theirs] and len(mine) == 2  # 2 versions, one day
    assert sum(r["predictions"] for r in mine if r["version"] == "V1.1.0") == 2000
    for a, b in zip(mine, theirs):
        assert (a["predictions"], a["labelled"], a["drifted"]) == (
            b["predictions"],
            b["labelled"],
            b["drifted"],
        )
        for k in ("mse", "rmse", "mae", "r2", "drift_share"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
        for f in FEATURES:
            assert a["psi"][f] == pytest.approx(b["psi"][f], rel=1e-9, abs=1e-12), f
        # what the pushed window's alerts need: the metrics' 95% bounds and the freshness times
        for k in ("mse", "rmse", "mae", "r2"):
            assert a["intervals"][k] == pytest.approx(b["intervals"][k], rel=1e-9, abs=1e-12), k
        assert pd.Timestamp(b["last_time"]) == pd.Timestamp(a["last_time"]).tz_convert("UTC")
    assert J.SPARK.name == "spark"
