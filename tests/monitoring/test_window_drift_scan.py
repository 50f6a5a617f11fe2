"""A large window's drift in one scan of its joined rows (``kfrelease.lake.drift.psi_drift``: every feature's
bins or categories counted together, the bins from numpy's own edge arithmetic) equals Evidently's PSI on the
same rows (``kfrelease.quality.drift.data_drift``, every row), category columns, missing values (None), NaN,
infinities and a category unseen in training included; with two versions answering in the same window, an
unanswered request and a repeated event too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kfrelease.lake import join as J
from kfrelease.lake import schema as S
from kfrelease.lake.engine import WindowData, _files_view, connect, define_views
from kfrelease.monitoring.window import WindowSpec, compute_windows_engine
from kfrelease.quality.drift import MAX_DRIFT_ROWS, data_drift

NUMBERS = ["carat", "depth", "grade"]  # grade: 4 distinct values, binned by value
CATEGORIES = ["cut", "color"]
FEATURES = NUMBERS + CATEGORIES
CUTS = ["Fair", "Good", "Very Good", "Premium", "Ideal"]
COLORS = ["D", "E", "F", "G", "H", "I", "J"]
DAY = 86400
START_US = 1_764_892_800_000_000  # 2025-12-05T00:00:00Z: one day window


def _reference(n: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {
            "carat": rng.gamma(2.0, 0.4, n),
            "depth": rng.normal(61.7, 1.4, n),
            "grade": rng.choice([1.0, 2.0, 3.0, 4.0], n),
            "cut": rng.choice(CUTS, n, p=[0.03, 0.09, 0.22, 0.26, 0.40]),
            "color": rng.choice(COLORS, n),
        }
    )


def _current(n: int, seed: int) -> pd.DataFrame:
    """Rows with a shifted depth and cut, missing values (None) in every column, NaN and infinities among
    the numbers, and a colour the reference never holds."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "carat": rng.gamma(2.0, 0.4, n),
            "depth": rng.normal(62.5, 1.4, n),
            "grade": rng.choice([1.0, 2.0, 3.0, 4.0], n).astype(object),
            "cut": rng.choice(CUTS, n, p=[0.20, 0.10, 0.20, 0.20, 0.30]).astype(object),
            "color": rng.choice(COLORS, n).astype(object),
        }
    ).astype({"carat": object, "depth": object})
    frame.loc[rng.random(n) < 0.02, "carat"] = None
    frame.loc[rng.random(n) < 0.01, "carat"] = float("nan")
    frame.loc[rng.random(n) < 0.005, "depth"] = float("inf")
    frame.loc[rng.random(n) < 0.02, "grade"] = None
    frame.loc[rng.random(n) < 0.02, "cut"] = None
    frame.loc[rng.random(n) < 0.001, "color"] = "Z"
    return frame


def _events(rows: pd.DataFrame, version: str, first_id: int, answered: bool = True) -> pa.Table:
    """A request row and (when ``answered``) a response row per instance, as the sink writes them."""
    k = len(rows)
    ids = [f"r{first_id + i}" for i in range(k)]
    t_us = START_US + 3_600_000_000 + (np.arange(k, dtype="int64") + first_id) * 1_000_000
    numbers = [[None if v is None else float(v) for v in r] + [None] * len(CATEGORIES) for r in rows[NUMBERS].values]
    text = [[None] * len(NUMBERS) + list(r) for r in rows[CATEGORIES].values]

    def table(kind: str) -> pa.Table:
        request = kind == "request"
        return pa.table(
            {
                "request_id": ids,
                "source": ["s"] * k,
                "type": [kind] * k,
                "time": pa.array(t_us + (0 if request else 1000), S.TIME),
                "instance": pa.array(np.zeros(k, "int32")),
                "inputs": pa.array(numbers if request else [None] * k, pa.list_(pa.float64())),
                "inputs_text": pa.array(text if request else [None] * k, pa.list_(pa.string())),
                "prediction": pa.nulls(k, pa.float64()) if request else pa.array(np.arange(k, dtype="float64")),
                "model_version": [version] * k,
                "stage": ["production"] * k,
            }
        )

    parts = [table("request")] + ([table("response")] if answered else [])
    return pa.concat_tables([_conform(p, S.PREDICTION_SCHEMA) for p in parts])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    cols = [table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type) for f in schema]
    return pa.table(cols, schema=schema)


