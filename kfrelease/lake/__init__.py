"""Prediction logs and ground truth as a columnar lake: the one home of their schema, layout, reader and join.

- ``kfrelease.lake.schema``: the columns, the schema version, the Hive layout ``model=/date=/hour=``;
- ``kfrelease.lake.write``: Parquet batches from the sink's and the feedback service's write-ahead logs,
  compaction of small files, the one-time conversion of JSON Lines batches;
- ``kfrelease.lake.read``: which objects a window needs, downloaded once into a local cache;
- ``kfrelease.lake.join``: the one "latest label wins" rule and the one prediction-to-truth join (SQL);
- ``kfrelease.lake.engine``: DuckDB over a window (the embedded engine);
- ``kfrelease.lake.spark``: the same computation on Apache Spark.

The functions below give pandas frames for callers that want rows (the release gates, the notebook); the
monitoring windows run inside the engine (``kfrelease.lake.windows``).
"""

from __future__ import annotations

import pandas as pd

from kfrelease.data.dtypes import text_to_numbers
from kfrelease.lake import join as J
from kfrelease.lake.join import KEYS, PAIR_COLUMNS
from kfrelease.registry import ModelRegistry

BASE_COLUMNS = ["request_id", "instance", "time", "model_version", "stage"]
LABEL_COLUMNS = ["request_id", "instance", "truth", "time"]

__all__ = [
    "BASE_COLUMNS",
    "KEYS",
    "LABEL_COLUMNS",
    "PAIR_COLUMNS",
    "count_events",
    "join_truth",
    "latest_truth",
    "read_labels",
    "read_predictions",
    "shadow_pairs",
]


def _registry_features(store, model: str):
    def lookup(version: str | None) -> list[str] | None:
        if not version:
            return None
        try:
            return [c["name"] for c in ModelRegistry(store).entry(model, version)["input_schema"]]
        except Exception:  # noqa: BLE001 - the names are a convenience; positions still work
            return None

    return lookup


def read_predictions(
    store,
    model: str,
    since=None,
    until=None,
    features: list[str] | None = None,
    warnings: list | None = None,
) -> pd.DataFrame:
    """One row per predicted instance of ``[since, until)`` (request time; UTC when naive):
    ``request_id, instance, time, model_version, stage, <features...>, prediction`` (docs/CONTRACTS.md)."""
    from kfrelease.lake.engine import open_window  # cycle: kfrelease.lake.engine imports this module

    w = open_window(store, model, since, until, features, warnings, _registry_features(store, model))
    cols = ", ".join(f'"{c}"' for c in [*BASE_COLUMNS, *w.features, "prediction"])
    frame = w.con.execute(f"SELECT {cols} FROM predictions ORDER BY time, request_id, instance").df()
    return _typed(frame)


def read_labels(store, model: str, since=None, until=None, declared=None) -> pd.DataFrame:
    """Ground truth of ``model`` (label time in ``[since, until)``): ``request_id, instance, truth, time,
    source``, every label (a request labelled twice keeps both rows; ``latest_truth`` picks one). ``source`` is
    the declared label source that posted it (``kfrelease.collectors.feedback.LabelSources``; null in files written
    before labels carried one). ``declared`` (``LabelSources.declares``): only the labels of sources it
    declares, what the release gates read."""
    from kfrelease.lake import read as R  # cycle: kfrelease.lake.read imports this module
    from kfrelease.lake.engine import _files_view, connect  # cycle: kfrelease.lake.engine imports this module
    from kfrelease.lake.schema import LABEL_BUCKET, LABEL_SCHEMA  # cycle: kfrelease.lake.schema imports this module

    warnings: list[str] = []
    batches = R.list_batches(store, LABEL_BUCKET, model, since, until)
    files = R.LakeCache.for_store(store).fetch(store, LABEL_BUCKET, batches, warnings)
    con = connect()
    _files_view(con, "labels", files, LABEL_SCHEMA)
    lo, hi = R.sql_time(R.as_utc(since)), R.sql_time(R.as_utc(until))
    where = J._time_filter("time", lo, hi, J.DUCKDB)
    has_source = "source" in {row[0] for row in con.execute("DESCRIBE labels").fetchall()}
    source = "source" if has_source else "CAST(NULL AS VARCHAR) AS source"
    frame = con.execute(
        f"SELECT request_id, instance, truth, time, {source} FROM labels WHERE {where} ORDER BY time"
    ).df()
    if declared is not None and len(frame):
        frame = frame[[bool(declared(s)) for s in frame["source"]]]
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    if "instance" in frame.columns:
        frame["instance"] = frame["instance"].astype("int64")
    for c in ("time", "truth_time"):
        if c in frame.columns:
            frame[c] = pd.to_datetime(frame[c], utc=True).astype("datetime64[ns, UTC]")
    return frame.reset_index(drop=True)


