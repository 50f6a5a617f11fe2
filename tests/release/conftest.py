"""Helpers of the release tests: a private dataset and model name per test (other parts' tests on the
shared session stack never see them), a small rollout spec, bounded demo traffic, the loss-free check."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from kfrelease import httpcalls
from kfrelease.access.credentials import ensure_label_source
from kfrelease.collectors.sink import event_line
from kfrelease.demo.traffic import TrafficGenerator
from kfrelease.lake import read_predictions
from kfrelease.rollout.spec import CheckSpec, load_rollout_spec
from kfrelease.serving.logger import REQUEST_TYPE, RESPONSE_TYPE
from kfrelease.stack.gateway import LocalGatewayDriver
from kfrelease.storage import store_for
from tests.training.conftest import PrivateDataset


def logged_lines(isvc: str, version: str, rid: str, features: dict, y: float) -> list[dict]:
    """The log lines the sink writes for one request (one instance: ``features``, name -> value, numbers or
    category text) answered ``y`` by ``isvc`` (a KServe agent's events, with kfrelease's logger's extras)."""
    base = {
        "ce-specversion": "1.0",
        "ce-id": rid,
        "ce-source": "http://localhost:9081/",
        "ce-inferenceservicename": isvc,
        "ce-namespace": "kfrelease-serving",
        "ce-component": "predictor",
        "ce-modelversion": version,
        "ce-features": ",".join(features),
        "content-type": "application/json",
    }
    return [
        event_line({**base, "ce-type": REQUEST_TYPE}, orjson.dumps({"instances": [list(features.values())]})),
        event_line({**base, "ce-type": RESPONSE_TYPE}, orjson.dumps({"predictions": [y]})),
    ]


def small_spec(model: str, **sections):
    base = load_rollout_spec().with_changes(
        shadow={
            "min_labelled_samples": 42,
            "margin": 0.02,
            "error_rate": 0.05,
            "max_wait_seconds": 60,
            # a failure mode on 1 % of requests is seen before a pass: ~375 labelled pairs, 15 s at 25/s
            "min_exposure": 0.01,
        },
        canary={
            "steps": (25, 50, 100),
            "interval_seconds": 3,
            "checks": (
                CheckSpec(name="requests", series="requests", min_samples=5),
                CheckSpec(name="error_rate", series="error_rate", max=0.01, min_samples=5),
                CheckSpec(name="p99_latency_ms", series="p99_latency_ms", max=250.0, min_samples=5),
                CheckSpec(name="accuracy", source="labels", min_samples=8),
            ),
        },
    )
    spec = base.with_changes(model=model)
    return spec.with_changes(**sections) if sections else spec


@pytest.fixture
def release_env(stack, tmp_path):
    ds = PrivateDataset(f"diabetes-{uuid.uuid4().hex[:8]}")
    ds.add_batch(1)
    name = f"diabetes-progression-{uuid.uuid4().hex[:6]}"
    yield stack, ds, name, tmp_path
    LocalGatewayDriver(stack, load_rollout_spec()).stop()


def traffic(settings, model: str, rows=None, wait_served: float | None = None, rate: float = 25.0) -> TrafficGenerator:
    """Bounded labelled traffic to ``model`` (``rows``: (features, truth) pairs, default the diabetes hold-out);
    ``wait_served``: send once the gateway serves the model (a first model's release serves it)."""
    return TrafficGenerator(
        settings.url("gateway"),
        settings.url("feedback"),
        model,
        rate=rate,
        max_requests=int(rate * 240),  # the bound is the 240 s, at any rate
        max_seconds=240,
        truth_delay=0.3,
        rows=rows,
        label_token=ensure_label_source(settings),
    ).start(wait_served=wait_served)


def release_first(settings, model: str, version: str, spec, rows=None):
    """The release of a first model (no production model at all): it serves all traffic as provisional and
    becomes production only on its own labelled requests, so labelled traffic runs from the moment the
    gateway serves it until the release ends (60 requests/s: the demo model's min_r2 0.1 passes live after
    about 1,350 labelled requests). Returns (outcome, the traffic's stats)."""
    from kfrelease.release.embedded import run_release

    gen = traffic(settings, model, rows=rows, wait_served=120, rate=60.0)
    try:
        outcome = run_release(settings, model, version, spec)
    finally:
        stats = gen.stop()
    return outcome, stats


def release_firsts(settings, versions: dict[str, str]) -> None:
    """Release the first models ``versions`` names ({model: version}) at once, each as ``release_first`` does;
    every one must be promoted."""
    with ThreadPoolExecutor(len(versions)) as pool:
        released = {n: pool.submit(release_first, settings, n, v, small_spec(n)) for n, v in versions.items()}
        assert {n: f.result()[0].result for n, f in released.items()} == dict.fromkeys(versions, "promoted")


def wait_logged(settings, model: str, ids: list[str], timeout: float = 30.0) -> int:
    """Answered request ids found in the prediction logs (client-facing answers: not the shadow's)."""
    store = store_for("monitoring", settings)
    deadline = time.monotonic() + timeout
    want = set(ids)
    while True:
        frame = read_predictions(store, model)
        got = want & set(frame.loc[frame["stage"] != "staging", "request_id"])
        if len(got) == len(want) or time.monotonic() > deadline:
            return len(got)
        time.sleep(0.5)


def bad_spec_text(name: str, dataset: str) -> str:
    return f"""name: {name}
tag: 1
dataset: {dataset}
features: [age, sex, bmi, bp, s1, s2, s3, s4, s5, s6, bmi_bp]
target: progression
estimator: {{class: sklearn.dummy.DummyRegressor, params: {{strategy: constant, constant: 0.0}}}}
split: {{test_size: 0.2, seed: 42}}
validation: {{max_rmse: 200.0, min_r2: -100.0, tolerance: 10.0}}
"""


def sink_pending(settings) -> float:
    """Events the log sink acknowledged but has not uploaded (its ``kfrelease_logsink_pending_events``)."""

    text = httpcalls.get(settings.url("logsink", "/metrics"), timeout=5).text
    for line in text.splitlines():
        if line.startswith("kfrelease_logsink_pending_events "):
            return float(line.split()[1])
    return 0.0


def check_loss_free(settings, model: str, stats) -> None:
    """Every answered request is in the prediction logs (count sent == count logged); a loss fails."""
    logged = wait_logged(settings, model, stats.ok_ids)
    lost = stats.sent - logged
    assert lost == 0, (
        f"{lost} of {stats.sent} answered requests are not in the prediction logs "
        f"(the log sink holds {sink_pending(settings):.0f} acknowledged events it has not uploaded)"
    )