def _window(tmp_path, events: pa.Table) -> WindowData:
    """The window's views over its Parquet files and its joined rows materialised, as
    ``kfrelease.lake.engine.open_window`` does for monitoring."""
    path = tmp_path / "events.parquet"
    pq.write_table(events, path)
    ids = events.filter(pa.compute.equal(events["type"], "request"))["request_id"]
    labels = pa.table(
        {
            "request_id": ids,
            "instance": pa.array(np.zeros(len(ids), "int32")),
            "truth": pa.array(np.arange(len(ids), dtype="float64") + 0.5),
            "time": pa.array(np.full(len(ids), START_US + 80_000_000_000), S.TIME),
        }
    )
    pq.write_table(_conform(labels, S.LABEL_SCHEMA), tmp_path / "labels.parquet")
    con = connect()
    _files_view(con, "events", [str(path)], S.PREDICTION_SCHEMA, filename=True)
    _files_view(con, "labels", [str(tmp_path / "labels.parquet")], S.LABEL_SCHEMA)
    repeated, _ = con.execute(J.checks_sql("events", len(FEATURES))).fetchone()
    define_views(con, FEATURES, dedup=repeated > 0, categorical=CATEGORIES)
    con.execute("CREATE TEMP TABLE joined_rows AS SELECT * FROM joined")
    con.execute("CREATE OR REPLACE VIEW joined AS SELECT * FROM joined_rows")
    return WindowData(con, "m", FEATURES, None, None, categorical=CATEGORIES)


def _evidently(data: WindowData, version: str) -> object:
    """Evidently's PSI on every joined row of ``version``'s window (the oracle)."""
    rows = data.con.execute(f"SELECT * FROM joined WHERE model_version = '{version}'").df()
    return data_drift(_reference(), rows, FEATURES, max_rows=10**6, method="psi", categorical=CATEGORIES)


def _assert_equal(mine, theirs) -> None:
    assert mine.drifted == theirs.drifted and mine.drift_share == theirs.share_drifted
    for f in FEATURES:
        a, b = mine.feature_drift[f], theirs.columns[f]
        assert a["score"] == pytest.approx(b["score"], rel=1e-9, abs=1e-12), f
        assert a["drifted"] == b["drifted"], f
    for f in CATEGORIES:  # per-category frequencies, reference against current, and the unseen ones
        assert mine.feature_drift[f]["frequencies"] == theirs.columns[f]["frequencies"], f
        assert mine.feature_drift[f].get("unseen") == theirs.columns[f].get("unseen"), f


def test_a_large_windows_drift_equals_evidentlys_on_the_same_rows(tmp_path):
    n = MAX_DRIFT_ROWS + 4000  # above it, the engine computes the PSI itself on every row
    data = _window(tmp_path, _events(_current(n, seed=2), "V1", 0))
    (mine,) = compute_windows_engine(
        data, spec=WindowSpec("time", DAY), min_labels=30, reference=_reference(), report_for="none"
    ).windows
    assert mine.predictions == n and set(mine.drifted) >= {"depth", "cut", "color"}
    assert mine.feature_drift["color"]["unseen"] == ["Z"]
    _assert_equal(mine, _evidently(data, "V1"))


def test_two_versions_in_one_window_an_unanswered_request_and_a_repeated_event(tmp_path):
    v2 = _events(_current(MAX_DRIFT_ROWS + 1000, seed=4), "V2", 30_000)
    again = v2.filter(pa.compute.is_in(v2["request_id"], pa.array([f"r{30_000 + i}" for i in range(100)])))
    events = pa.concat_tables(
        [
            _events(_current(MAX_DRIFT_ROWS + 2000, seed=3), "V1", 0),
            v2,
            _events(_current(50, seed=5), "V1", 60_000, answered=False),
            again,  # 100 of V2's requests and answers delivered twice: each counted once
        ]
    )
    data = _window(tmp_path, events)
    out = compute_windows_engine(data, spec=WindowSpec("time", DAY), min_labels=30, reference=_reference()).windows
    assert [(w.version, w.predictions) for w in out] == [("V1", MAX_DRIFT_ROWS + 2000), ("V2", MAX_DRIFT_ROWS + 1000)]
    for w in out:
        _assert_equal(w, _evidently(data, w.version))
