"""Many models behind one gateway: each model's own routes and traffic state, shared model servers that
host many models, replicas with retries, and the watchdog that restarts a server that dies.

The model servers are the stack's multi-model host with recording models (``tests.serving.recording_host``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.watchdog import watchdog_service
from tests.conftest import free_port_offset
from tests.serving.recording_host import Load
from tests.serving.test_gateway import _driver
from tests.waiting import eventually


def predict(settings, model):
    return httpcalls.post(
        settings.url("gateway", f"/v1/models/{model}:predict"), json={"instances": [[1.0, 2.0]]}, timeout=10
    )


@pytest.fixture()
def stack(tmp_path):
    settings = Settings(home=tmp_path, port_offset=free_port_offset())
    records = tmp_path / "records"
    records.mkdir()
    yield settings, records
    supervisor.down(settings)
    assert not supervisor.records(settings), "a process was left behind"


def test_two_models_route_by_name_and_an_unknown_model_is_a_json_404(stack):
    settings, records = stack
    alpha, beta = _driver(settings, records, "alpha"), _driver(settings, records, "beta")
    alpha.apply(TrafficState(primary="V1.1.0"))
    beta.apply(TrafficState(primary="V3.1.0"))
    for model, version in (("alpha", "V1.1.0"), ("beta", "V3.1.0")):
        r = predict(settings, model)
        assert r.status_code == 200 and r.json()["model_name"] == model and r.json()["model_version"] == version
    assert httpcalls.get(settings.url("gateway", "/v2/models/beta/ready")).status_code == 200
    r = predict(settings, "gamma")
    assert r.status_code == 404 and r.json()["error"].startswith("model gamma is not served")
    assert "alpha, beta" in r.json()["error"]
    assert httpcalls.get(settings.url("gateway", "/v1/models")).json() == {"models": ["alpha", "beta"]}
    assert alpha.current() == TrafficState(primary="V1.1.0") and beta.current() == TrafficState(primary="V3.1.0")
    # one production server hosts both models
    assert httpcalls.get(f"http://127.0.0.1:{settings.port('predictor')}/kfrelease/host").json()["models"] == {
        "alpha": "V1.1.0",
        "beta": "V3.1.0",
    }


@pytest.mark.slow(seconds=19, waits=True)
def test_one_models_release_under_load_to_both_fails_nothing_and_restarts_no_server(stack):
    settings, records = stack
    alpha, beta = _driver(settings, records, "alpha"), _driver(settings, records, "beta")
    alpha.apply(TrafficState(primary="A1", shadow="A2"))  # alpha is in the middle of its own release
    beta.apply(TrafficState(primary="B1"))
    pids = {
        n: supervisor.service_status(settings, n).pid for n in ("predictor-production", "predictor-staging", "gateway")
    }
    with (
        Load(settings.url("gateway", "/v1/models/alpha:predict"), threads=2) as load_a,
        Load(settings.url("gateway", "/v1/models/beta:predict"), threads=2) as load_b,
    ):
        beta.apply(TrafficState(primary="B1", shadow="B2"))
        beta.apply(TrafficState(primary="B1", canary="B2", canary_weight=50))
        beta.apply(TrafficState(primary="B2"))  # promoted: swapped inside the production server
        served = load_b.ok
        eventually(lambda: load_b.ok - served >= 100 or load_b.failures, 60, "100 answers of beta after the promotion")
    assert load_a.failures == [] and load_b.failures == [], (load_a.failures[:3], load_b.failures[:3])
    assert set(load_a.models) == {"alpha"} and set(load_a.versions) == {"A1"}
    assert set(load_b.models) == {"beta"} and set(load_b.versions) == {"B1", "B2"}
    assert alpha.current() == TrafficState(primary="A1", shadow="A2"), "beta's release touched alpha's routes"
    assert {n: supervisor.service_status(settings, n).pid for n in pids} == pids, "a server was restarted"
    assert predict(settings, "beta").json()["model_version"] == "B2"


def _kill(settings, name) -> int:
    pid = supervisor.service_status(settings, name).pid
    os.killpg(pid, signal.SIGKILL)
    return pid


@pytest.mark.slow(seconds=11, waits=True)
def test_sigkill_of_one_of_two_replicas_under_load_fails_no_request_and_it_comes_back(stack):
    settings, records = stack
    supervisor.start_service(settings, watchdog_service(settings))
    driver = _driver(settings, records, "m", replicas=2)
    driver.apply(TrafficState(primary="V1"))
    with Load(settings.url("gateway", "/v1/models/m:predict"), threads=4) as load:
        eventually(lambda: load.ok >= 200, 60, "200 answers before the kill")
        old = _kill(settings, "predictor-production-1")
        served = load.ok
        eventually(lambda: load.ok - served >= 500 or load.failures, 120, "500 answers after the kill")
    assert load.failures == [], f"{len(load.failures)} of {load.ok + len(load.failures)}: {load.failures[:3]}"
    st = eventually(
        lambda: (s := supervisor.service_status(settings, "predictor-production-1")).healthy and s,
        30,
        "the watchdog restarting the killed replica",
    )
    assert st.healthy and st.pid != old, "the watchdog did not restart the killed replica"
    assert httpcalls.get(f"http://127.0.0.1:{settings.port('predictor') + 3}/kfrelease/host").json()["models"] == {
        "m": "V1"
    }


def _spare_ready(settings) -> None:
    health = settings.url("watchdog", "/healthz")  # the spare imports KServe once, in the background
    eventually(lambda: httpcalls.get(health, timeout=5).json()["spare"] == "ready", 120, "the warm spare is ready")


def test_production_runs_on_two_replicas_by_default(stack):
    settings, records = stack
    _driver(settings, records, "m").apply(TrafficState(primary="V1"))  # the spec asks for one replica
    for port in (settings.port("predictor"), settings.port("predictor") + 3):
        assert httpcalls.get(f"http://127.0.0.1:{port}/kfrelease/host").json()["models"] == {"m": "V1"}
    assert (
        "server 127.0.0.1:" + str(settings.port("gateway-hold")) + " max_fails=0 backup;"
        in (settings.home / "services" / "gateway" / "nginx.conf").read_text()
    )


def test_both_production_replicas_killed_under_load_fail_no_request_the_hold_answers_them(stack):
    """Every replica of production gone at once: the gateway's hold keeps the predictions until the watchdog
    has restarted a server (from the warm spare), then sends them there. The watchdog is paused (SIGSTOP) from
    the kill until a prediction is seen waiting in the hold, then resumed: on a busy machine it could restart
    both replicas before any client sent a request, and the test would not test the hold (it failed so once)."""
    settings, records = stack
    watchdog = supervisor.start_service(settings, watchdog_service(settings)).pid
    _driver(settings, records, "m").apply(TrafficState(primary="V1"))
    _spare_ready(settings)
    hold = settings.url("gateway-hold", "/healthz")

    def waiting():
        counts = httpcalls.get(hold).json()
        return counts["held"] - counts["answered"] - counts["expired"]

    with Load(settings.url("gateway", "/v1/models/m:predict"), threads=4) as load:
        eventually(lambda: load.ok >= 200, 60, "200 answers before the kill")
        os.kill(watchdog, signal.SIGSTOP)
        try:
            old = {name: _kill(settings, name) for name in ("predictor-production", "predictor-production-1")}
            eventually(lambda: waiting() > 0, 20, "a prediction waiting in the hold")
        finally:
            os.kill(watchdog, signal.SIGCONT)
        served = load.ok
        eventually(lambda: load.ok - served >= 300, 60, "300 answers after the kill")
    assert load.failures == [], f"{len(load.failures)} of {load.ok + len(load.failures)}: {load.failures[:3]}"
    assert httpcalls.get(hold).json()["answered"] > 0, "no prediction was held"
    for name, pid in old.items():  # the watchdog restarts them one sweep after another: 300 answers can come first
        st = eventually(
            lambda name=name: (s := supervisor.service_status(settings, name)).healthy and s,
            30,
            f"the watchdog restarting {name}",
        )
        assert st.pid != pid, f"the watchdog did not restart {name}"


def test_a_prediction_no_server_answers_gets_a_503_naming_the_hold_deadline(stack, monkeypatch):
    """No watchdog: a killed server stays down. The hold gives up after its deadline (set to 2 s here) with
    a 503 that names it; readiness is not held (it says at once what is true)."""
    settings, records = stack
    monkeypatch.setenv("KFRELEASE_GATEWAY_HOLD_SECONDS", "2")
    monkeypatch.setenv("KFRELEASE_PRODUCTION_REPLICAS", "1")
    _driver(settings, records, "m").apply(TrafficState(primary="V1"))
    _kill(settings, "predictor-production")
    started = time.monotonic()
    r = predict(settings, "m")
    took = time.monotonic() - started
    assert r.status_code == 503 and 2 <= took < 8, (r.status_code, took, r.text)
    assert "within 2 s (KFRELEASE_GATEWAY_HOLD_SECONDS" in r.json()["error"]
    started = time.monotonic()
    ready = httpcalls.get(settings.url("gateway", "/v2/models/m/ready"), timeout=10)
    assert ready.status_code == 503 and time.monotonic() - started < 1.5, "readiness was held"
    assert ready.json()["error"].startswith("no model server is available")


def test_a_single_replica_killed_answers_again_within_10_s_without_any_command(stack, monkeypatch):
    """The watchdog restarts it from its warm spare (KServe already imported): well under the 10-20 s a fresh
    KServe process takes to start on a busy machine. A new slot's first server is forked from it too."""
    settings, records = stack
    monkeypatch.setenv("KFRELEASE_PRODUCTION_REPLICAS", "1")
    supervisor.start_service(settings, watchdog_service(settings))
    driver = _driver(settings, records, "m")
    driver.apply(TrafficState(primary="V1"))
    _spare_ready(settings)
    old = _kill(settings, "predictor-production")
    killed = time.monotonic()
    answer = None
    while time.monotonic() - killed < 10:
        try:
            answer = predict(settings, "m")
            if answer.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    took = time.monotonic() - killed
    assert answer is not None and answer.status_code == 200, f"no answer {took:.1f} s after the kill: {answer}"
    assert answer.json()["model_version"] == "V1"
    assert supervisor.service_status(settings, "predictor-production").pid != old
    print(f"a killed single replica answered again after {took:.2f} s")
    # a model server's first start (a release's shadow in the staging slot) is forked from the same spare
    started = time.monotonic()
    driver.apply(TrafficState(primary="V1", shadow="V2", mirror_percent=100))
    pid = supervisor.service_status(settings, "predictor-staging").pid
    with open(f"/proc/{pid}/stat") as fh:
        parent = int(fh.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{parent}/cmdline", "rb") as fh:
        assert b"kfrelease.stack.spare" in fh.read(), "the staging slot's server was not forked from the spare"
    print(f"the staging slot's first server answered {time.monotonic() - started:.2f} s after the traffic change")


def test_down_stops_the_watchdog_first_and_nothing_restarts(stack):
    settings, records = stack
    supervisor.start_service(settings, watchdog_service(settings))
    _driver(settings, records, "m").apply(TrafficState(primary="V1"))
    stopped = supervisor.down(settings)
    assert stopped[0] == "watchdog" and {"gateway", "predictor-production"} <= set(stopped)
    time.sleep(1.5)  # three watchdog intervals: a watchdog still running would have restarted something
    assert supervisor.records(settings) == []


@pytest.mark.slow(seconds=10, waits=True)
def test_a_model_added_by_a_reload_fails_no_request_of_a_client_that_starts_once_it_is_ready(stack):
    """nginx's reload is not atomic across workers: the master starts the new workers, sleeps 100 ms "to allow
    them to start", and only then tells the old ones to stop accepting (``ngx_master_process_cycle``,
    src/os/unix/ngx_process_cycle.c). A client that starts as soon as a new model's readiness answers 200 (from
    a new worker) may send its next prediction to an old worker, whose config has no route for the model: it
    must not get the 404 "not served by this gateway". Ten times: the model's routes are removed, then added
    again while a client polls its readiness and then sends 100 predictions at once."""
    settings, records = stack
    _driver(settings, records, "alpha").apply(TrafficState(primary="A1"))
    beta = _driver(settings, records, "beta")
    ready, url = settings.url("gateway", "/v1/models/beta"), settings.url("gateway", "/v1/models/beta:predict")
    failures, answered = [], 0

    def client(stop: threading.Event) -> int:
        ok = 0
        with httpcalls.client(timeout=30) as c:
            while not stop.is_set() and c.get(ready).status_code != 200:
                pass
            for _ in range(100):
                r = c.post(url, json={"instances": [[1.0, 2.0]]})
                if r.status_code == 200:
                    ok += 1
                else:
                    failures.append(f"HTTP {r.status_code}: {r.text[:160]}")
        return ok

    for _ in range(10):
        beta.forget()
        gone = predict(settings, "beta")  # a model not served still gets its 404 naming the models served
        assert gone.status_code == 404 and gone.json()["error"].endswith("it serves: alpha"), gone.text
        stop = threading.Event()
        with ThreadPoolExecutor(1) as pool:
            polling = pool.submit(client, stop)
            try:
                beta.apply(TrafficState(primary="B1"))
            except BaseException:
                stop.set()
                raise
            answered += polling.result(timeout=120)
    assert failures == [], f"{len(failures)} of {answered + len(failures)} failed: {failures[:3]}"
    assert answered == 1000
