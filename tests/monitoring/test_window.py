"""Windowed metrics: equal to scikit-learn on the same joined rows; insufficient and unlabelled windows
are reported as such (never NaN); schema problems are clear errors."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from kfrelease.errors import ConfigError, DataValidationError
from kfrelease.monitoring.window import WindowSpec
from tests.monitoring.window_oracle import compute_windows

FEATURES = ["a", "b"]


def frames(
    n=300,
    seed=0,
    versions=("V1.1.0",),
    stage="production",
    label_every=1,
    start="2026-11-25T00:00:00Z",
):
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    rows, truth = [], []
    for v in versions:
        for i in range(n):
            rid = f"{v}-{i}"
            x = rng.normal(size=2)
            y = 3 * x[0] - x[1] + rng.normal()
            rows.append(
                {
                    "request_id": rid,
                    "time": (t0 + pd.Timedelta(seconds=10 * i)).isoformat(),
                    "model_version": v,
                    "stage": stage,
                    "a": x[0],
                    "b": x[1],
                    "prediction": y + rng.normal(),
                }
            )
            if i % label_every == 0:
                truth.append(
                    {
                        "request_id": rid,
                        "instance": 0,
                        "truth": y,
                        "time": (t0 + pd.Timedelta(seconds=10 * i + 5)).isoformat(),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(truth)


def windows_of(preds, truth, **options):
    """The oracle's windows of this file's model ``m`` over ``FEATURES`` (``options``: what a test sets)."""
    return compute_windows(preds, truth, model="m", features=FEATURES, **options)


def test_metrics_equal_sklearn_on_the_joined_rows_per_time_window():
    preds, truth = frames(n=1000, label_every=3)
    out = windows_of(preds, truth, spec=WindowSpec("time", 3600), min_labels=10)
    assert len(out.windows) == 3  # 10 000 s of traffic in 1 h windows
    joined = preds.merge(truth, on="request_id")
    joined["w"] = pd.to_datetime(joined["time_x"], utc=True).astype("int64") // 10**9 // 3600
    for w, res in zip(sorted(joined["w"].unique()), out.windows):
        sub = joined[joined["w"] == w]
        assert res.status == "ok" and res.labelled == len(sub)
        assert abs(res.mse - skm.mean_squared_error(sub["truth"], sub["prediction"])) < 1e-9
        assert abs(res.rmse - np.sqrt(skm.mean_squared_error(sub["truth"], sub["prediction"]))) < 1e-9
        assert abs(res.mae - skm.mean_absolute_error(sub["truth"], sub["prediction"])) < 1e-9
        assert abs(res.r2 - skm.r2_score(sub["truth"], sub["prediction"])) < 1e-9
    assert sum(w.predictions for w in out.windows) == 1000


def test_count_windows_hold_that_many_labelled_predictions_per_version():
    preds, truth = frames(n=250, versions=("V1.1.0", "V1.2.0"))
    out = windows_of(preds, truth, spec=WindowSpec("count", 100), min_labels=30)
    by_version = {}
    for w in out.windows:
        by_version.setdefault(w.version, []).append(w)
    assert [w.labelled for w in by_version["V1.1.0"]] == [100, 100, 50]
    first = preds[preds.model_version == "V1.2.0"].head(100).merge(truth, on="request_id")
    assert abs(by_version["V1.2.0"][0].r2 - skm.r2_score(first["truth"], first["prediction"])) < 1e-9
    latest = windows_of(preds, truth, spec=WindowSpec("count", 100), latest_only=True).windows
    # the trailing window (50 labels) is still filling: the latest is the last complete one (labels 100..199)
    assert [(w.version, w.labelled) for w in latest] == [("V1.1.0", 100), ("V1.2.0", 100)]
    assert [(w.version, w.start) for w in out.latest()] == [(w.version, w.start) for w in latest]
    second = [w for w in by_version["V1.1.0"]][1]
    assert latest[0].start == second.start and latest[0].rmse == second.rmse
    # with no complete window yet, the latest is the filling one, reported as such
    preds, truth = frames(n=20)
    only = windows_of(preds, truth, spec=WindowSpec("count", 100))
    assert [(w.labelled, w.status) for w in only.latest()] == [(20, "insufficient")]


def test_too_few_labels_is_insufficient_not_nan():
    preds, truth = frames(n=100, label_every=10)  # 10 labels
    out = windows_of(preds, truth, spec=WindowSpec("time", 86400), min_labels=30)
    (w,) = out.windows
    assert w.status == "insufficient" and w.labelled == 10 and w.predictions == 100
    assert w.r2 is None and w.rmse is None and "at least 30" in w.message


def test_logs_without_ground_truth_are_reported_not_crashed():
    preds, _ = frames(n=50)
    out = windows_of(preds, pd.DataFrame(), spec=WindowSpec("time", 86400))
    (w,) = out.windows
    assert w.status == "no-ground-truth" and w.r2 is None and w.last_truth_time is None
    assert any("no ground truth" in m for m in out.warnings)


def test_no_predictions_is_a_warning():
    out = windows_of(pd.DataFrame(), pd.DataFrame())
    assert out.windows == [] and "no predictions" in out.warnings[0]


def test_logs_missing_a_feature_are_a_clear_error():
    preds, truth = frames(n=10)
    with pytest.raises(DataValidationError, match=r"lack the input features \['c'\]"):
        compute_windows(preds, truth, model="m", features=["a", "b", "c"])


def test_window_spec_parsing():
    assert WindowSpec.parse("1h") == WindowSpec("time", 3600)
    assert WindowSpec.parse("15m") == WindowSpec("time", 900)
    assert WindowSpec.parse("500") == WindowSpec("count", 500)
    with pytest.raises(ConfigError, match="not understood"):
        WindowSpec.parse("soon")


def test_drift_of_shifted_inputs_is_detected_and_healthy_inputs_are_not():
    preds, truth = frames(n=400)
    rng = np.random.default_rng(1)
    reference = pd.DataFrame(rng.normal(size=(400, 2)), columns=FEATURES)
    healthy = windows_of(preds, truth, spec=WindowSpec("time", 86400), reference=reference).windows[0]
    shifted = preds.assign(a=preds["a"] + 3, b=preds["b"] - 3)
    drifted = windows_of(shifted, truth, spec=WindowSpec("time", 86400), reference=reference).windows[0]
    assert healthy.drift_share == 0.0 and drifted.drift_share == 1.0 and drifted.drifted == FEATURES


def _engine_window(preds: pd.DataFrame, truth: pd.DataFrame):
    """The engine's views over frames (what ``kfrelease.lake.engine.open_window`` builds over Parquet)."""
    from kfrelease.lake import join as J
    from kfrelease.lake import latest_truth
    from kfrelease.lake.engine import WindowData, connect

    p = preds.assign(instance=0, time=pd.to_datetime(preds["time"], utc=True))
    con = connect()
    con.register("predictions", p)
    con.register("truth", latest_truth(truth))
    con.execute("CREATE VIEW joined AS " + J.joined_sql("predictions", "truth"))
    return WindowData(con, "m", FEATURES, None, None)


