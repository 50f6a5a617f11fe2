"""The local gateway (nginx rendered from the rollout spec) in front of real KServe model servers.

The model servers here are a tiny ``kserve.ModelServer`` model of this test (``tests.serving.recording_host``)
that records the request ids it saw, so the shadow's share and the ids can be checked even though the
shadow's answers never come back through the gateway.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.rollout.spec import (
    RolloutSpecError,
    parse_rollout_spec,
)
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.gateway import (
    GatewayError,
    LocalGatewayDriver,
    ModelRoute,
    check_config,
    install_config,
    render_nginx_config,
)
from tests.conftest import REPO, free_port_offset
from tests.serving.recording_host import Load, recorded, recording_command
from tests.waiting import eventually

PREDICT = "/v1/models/m:predict"


def _render(state, prefix, backends=None, model="m"):
    route = ModelRoute.of(
        parse_rollout_spec(f"model: {model}\n"), state, backends or {"primary": 2, "shadow": 3, "canary": 4}
    )
    return render_nginx_config([route], listen_port=1, prefix=prefix)


# --- rendering, no process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        TrafficState(primary=None),
        TrafficState(primary="V1"),
        TrafficState(primary="V1", shadow="V2", mirror_percent=100),
        TrafficState(primary="V1", shadow="V2", mirror_percent=12.5),
        TrafficState(primary="V1", canary="V2", canary_weight=20),
        TrafficState(primary="V1", canary="V2", canary_weight=100),
        TrafficState(primary="V1", shadow="V3", canary="V2", canary_weight=50, mirror_percent=30),
    ],
)
def test_every_traffic_state_renders_a_config_nginx_accepts(state, tmp_path):
    text = _render(state, tmp_path)
    check_config(tmp_path, text)  # raises with nginx's message if refused
    assert "listen 127.0.0.1:1;" in text
    if state.canary and 0 < state.canary_weight < 100:
        assert f"{state.canary_weight}% kf_m0_canary;" in text
    assert ("mirror /_kf_shadow_kf_m0;" in text) == bool(state.shadow)


def test_a_model_no_version_serves_answers_503_with_the_reason_nginx_can_carry(tmp_path):
    """A first model withdrawn by its release: its paths say why (the reason's quotes, backslash, ``$`` and
    braces cannot break out of nginx's string or the JSON); another model still gets its routes."""
    why = 'm has no production model: its first model V1.1.0 was rolled back ("max_rmse" $x {y} \\ it\'s)'
    gone = ModelRoute.of(parse_rollout_spec("model: m\n"), TrafficState(primary=None, unavailable=why), {})
    served = ModelRoute.of(parse_rollout_spec("model: other\n"), TrafficState(primary="V1"), {"primary": [11]})
    text = render_nginx_config([gone, served], listen_port=1, prefix=tmp_path)
    check_config(tmp_path, text)
    block = text.split("location ~ ^/v[12]/models/m(:predict|/infer|/.*)?$ {")[1]
    body = block.split("return 503 '")[1].split("';", 1)[0]
    assert json.loads(body) == {
        "error": "m has no production model: its first model V1.1.0 was rolled back (`max_rmse` USD x (y) / it`s)"
    }
    assert '"models": ["other"]' in text and "1 model(s), 1 unavailable" in text
    with pytest.raises(RolloutSpecError, match="cannot also be unavailable"):
        TrafficState(primary="V1", unavailable=why)


def test_each_model_gets_its_own_routes_and_replicas_are_retried(tmp_path):
    a = ModelRoute.of(
        parse_rollout_spec("model: alpha\n"),
        TrafficState(primary="V1", canary="V2", canary_weight=30),
        {"primary": [11, 12], "canary": [13]},
    )
    b = ModelRoute.of(
        parse_rollout_spec("model: beta.v2\n"),
        TrafficState(primary="V7", shadow="V8"),
        {"primary": [11], "shadow": [14]},
    )
    text = render_nginx_config([b, a], listen_port=1, prefix=tmp_path)
    check_config(tmp_path, text)
    assert text == render_nginx_config([a, b], listen_port=1, prefix=tmp_path), "order of models must not matter"
    assert "location ~ ^/v[12]/models/alpha(:predict|/infer)$" in text
    assert "location ~ ^/v[12]/models/beta\\.v2(:predict|/infer)$" in text  # a dot is not a wildcard
    primary_alpha = text.split("upstream kf_m0_primary {")[1].split("}")[0]
    assert "127.0.0.1:11" in primary_alpha and "127.0.0.1:12" in primary_alpha
    assert "30% kf_m0_canary;" in text and "mirror /_kf_shadow_kf_m1;" in text
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in text
    assert '"models": ["alpha", "beta.v2"]' in text


def test_bad_weights_states_and_names_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(RolloutSpecError, match="canary weight 150 is outside 0..100"):
        TrafficState(primary="V1", canary="V2", canary_weight=150)
    with pytest.raises(RolloutSpecError, match="needs a canary version"):
        TrafficState(primary="V1", canary_weight=20)
    with pytest.raises(RolloutSpecError, match="mirror percent 101"):
        TrafficState(primary="V1", shadow="V2", mirror_percent=101)
    with pytest.raises(RolloutSpecError, match="also the primary"):
        _render(TrafficState(primary="V1", canary="V1", canary_weight=10), tmp_path)
    with pytest.raises(RolloutSpecError, match="two decimals"):
        _render(TrafficState(primary="V1", shadow="V2", mirror_percent=12.345), tmp_path)
    with pytest.raises(RolloutSpecError, match="no primary"):
        _render(TrafficState(primary=None, shadow="V2"), tmp_path)
    with pytest.raises(RolloutSpecError, match="cannot be routed"):
        _render(TrafficState(primary="V1"), tmp_path, model="a b; }")


def test_a_config_nginx_refuses_leaves_the_installed_one_unchanged(tmp_path):
    good = _render(TrafficState(primary="V1"), tmp_path)
    install_config(tmp_path, good)
    with pytest.raises(GatewayError, match="nginx refused the new gateway config.*unchanged"):
        install_config(tmp_path, good.replace("worker_processes 1;", "worker_processes one;"))
    assert (tmp_path / "nginx.conf").read_text() == good


# --- the gateway in front of running model servers -------------------------------------------------


def _driver(settings, records, model="m", replicas=1):
    spec = parse_rollout_spec(f"model: {model}\nserving: {{min_replicas: {replicas}}}\n")
    return LocalGatewayDriver(
        settings,
        spec,
        model_dir_for=lambda model, version: records,  # the recording model loads nothing
        host_command=recording_command(records),
        host_env={"PYTHONPATH": str(REPO)},  # the recording host lives in this test package
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway-home")
    settings = Settings(home=home, port_offset=free_port_offset())
    records = home / "records"
    records.mkdir()
    driver = _driver(settings, records)
    yield settings, driver, records
    driver.stop()
    assert not supervisor.records(settings), "the gateway left a process behind"


def _predict(client, url, rid=None):
    headers = {"x-request-id": rid} if rid else {}
    return client.post(url, json={"instances": [[1.0, 2.0]]}, headers=headers)


def test_shadow_gets_every_request_and_clients_only_see_the_primary(gateway):
    settings, driver, records = gateway
    driver.apply(TrafficState(primary="V1", shadow="V2", mirror_percent=100))
    assert driver.current() == TrafficState(primary="V1", shadow="V2", mirror_percent=100)
    url = settings.url("gateway", PREDICT)
    before_p, before_s = len(recorded(records, "V1")), len(recorded(records, "V2"))
    n, sent_ids, got_ids = 200, [], []
    with httpcalls.client(timeout=10) as client:
        for i in range(n):
            rid = f"client-{uuid.uuid4()}" if i % 2 else None  # half bring their own id
            r = _predict(client, url, rid)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "V1"
            got_ids.append(r.headers["x-request-id"])
            if rid:
                sent_ids.append(rid)
                assert r.headers["x-request-id"] == rid
    assert len(set(got_ids)) == n
    primary = recorded(records, "V1")[before_p:]
    assert all(x == ce for x, ce in primary), "primary got different x-request-id and ce-id"
    assert sorted(x for x, _ in primary) == sorted(got_ids)
    # mirrored requests are asynchronous: wait (bounded) until the shadow has seen all of them
    shadow = eventually(
        lambda: len(got := recorded(records, "V2")[before_s:]) >= n and got, 20, f"the shadow to record all {n} ids"
    )
    assert sorted(x for x, _ in shadow) == sorted(got_ids), "the shadow must see the same ids as the primary"
    assert all(x == ce for x, ce in shadow)


def test_shadow_below_100_percent_gets_its_share(gateway):
    settings, driver, records = gateway
    driver.apply(TrafficState(primary="V1", shadow="V2", mirror_percent=50))
    before = len(recorded(records, "V2"))
    ids = _send(settings.url("gateway", PREDICT), 600)
    assert set(ids) == {"V1"}
    # wait for in-flight mirrors: the count stops changing once the last mirrored request was served
    mirrored = len(_settle(lambda: recorded(records, "V2")[before:]))
    assert 0.42 * 600 <= mirrored <= 0.58 * 600, mirrored


def test_canary_at_20_percent_gets_20_percent_of_2000_requests(gateway):
    settings, driver, _records = gateway
    driver.apply(TrafficState(primary="V1", canary="V3", canary_weight=20))
    versions = _send(settings.url("gateway", PREDICT), 2000)
    share = versions.count("V3") / len(versions) * 100
    assert set(versions) == {"V1", "V3"}
    assert 15 <= share <= 25, f"canary share {share:.1f}% is not within 20 +- 5"
    assert supervisor.service_status(settings, "predictor-staging").pid is None, (
        "the empty shadow server was not stopped"
    )


def test_weight_changes_promotion_and_rollback_under_load_fail_no_request(gateway):
    settings, driver, _records = gateway
    driver.apply(TrafficState(primary="V1", canary="V3", canary_weight=10))
    with Load(settings.url("gateway", PREDICT), threads=4) as load:
        for weight in (25, 50, 100):
            driver.apply(TrafficState(primary="V1", canary="V3", canary_weight=weight))
        driver.apply(TrafficState(primary="V3"))  # promotion: the production slot is reloaded with V3
        driver.apply(TrafficState(primary="V3", canary="V4", canary_weight=50))
        driver.apply(TrafficState(primary="V3", canary="V4", canary_weight=50).rolled_back())  # canary stops
        served_after_promotion = load.ok
        eventually(lambda: load.ok - served_after_promotion >= 200, 20, "200 answers after the rollback")
    assert load.failures == [], f"{len(load.failures)} failed of {load.ok + len(load.failures)}: {load.failures[:3]}"
    assert load.ok > 500 and load.versions.get("V3", 0) > 0 and load.versions.get("V4", 0) > 0
    assert driver.current() == TrafficState(primary="V3")
    assert supervisor.service_status(settings, "predictor-canary").pid is None
    r = _predict(httpcalls, settings.url("gateway", PREDICT))
    assert r.json()["model_version"] == "V3"


def test_switching_the_primary_to_a_version_not_running_fails_no_request(gateway):
    settings, driver, _ = gateway
    driver.apply(TrafficState(primary="V3"))
    pid = supervisor.service_status(settings, "predictor-production").pid
    with Load(settings.url("gateway", PREDICT), threads=4) as load:
        driver.apply(TrafficState(primary="V5"))  # loaded beside V3 in the production server, swapped in place
        served = load.ok
        eventually(lambda: load.ok - served >= 100, 20, "100 answers after the switch")
    assert load.failures == [], load.failures[:3]
    assert load.versions.get("V5", 0) >= 100 and driver.current() == TrafficState(primary="V5")
    assert supervisor.service_status(settings, "predictor-production").pid == pid, "the server was restarted"
    rec = json.loads((settings.home / "services" / "gateway" / "traffic.json").read_text())
    # production runs on two replicas by default (KFRELEASE_PRODUCTION_REPLICAS)
    assert rec["models"]["m"]["slots"] == {"predictor-production": "V5", "predictor-production-1": "V5"}


def test_a_bad_state_moves_no_traffic(gateway):
    settings, driver, _records = gateway
    conf = Path(settings.home / "services" / "gateway" / "nginx.conf")
    before, state = conf.read_text(), driver.current()
    with pytest.raises(RolloutSpecError, match="also the primary"):
        driver.apply(TrafficState(primary=state.primary, canary=state.primary, canary_weight=30))
    with pytest.raises(RolloutSpecError, match="outside 0..100"):
        driver.apply(TrafficState(primary=state.primary, canary="V9", canary_weight=-5))
    assert conf.read_text() == before and driver.current() == state


def test_applying_the_same_state_twice_changes_nothing(gateway):
    settings, driver, _ = gateway
    conf = Path(settings.home / "services" / "gateway" / "nginx.conf")
    state = driver.current()
    before = (conf.stat().st_mtime_ns, supervisor.service_status(settings, "predictor-production").pid)
    driver.apply(state)
    assert (conf.stat().st_mtime_ns, supervisor.service_status(settings, "predictor-production").pid) == before


def test_oversized_body_gets_a_json_413(gateway):
    settings, _, _ = gateway
    r = httpcalls.post(settings.url("gateway", PREDICT), content=b"x" * (9 * 1024 * 1024), timeout=30)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


# --- helpers ----------------------------------------------------------------------------------------


def _send(url: str, n: int, threads: int = 4) -> list[str]:
    def run(count):
        out = []
        with httpcalls.client(timeout=10) as client:
            for _ in range(count):
                r = _predict(client, url)
                assert r.status_code == 200, r.text
                out.append(r.json()["model_version"])
        return out

    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(run, [n // threads + (1 if i < n % threads else 0) for i in range(threads)])
    return [v for part in parts for v in part]


def _settle(get, quiet=1.0, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    last, since = get(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = get()
        if len(now) != len(last):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last
