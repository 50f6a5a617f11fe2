"""The web UI the stack serves (service ``ui``): every page shows what matters for a model seeded through
the real core functions (two registered versions, a training run with its steps, a shadow-gate decision
and a promotion with their evidence, a monitoring pass with its drift report), each page renders in
headless Chromium (a screenshot that is not blank), every report link answers, and an unknown model,
version or run is a 404 page, never a 500."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageStat
from sklearn.linear_model import LinearRegression

from kfrelease import httpcalls
from kfrelease.monitoring.passes import run_monitoring
from kfrelease.monitoring.synthetic import write_traffic
from kfrelease.monitoring.window import WindowSpec
from kfrelease.registry import ModelRegistry, TrainedModel
from kfrelease.release.shadow import shadow_verdict
from kfrelease.rollout.spec import GateRule
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.results import evaluation_report_key
from kfrelease.training.steps import STEP_NAMES
from tests.waiting import eventually

pytestmark = pytest.mark.integration
FEATURES = ["x1", "x2"]
BUILD_CODE = "def build_model():\n    from sklearn.linear_model import Ridge\n    return Ridge(alpha=0.5)\n"


def _register(reg, model, fingerprint, spec_text, code, rmse, run_id):
    fitted = LinearRegression().fit(np.arange(8.0).reshape(4, 2), np.arange(4.0))
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    return reg.register(
        TrainedModel(
            name=model,
            tag=1,
            spec_fingerprint=fingerprint,
            dataset="ui-data",
            dataset_version="d1e2f3a4b5c6d7e8",
            commit=uuid.uuid4().hex,
            run_id=run_id,
            metrics={"mse": rmse**2, "rmse": rmse, "mae": rmse * 0.8, "r2": 0.9, "n": 80},
            verdict={"passed": True, "reasons": []},
            input_schema=[{"name": f, "dtype": "float64"} for f in FEATURES],
            target="y",
            model_bytes=buffer.getvalue(),
            extra={"spec": {"text": spec_text, "code": code}},
        )
    ).version.version


@pytest.fixture(scope="module")
def seeded(stack):
    """A model with two versions, a run, a release's decisions and monitoring results, written as the
    training pipeline, the release controller and the monitoring run write them."""
    model = f"ui-{uuid.uuid4().hex[:6]}"
    store = store_for("pipeline", stack)
    reg = ModelRegistry(store)
    run_id = f"train-{uuid.uuid4().hex[:12]}"
    first = _register(
        reg, model, "f1", "estimator:\n  class: sklearn.linear_model.LinearRegression\n", {}, 2.0, "train-first"
    )
    second = _register(reg, model, "f2", "build: model.py:build_model\n", {"model.py": BUILD_CODE}, 1.5, run_id)
    store.put_bytes(
        "models",
        evaluation_report_key(reg.artifact_prefix(model, second)),
        b"<html><body><h1>evaluation report</h1></body></html>",
        content_type="text/html",
    )
    run_records.create_run(store, run_id, {"model": model, "commit": "c" * 40, "kind": "merge"})
    for step in STEP_NAMES:
        run_records.set_step(store, run_id, step, "succeeded", attempt=1, peak_rss_mb=123.4)
    run_records.set_state(store, run_id, "succeeded", version=second)

    reg.set_stage(model, first, "production", "release-controller", "first version of tag 1")
    reg.set_stage(model, second, "staging", "training-pipeline", f"passed validation in run {run_id}")
    rng = np.random.default_rng(3)
    truth = rng.normal(20, 5, size=400)
    pairs = pd.DataFrame(
        {"truth": truth, "production": truth + rng.normal(0, 2.0, 400), "candidate": truth + rng.normal(0, 1.0, 400)}
    )
    verdict = shadow_verdict(pairs, second, first, GateRule(min_exposure=0.01), scale=2.0)  # tail floor: 375 pairs
    assert verdict.decision == "pass", verdict.reasons
    reg.set_stage(
        model, second, "staging", "release-controller", verdict.summary(), {"phase": "shadow", **verdict.as_dict()}
    )
    store.put_bytes(
        "models",
        f"reports/{model}/{second}/shadow-gate.html",
        b"<html><body><h1>shadow gate report</h1></body></html>",
        content_type="text/html",
    )
    reg.set_stage(
        model, second, "production", "release-controller", "canary steps passed: promoted", {"phase": "promote"}
    )

    x = pd.DataFrame(rng.normal(size=(300, 2)), columns=FEATURES)
    y = 4 * x["x1"] + x["x2"] + 20
    write_traffic(
        store_for("serving", stack),
        model,
        second,
        "production",
        x,
        y + rng.normal(0, 1, 300),
        y,
        # the two complete hours before this one: the latest 1-hour window is full whatever the minute now
        start=datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2),
        step_seconds=2 * 3600 / 300,
    )
    run_monitoring(
        stack,
        model,
        window=WindowSpec("time", 3600),
        reference=x.assign(y=y),
        push=False,
        min_labels=30,
        reports="latest",
    )
    return {"model": model, "first": first, "second": second, "run_id": run_id, "test": verdict.evidence["test"]}


@pytest.fixture(scope="module")
def ui(stack):
    return httpcalls.client(base_url=stack.url("ui"), timeout=30)


def _num(x: float) -> str:  # the UI's number format: 4 significant digits
    return f"{x:.4g}"


def _screenshots(urls: list[str], tmp_path) -> list[Image.Image]:
    """One headless Chromium screenshot per URL, the browsers run side by side (each mostly waits)."""
    paths = [tmp_path / f"page-{i}.png" for i in range(len(urls))]
    browsers = [
        subprocess.Popen(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1200,900",
                "--virtual-time-budget=5000",
                f"--screenshot={path}",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        for url, path in zip(urls, paths)
    ]
    try:
        for browser in browsers:
            assert browser.wait(timeout=120) == 0, "chromium failed to take a screenshot"
    finally:
        for browser in browsers:
            if browser.poll() is None:
                browser.kill()
    return [Image.open(path).convert("RGB") for path in paths]


def test_each_page_shows_the_models_runs_and_decisions_and_renders_in_chromium(seeded, ui, stack, tmp_path):
    model, first, second, run_id, test = (seeded[k] for k in ("model", "first", "second", "run_id", "test"))
    lo, hi = test["ratio_interval"]
    pages = {
        "/": [model, second, run_id],
        f"/models/{model}": [first, second, "production", "archived", "d1e2f3a4b5c6d7e8", run_id, _num(1.5)],
        f"/models/{model}/versions/{second}": [
            "build: model.py:build_model",
            "return Ridge(alpha=0.5)",
            _num(1.5),
            _num(2.25),
            "passed",
            "shadow",
            test["decision"],
            _num(test["ratio"]),
            f"[{_num(lo)}, {_num(hi)}]",
            _num(test["n"]),
            "canary steps passed: promoted",
            "evaluation.html",
            "shadow-gate.html",
            "drift-",
        ],
        f"/models/{model}/versions/{first}": [
            "sklearn.linear_model.LinearRegression",
            "archived",
            f"replaced in production by {second}",
        ],
        "/runs": [run_id, model, "succeeded", second],
        f"/runs/{run_id}": [*STEP_NAMES, "123.4", second],
        "/releases": [model, test["decision"], _num(test["ratio"]), f"[{_num(lo)}, {_num(hi)}]"],
        f"/models/{model}/monitoring": ["Windows of", "plotly-graph-div", f"{second}", "drift-"],
    }
    assert shutil.which("chromium"), "chromium is a Debian package of scripts/system-deps.sh"
    for path, expected in pages.items():
        answer = ui.get(path)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
        missing = [e for e in expected if e not in answer.text]
        assert not missing, f"{path} lacks {missing}"
    shots = _screenshots([stack.url("ui", path) for path in pages], tmp_path)
    for path, shot in zip(pages, shots):
        assert shot.size == (1200, 900)
        assert max(ImageStat.Stat(shot).stddev) > 20, f"{path}: the screenshot is (nearly) one colour"

    links = {"evaluation.html": b"evaluation report", "shadow-gate.html": b"shadow gate report"}
    for name, content in links.items():
        answer = ui.get(f"/models/{model}/versions/{second}/reports/{name}")
        assert answer.status_code == 200 and content in answer.content
    drift = ui.get(f"/models/{model}/monitoring").text.split(f"/models/{model}/versions/{second}/reports/drift-")[1]
    answer = ui.get(f"/models/{model}/versions/{second}/reports/drift-" + drift.split('"')[0])
    assert answer.status_code == 200 and "<html" in answer.text.lower()


@pytest.mark.parametrize(
    "path",
    [
        "/models/no-such-model",
        "/models/{model}/versions/V9.9.9",
        "/models/{model}/versions/not-a-version",
        "/models/{model}/versions/V1.1.0/reports/x.html",
        "/models/no-such-model/monitoring",
        "/runs/no-such-run",
        "/no/such/page",
    ],
)
def test_an_unknown_model_version_run_or_page_is_a_404_page_naming_what_exists(seeded, ui, path):
    answer = ui.get(path.format(model=seeded["model"]))
    assert answer.status_code == 404
    assert "<h1>Not found</h1>" in answer.text
    if path.startswith("/models/no-such-model"):
        assert seeded["model"] in answer.text  # the models that do exist


def test_up_and_kfrelease_ui_print_the_url_of_the_running_ui(stack, run_cli):
    url = stack.url("ui")
    up = run_cli("up", check=True)  # the stack is up already: nothing changes, the URL is printed
    assert f"web UI: {url}" in up.stdout
    assert run_cli("ui", check=True).stdout.strip() == url
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    down = run_cli("ui", env={"KFRELEASE_UI_PORT": str(free)})
    assert down.returncode == 1
    assert f"the web UI is not running at http://127.0.0.1:{free}" in down.stderr


def test_the_watchdog_restarts_the_ui_when_it_dies(stack):
    """The UI is a `restart` service: SIGKILL its process group and it answers again, as a new process."""
    import os
    import signal

    from kfrelease.stack import supervisor

    def restarts() -> int:
        return httpcalls.get(stack.url("watchdog", "/healthz"), timeout=10).json()["restarts"].get("ui", 0)

    before, old = restarts(), supervisor.service_status(stack, "ui").pid
    os.killpg(old, signal.SIGKILL)
    # the watchdog counts a restart once the new process is ready
    eventually(
        lambda: (st := supervisor.service_status(stack, "ui")).healthy and st.pid != old and restarts() > before,
        30,
        "the watchdog restarting the killed UI",
    )
    assert restarts() == before + 1
    assert httpcalls.get(stack.url("ui", "/healthz"), timeout=10).status_code == 200


def test_a_rolled_back_version_says_rolled_back_and_its_header_and_verdict_agree(stack, ui, run_cli):
    """A canary rollback whose accuracy check was skipped: the decision is "rolled back" (not the check's
    "skipped") in the UI and the CLI, and the version page's header and verdict cell say the same thing."""
    model = f"ui-rollback-{uuid.uuid4().hex[:6]}"
    reg = ModelRegistry(store_for("pipeline", stack))
    version = _register(reg, model, "f1", "estimator:\n  class: sklearn.linear_model.Ridge\n", {}, 1.5, "train-rb")
    reg.set_stage(model, version, "staging", "training-pipeline", "passed validation in run train-rb")
    skipped = {"name": "accuracy", "status": "skipped", "value": 1.02, "interval": [0.8, 1.3], "n": 12}
    evidence = {"phase": "rollback", "action": "rollback", "step": 1, "weight": 25, "checks": [skipped]}
    why = "canary 25%: error_rate failed; rollback: 1 failed check(s); rolled back: canary 0%, V0 unchanged"
    reg.set_stage(model, version, "rejected", "release-controller", why, evidence)

    page = ui.get(f"/models/{model}/versions/{version}").text
    assert '<td class="decision">rolled back</td>' in page
    assert '<td class="decision">skipped</td>' not in page
    headline = "passed validation; rolled back"
    assert f'<p class="standing">{headline}</p>' in page and f'<td class="verdict">{headline}</td>' in page
    assert '<td class="decision">rolled back</td>' in ui.get("/releases").text

    history = run_cli("models", "history", model, version, check=True).stdout
    row = next(line for line in history.splitlines() if "release-controller" in line)
    assert "rolled back" in row and "  skipped  " in row  # the decision, and the accuracy check's own status
    events = json.loads(run_cli("models", "history", model, version, "--json", check=True).stdout)
    assert [e["decision"] for e in events] == ["staged", "rolled back"]