@pytest.mark.parametrize("spec", [WindowSpec("time", 3600), WindowSpec("count", 100)])
def test_the_engine_gives_the_numbers_of_the_frame_windows_and_of_sklearn(spec):
    from kfrelease.monitoring.window import compute_windows_engine

    preds, truth = frames(n=1000, label_every=3, versions=("V1.1.0", "V1.2.0"))
    truth = pd.concat([truth, truth.head(5).assign(truth=0.0, time="2026-11-26T00:00:00Z")])  # corrections
    mine = compute_windows_engine(_engine_window(preds, truth), spec=spec, min_labels=10, drift_for="none")
    theirs = windows_of(preds, truth, spec=spec, min_labels=10, drift_for="none")
    assert len(mine.windows) == len(theirs.windows) > 2
    for a, b in zip(mine.windows, theirs.windows):
        assert (a.version, a.stage, a.start, a.predictions, a.labelled, a.status) == (
            b.version,
            b.stage,
            b.start,
            b.predictions,
            b.labelled,
            b.status,
        )
        for k in ("mse", "rmse", "mae", "r2"):
            assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-12, abs=1e-12)
        # the same 95% intervals from the engine's sums as from the rows (alerts fire on these bounds)
        assert set(a.intervals) == set(b.intervals), (a.intervals, b.intervals)
        for k in ("mse", "rmse", "mae", "r2"):
            if b.intervals.get(k) is None:
                assert a.intervals.get(k) is None
            else:
                assert a.intervals[k] == pytest.approx(b.intervals[k], rel=1e-9, abs=1e-9), k
    assert any(w.intervals.get("rmse") for w in mine.windows), "no engine window carries an interval"
    # and scikit-learn on the first window's rows, corrections applied (the latest label wins)
    first = mine.windows[0]
    latest = truth.assign(time=pd.to_datetime(truth["time"], utc=True)).sort_values("time")
    latest = latest.drop_duplicates("request_id", keep="last")
    rows = preds.assign(time=pd.to_datetime(preds["time"], utc=True)).merge(latest[["request_id", "truth"]])
    rows = rows[(rows.model_version == first.version)].sort_values("time")
    if spec.kind == "time":
        rows = rows[(rows.time >= pd.Timestamp(first.start)) & (rows.time < pd.Timestamp(first.end))]
    else:
        rows = rows.head(100)
    assert first.mse == pytest.approx(skm.mean_squared_error(rows.truth, rows.prediction), rel=1e-12)
    assert first.r2 == pytest.approx(skm.r2_score(rows.truth, rows.prediction), rel=1e-12)
    assert first.mae == pytest.approx(skm.mean_absolute_error(rows.truth, rows.prediction), rel=1e-12)


def test_a_span_of_traffic_for_day_windows_never_crosses_utc_midnight():
    from datetime import UTC, datetime, timedelta

    from kfrelease.monitoring.synthetic import span_start

    just_after = datetime(2026, 12, 2, 0, 20, tzinfo=UTC)
    start = span_start(3, now=just_after)
    assert start.date() == (start + timedelta(hours=3)).date() and start + timedelta(hours=3) < just_after
    noon = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert span_start(3, now=noon) == noon - timedelta(hours=3)
