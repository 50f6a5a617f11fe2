"""`kfrelease monitor` on the embedded stack: prints the current table, writes a self-contained page that
a headless browser renders (screenshot not blank); bad input gets one clear line."""

import json
import re
import subprocess
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageStat

from kfrelease import httpcalls
from kfrelease.monitoring.passes import load_history, run_monitoring
from kfrelease.monitoring.pushauth import SCRAPE_USER, embedded_credentials
from kfrelease.monitoring.synthetic import register_entry, span_start, write_traffic
from kfrelease.monitoring.window import WindowSpec
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration
FEATURES = ["x1", "x2"]


def seed_model(stack, noise_by_version, n=600, hours=3):
    model = f"mon-cli-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(0)
    start = span_start(hours)  # inside one UTC day: a 1-day window holds all of it
    for version, (stage, noise) in noise_by_version.items():
        register_entry(store_for("pipeline", stack), model, version, FEATURES, rmse=1.0)
        x = pd.DataFrame(rng.normal(size=(n, 2)), columns=FEATURES)
        y = 4 * x["x1"] + x["x2"] + 20
        write_traffic(
            store_for("serving", stack),
            model,
            version,
            stage,
            x,
            y + rng.normal(scale=noise, size=n),
            y,
            start=start,
            step_seconds=hours * 3600 / n,
        )
    return model


def test_monitor_prints_the_table_and_writes_a_page_a_browser_renders(stack, run_cli, tmp_path):
    model = seed_model(stack, {"V1.1.0": ("production", 1.0), "V1.2.0": ("staging", 3.0)})
    page = tmp_path / "monitor.html"
    out = run_cli("monitor", "--model", model, "--window", "1h", "--out", str(page), check=True)
    assert "V1.1.0" in out.stdout and "V1.2.0" in out.stdout and "production" in out.stdout
    assert "pushed 2 result(s)" in out.stdout
    text = page.read_text()
    assert "plotly" in text and "V1.2.0 staging" in text and 'id="current"' in text
    assert "https://cdn" not in text.split("<body>")[1][:2000]  # self-contained: plotly.js inlined
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1400)
    stat = ImageStat.Stat(img)
    assert max(stat.stddev) > 20, "the screenshot is (nearly) one colour: the page did not render"
    colours = img.resize((300, 350)).getcolors(maxcolors=100000)
    assert colours is not None and len(colours) > 50