def _frames_con(**frames):
    from kfrelease.lake.engine import connect  # cycle: kfrelease.lake.engine imports this module

    con = connect()
    for name, frame in frames.items():
        con.register(name, frame)
    return con


def _label_frame(labels: pd.DataFrame) -> pd.DataFrame:
    f = labels.copy()
    if "instance" not in f.columns:
        f["instance"] = 0
    f["instance"] = f["instance"].fillna(0).astype("int64")
    f["request_id"] = f["request_id"].astype(str)
    f["truth"] = text_to_numbers(f["truth"])
    f["time"] = pd.to_datetime(f["time"], utc=True, format="ISO8601") if "time" in f.columns else pd.NaT
    return f[LABEL_COLUMNS]


def latest_truth(labels: pd.DataFrame) -> pd.DataFrame:
    """The one "latest label wins" rule on a frame of labels: ``request_id, instance, truth, truth_time``."""
    if labels is None or labels.empty:
        return pd.DataFrame(
            {
                "request_id": pd.Series(dtype=object),
                "instance": pd.Series(dtype="int64"),
                "truth": pd.Series(dtype="float64"),
                "truth_time": pd.Series(dtype="datetime64[us, UTC]"),
            }
        )
    con = _frames_con(labels=_label_frame(labels))
    return _typed(con.execute(J.latest_labels_sql("labels", J.DUCKDB)).df())


def join_truth(predictions: pd.DataFrame, labels: pd.DataFrame, how: str = "left") -> pd.DataFrame:
    """The one join on frames: predictions with ``truth`` and ``truth_time`` of the latest label
    (``how="inner"``: only labelled predictions)."""
    truth = latest_truth(labels)
    con = _frames_con(predictions=predictions, truth=truth)
    joined = con.execute(J.joined_sql("predictions", "truth")).df()
    if how == "inner":
        joined = joined[joined["truth"].notna()]
    return _typed(joined)


def shadow_pairs(predictions: pd.DataFrame, labels: pd.DataFrame, candidate: str, production: str) -> pd.DataFrame:
    """``request_id, instance, truth, candidate, production, <features>``: labelled requests answered by
    both the candidate (as the staging shadow) and production (as the primary)."""
    features = [c for c in predictions.columns if c not in (*BASE_COLUMNS, "prediction")]
    if predictions.empty:
        return pd.DataFrame(columns=[*PAIR_COLUMNS, *features])
    joined = join_truth(predictions, labels, how="inner")
    cand = joined[(joined["model_version"] == candidate) & (joined["stage"] == "staging")]
    prod = joined[(joined["model_version"] == production) & (joined["stage"] != "staging")]
    cand = cand.drop_duplicates(KEYS)[[*KEYS, "prediction"]].rename(columns={"prediction": "candidate"})
    prod = prod.drop_duplicates(KEYS)[[*KEYS, "truth", *features, "prediction"]].rename(
        columns={"prediction": "production"}
    )
    pairs = cand.merge(prod, on=KEYS).dropna(subset=["truth", "candidate", "production"])
    return pairs[[*PAIR_COLUMNS, *features]].reset_index(drop=True)


def count_events(store, model: str, since=None, until=None) -> dict[str, int]:
    """Distinct logged events by type (dedup by source, id, type): what the loss-free checks count."""
    from kfrelease.lake.engine import open_window  # cycle: kfrelease.lake.engine imports this module

    w = open_window(store, model, since, until, features=["_"])
    rows = w.con.execute(
        "SELECT type, count(DISTINCT (source, coalesce(inferenceservicename, ''), coalesce(endpoint, ''), request_id)) "
        "FROM events GROUP BY type"
    ).fetchall()
    counts = {"request": 0, "response": 0}
    counts.update({k: int(v) for k, v in rows if k in counts})
    return counts
