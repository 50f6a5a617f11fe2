"""The Alertmanager webhook receiver: records every alert, retrains only for firing quality/drift alerts,
one at a time and rate-limited; bad payloads get 400 JSON, a down object store 503 (Alertmanager retries)."""

import json
import time
import uuid

import pytest
from starlette.testclient import TestClient

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.monitoring.receiver import AlertReceiver, create_app
from kfrelease.storage import store_for
from tests.monitoring import recording_trigger

pytestmark = pytest.mark.integration
TRIGGER = "tests.monitoring.recording_trigger:start_auto_revision"
NO_CURATION = ""  # these models have no production version: the labelled-traffic step is test_alerting's


def alert(model, name="ModelR2BelowFloor", kind="quality", status="firing"):
    return {
        "status": status,
        "labels": {
            "alertname": name,
            "kind": kind,
            "model": model,
            "version": "V1.1.0",
            "stage": "production",
        },
        "annotations": {},
        "startsAt": "2026-11-25T00:00:00Z",
        "fingerprint": uuid.uuid4().hex[:16],
    }


@pytest.fixture
def calls(tmp_path, monkeypatch):
    path = tmp_path / "calls.jsonl"
    path.touch()
    monkeypatch.setenv(recording_trigger.CALLS_FILE_ENV, str(path))
    recording_trigger.release.clear()
    yield path
    recording_trigger.release.set()


def test_one_retrain_at_a_time_then_rate_limited(stack, calls):
    receiver = AlertReceiver(
        stack,
        store=store_for("pipeline", stack),
        min_interval=3600,
        trigger_path=TRIGGER,
        curate_path=NO_CURATION,
    )
    model, other = f"rcv-{uuid.uuid4().hex[:6]}", f"rcv-{uuid.uuid4().hex[:6]}"
    first = receiver.handle({"alerts": [alert(model)]})["decisions"]
    assert [d["decision"] for d in first] == ["triggered"]
    busy = receiver.handle({"alerts": [alert(other, "ModelInputDrift", "drift")]})["decisions"]
    assert [d["decision"] for d in busy] == ["busy"]  # the first retrain is still running
    recording_trigger.release.set()
    for t in receiver.threads:
        t.join(timeout=10)
    again = receiver.handle({"alerts": [alert(model, "ModelRMSEAboveBaseline")]})["decisions"]
    assert [d["decision"] for d in again] == ["rate-limited"]
    lines = [json.loads(x) for x in calls.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["model"] == model and model in lines[0]["reason"]
    records = receiver.retrains(model)
    assert [r.get("status") or r["decision"] for r in records] == [
        "triggered",
        "done",
        "rate-limited",
    ]
    assert records[1]["result"] == {"run_id": "recorded", "auto": True}


def test_resolved_and_freshness_alerts_are_recorded_but_retrain_nothing(stack, calls):
    receiver = AlertReceiver(
        stack, store=store_for("pipeline", stack), min_interval=0, trigger_path=TRIGGER, curate_path=NO_CURATION
    )
    model = f"rcv-{uuid.uuid4().hex[:6]}"
    out = receiver.handle(
        {
            "alerts": [
                alert(model, status="resolved"),
                alert(model, "ModelNoPredictions", "freshness"),
            ]
        }
    )
    assert out["decisions"] == [] and len(out["recorded"]) == 2
    assert calls.read_text() == ""
    assert len([a for a in receiver.alerts() if a["labels"]["model"] == model]) == 2


def test_bad_payload_is_400_json_and_records_nothing(stack):
    receiver = AlertReceiver(stack, store=store_for("pipeline", stack), trigger_path=TRIGGER)
    before = len(receiver.alerts())
    with TestClient(create_app(receiver)) as client:
        r = client.post("/alerts", content=b"{not json")
        assert r.status_code == 400 and "bad alert payload" in r.json()["error"]
        r = client.post("/alerts", json={"alerts": [{"status": "firing"}]})
        assert r.status_code == 400 and "labels" in r.json()["error"]
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/nope")
        assert r.status_code == 404 and "POST /alerts" in r.json()["error"]
    assert len(receiver.alerts()) == before


def test_down_object_store_is_503_so_alertmanager_retries(stack):
    down = Settings(home=stack.home, port_offset=stack.port_offset + 7)  # same credentials, nothing listening
    receiver = AlertReceiver(down, store=store_for("pipeline", down), trigger_path=TRIGGER)
    with TestClient(create_app(receiver)) as client:
        t0 = time.monotonic()
        r = client.post("/alerts", json={"alerts": [alert("m")]})
        assert r.status_code == 503 and "not reachable" in r.json()["error"]
        assert time.monotonic() - t0 < 25


def test_the_stack_receiver_answers_and_is_scraped(stack):
    assert httpcalls.get(stack.url("alert-receiver", "/healthz")).status_code == 200
    assert "kfrelease_alert_receiver_up 1" in httpcalls.get(stack.url("alert-receiver", "/metrics")).text