def test_monitor_without_history_or_registry_is_one_clear_line(run_cli, stack, tmp_path):
    out = run_cli("monitor", "--model", "no-such-model", "--out", str(tmp_path / "x.html"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: the input features of model 'no-such-model' are unknown")
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.html").exists()


def test_bad_batches_and_missing_labels_are_reported_and_nothing_is_lost(stack):
    serving = store_for("serving", stack)
    model = seed_model(stack, {"V1.1.0": ("production", 1.0)}, n=100, hours=1)
    # a batch whose instances have 3 values for a 2-feature model, and predictions without any truth
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    bad_key = f"{model}/{day}/235959-bad.jsonl"
    ev = {
        "id": "bad-1",
        "time": datetime.now(UTC).isoformat(),
        "model": model,
        "model_version": "V1.1.0",
        "stage": "production",
    }
    serving.put_bytes(
        "inference-logs",
        bad_key,
        (
            json.dumps({**ev, "type": "request", "instances": [[1, 2, 3]]})
            + "\n"
            + json.dumps({**ev, "type": "response", "predictions": [5.0]})
            + "\n"
        ).encode(),
    )
    store_for("serving", stack).put_bytes(  # the feedback service's role: the only writer of ground truth
        "feedback",
        f"{model}/{day}/bad-truth.jsonl",
        json.dumps({"request_id": "bad-1", "truth": 4.0, "time": datetime.now(UTC).isoformat()}).encode() + b"\n",
    )
    x = pd.DataFrame(np.zeros((40, 2)), columns=FEATURES)
    write_traffic(serving, model, "V1.1.0", "canary", x, np.ones(40), truths=None)
    run = run_monitoring(stack, model, window=WindowSpec("time", 86400), min_labels=30, push=False)
    by_stage = {w.stage: w for w in run.windows}
    assert by_stage["production"].status == "ok" and by_stage["production"].labelled == 100
    assert by_stage["canary"].status == "no-ground-truth" and by_stage["canary"].r2 is None
    assert any("do not match the model's 2 input features" in w and "bad.jsonl" in w for w in run.outcome.warnings)
    # the skipped request's label is reported as matching no prediction
    assert any(
        w.startswith("1 ground-truth label(s)") and "input schema (2 features)" in w for w in run.outcome.warnings
    ), run.outcome.warnings
    assert serving.exists("inference-logs", bad_key)  # left in place
    history = load_history(store_for("pipeline", stack), model)
    assert set(history["stage"]) == {"production", "canary"}


def test_too_few_labels_is_insufficient_in_the_record_and_in_the_gauges(stack):
    model = seed_model(stack, {"V1.1.0": ("production", 1.0)}, n=10, hours=1)
    run = run_monitoring(stack, model, window=WindowSpec("time", 86400), min_labels=30)
    (w,) = run.windows
    assert w.status == "insufficient" and w.r2 is None and "10 labelled rows" in w.message

    metrics = httpcalls.get(stack.url("pushgateway", "/metrics"), auth=embedded_credentials(stack, SCRAPE_USER)).text
    mine = [line for line in metrics.splitlines() if f'model="{model}"' in line]
    assert any(line.startswith("kfrelease_model_window_insufficient{") and line.endswith(" 1") for line in mine)
    assert not any(line.startswith(("kfrelease_model_r2{", "kfrelease_model_rmse{")) for line in mine)


def test_json_lines_logs_stay_readable_and_are_converted_once(stack):
    """Logs and labels written as JSON Lines before the lake read as the same rows as their Parquet
    copies; ``convert_legacy`` rewrites them once as lake batches and removes the originals."""
    from kfrelease import lake
    from kfrelease.lake.write import convert_legacy

    serving, admin = store_for("serving", stack), store_for("stack-admin", stack)
    model = seed_model(stack, {"V1.1.0": ("production", 1.0)}, n=50, hours=1)
    store = store_for("monitoring", stack)
    parquet = lake.read_predictions(store, model, features=FEATURES)
    labels = lake.read_labels(store, model)
    legacy = f"{model}-legacy"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = []
    for row in parquet.itertuples():
        ev = {
            "id": row.request_id,
            "time": row.time.isoformat(),
            "source": "s",
            "model": legacy,
            "model_version": row.model_version,
            "stage": row.stage,
        }
        lines.append({**ev, "type": "request", "instances": [[getattr(row, f) for f in FEATURES]]})
        lines.append({**ev, "type": "response", "predictions": [row.prediction]})
    serving.put_bytes(
        "inference-logs", f"{legacy}/{day}/000000-a.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()
    )
    serving.put_bytes(
        "feedback",
        f"{legacy}/{day}/000000-a.jsonl",
        "".join(
            json.dumps({"request_id": r.request_id, "truth": r.truth, "time": r.time.isoformat()}) + "\n"
            for r in labels.itertuples()
        ).encode(),
    )

    def same(a, b):
        key = ["request_id", "instance"]
        pd.testing.assert_frame_equal(
            a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
        )

    same(lake.read_predictions(store, legacy, features=FEATURES), parquet)
    same(lake.read_labels(store, legacy), labels)
    assert convert_legacy(serving, "inference-logs", legacy)
    assert convert_legacy(admin, "feedback", legacy)  # a one-off migration: no role rewrites ground truth
    assert not [o for b in ("inference-logs", "feedback") for o in store.list(b, f"{legacy}/")]
    same(lake.read_predictions(store, legacy, features=FEATURES), parquet)
    same(lake.read_labels(store, legacy), labels)


def test_monitor_fetches_the_runs_drift_reports_beside_the_page_and_links_them(stack, tmp_path):
    """What `kfrelease monitor` does with a run's report keys (``MonitorRun.report_keys``, written by
    run_monitoring as ``monitoring/<model>/reports/<run>/<version>-<stage>-<start>.html``): each one is
    downloaded next to the page and linked relative to it, so the page and its reports can be moved together."""
    from kfrelease.cli.monitor import _fetch_drift_reports
    from kfrelease.monitoring.passes import RESULT_BUCKET
    from kfrelease.monitoring.report import render_page

    model = f"mon-links-{uuid.uuid4().hex[:6]}"
    writer = store_for("pipeline", stack)
    keys = []
    for version, stage in (("V1.1.0", "production"), ("V1.2.0", "staging")):
        key = f"monitoring/{model}/reports/20261202T000000Z-ab/{version}-{stage}-2026-12-02T00.html"
        writer.put_bytes(RESULT_BUCKET, key, f"<html><body>drift of {version}</body></html>".encode())
        keys.append(key)
    page = tmp_path / "out" / "monitor.html"
    page.parent.mkdir()
    links = _fetch_drift_reports(stack, keys, page.parent / "reports")
    assert [label for label, _ in links] == ["V1.1.0-production-2026-12-02T00", "V1.2.0-staging-2026-12-02T00"]
    text = render_page(pd.DataFrame(), pd.DataFrame(), model, [], links)
    hrefs = re.findall(r'<a href="(reports/drift-[^"]+)">', text)
    assert len(hrefs) == 2
    for href, version in zip(hrefs, ("V1.1.0", "V1.2.0")):
        assert (page.parent / href).read_text() == f"<html><body>drift of {version}</body></html>"
