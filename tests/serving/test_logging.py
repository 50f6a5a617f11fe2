"""Prediction logging and ground truth end to end with the real processes: a predictor that logs to the log
sink, the feedback service, SeaweedFS. Feedback joins the logged predictions by request id; with the sink and
then the object store stopped (overlapping) under steady load, no prediction fails and no log event is lost
or doubled."""

from __future__ import annotations

import re
import threading
import uuid

import httpx
import pandas as pd
import pytest

from kfrelease import httpcalls
from kfrelease.access.credentials import DEFAULT_LABEL_SOURCE, ensure_label_source, label_sources_path
from kfrelease.lake import read_labels, read_predictions
from kfrelease.lake.read import stored_rows
from kfrelease.stack import supervisor
from kfrelease.stack.services import s3_service
from kfrelease.stack.serving import feedback_service, logsink_service
from kfrelease.storage import store_for
from tests.serving.serving_helpers import (
    FEATURES,
    curated_frame,
    enter_private_home,
    expected_predictions,
    fast_flush,
    make_model_dir,
    start_predictor,
)
from tests.waiting import eventually

pytestmark = pytest.mark.integration
MODEL = "logging-test-model"


@pytest.fixture(scope="module")
def serving(stack, tmp_path_factory):
    """Sink, feedback and a logging predictor in their own home and ports, on the session's object store."""
    root = tmp_path_factory.mktemp("serving-logging")
    mp = pytest.MonkeyPatch()
    settings = enter_private_home(stack, root / "home", mp)
    sink = fast_flush(logsink_service(settings))
    feedback = fast_flush(feedback_service(settings, model=MODEL))
    try:
        supervisor.up(settings, [sink, feedback])
        model_dir = make_model_dir(root / "models", name=MODEL, version="V3.1.0")
        url = start_predictor(settings, model_dir, name=MODEL, logger_url=settings.url("logsink", "/"))
        yield {
            "settings": settings,
            "url": url,
            "model_dir": model_dir,
            "sink": sink,
            "store": store_for("monitoring", settings),
        }
    finally:
        supervisor.down(settings)
        mp.undo()


def _predict(client: httpx.Client, url: str, row: list[float], rid: str) -> httpx.Response:
    return client.post(
        f"{url}/v1/models/{MODEL}:predict",
        json={"instances": [row]},
        headers={"x-request-id": rid},
    )


def _counts_for(store, ids: set[str]) -> tuple[dict, int]:
    """Distinct events of these request ids by type, and the number of stored rows holding them (one per
    event: every request here has one instance)."""
    seen, raw = set(), 0
    counts = {"request": 0, "response": 0}
    for row in stored_rows(store, "inference-logs", MODEL).to_pylist():
        if row["request_id"] in ids:
            raw += 1
            key = (row["source"], row["inferenceservicename"], row["endpoint"], row["request_id"], row["type"])
            if key not in seen:
                seen.add(key)
                counts[row["type"]] += 1
    return counts, raw


def test_feedback_joins_logged_predictions_by_request_id(serving):
    settings, url, store = serving["settings"], serving["url"], serving["store"]
    rows = curated_frame().iloc[100:130]
    ids = [f"join-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(rows))]
    label_source = {"authorization": f"Bearer {ensure_label_source(settings)}"}  # the stack's clients' source
    with httpcalls.client(timeout=30, headers=label_source) as client:
        answers = [_predict(client, url, r, rid) for r, rid in zip(rows[FEATURES].values.tolist(), ids)]
        assert all(a.status_code == 200 for a in answers)
        assert [a.headers["x-request-id"] for a in answers] == ids
        truths = [{"request_id": rid, "truth": float(t)} for rid, t in zip(ids, rows["progression"])]
        r = client.post(settings.url("feedback", "/v1/feedback"), json=truths[:10])
        assert r.status_code == 200 and r.json() == {"stored": 10}
        for t in truths[10:]:
            assert client.post(settings.url("feedback", "/v1/feedback"), json=t).status_code == 200
        bad = client.post(
            settings.url("feedback", "/v1/feedback"),
            json={"request_id": "", "truth": "x"},
        )
        assert bad.status_code == 400 and "request_id" in bad.json()["error"]
        nan = client.post(
            settings.url("feedback", "/v1/feedback"),
            content=b'{"request_id": "a", "truth": NaN}',
        )
        assert nan.status_code == 400

    def joined() -> pd.DataFrame:
        preds = read_predictions(store, MODEL)
        truth = read_labels(store, MODEL)
        return preds[preds.request_id.isin(ids)].merge(truth, on=["request_id", "instance"])

    eventually(lambda: len(joined()) == len(ids), 30, "30 predictions joined with their ground truth")
    both = joined()
    both = both.set_index("request_id").loc[ids]
    assert both["truth"].tolist() == rows["progression"].tolist()
    assert both["prediction"].tolist() == expected_predictions(serving["model_dir"], rows)
    assert set(both["model_version"]) == {"V3.1.0"} and set(both["stage"]) == {"production"}
    assert both[FEATURES].values.tolist() == rows[FEATURES].values.tolist()
    assert set(both["source"]) == {DEFAULT_LABEL_SOURCE}  # each label carries who posted it


def test_only_declared_label_sources_may_post_ground_truth(serving):
    """Ground truth decides both release gates: a label without a declared source's token (or with a token no
    source holds) is refused with a 403 JSON message saying how to post, and nothing is stored; a newly declared
    source counts at once, and its labels say it posted them. The tokens are the data dir's, mode 0600."""
    settings, store = serving["settings"], serving["store"]
    url = settings.url("feedback", "/v1/feedback")
    rid = f"provenance-{uuid.uuid4().hex[:8]}"
    path = label_sources_path(settings)
    ensure_label_source(settings)
    assert path.stat().st_mode & 0o777 == 0o600
    for headers in ({}, {"authorization": "Bearer not-a-declared-token"}, {"authorization": "Basic eDp5"}):
        r = httpcalls.post(url, json={"request_id": rid, "truth": 1.0, "model": MODEL}, headers=headers, timeout=30)
        assert r.status_code == 403, (headers, r.status_code, r.text)
        error = r.json()["error"]
        assert "Authorization: Bearer" in error and str(path) in error and "nothing was stored" in error
    engineers = ensure_label_source(settings, "data-engineering")
    assert path.stat().st_mode & 0o777 == 0o600
    r = httpcalls.post(
        url,
        json=[{"request_id": rid, "truth": 2.0, "model": MODEL}],
        headers={"authorization": f"Bearer {engineers}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json() == {"stored": 1}

    def stored():
        got = read_labels(store, MODEL)
        got = got[got["request_id"] == rid]
        return (got,) if len(got) else None  # a 1-tuple: eventually tests its value's truth

    (labels,) = eventually(stored, 30, "the declared source's label stored")
    assert labels[["truth", "source"]].values.tolist() == [[2.0, "data-engineering"]]  # the refused ones: none
    with pytest.raises(httpx.HTTPStatusError):  # a client cannot name its own source
        httpcalls.post(
            url,
            json={"request_id": rid, "truth": 3.0, "model": MODEL, "source": "data-engineering"},
            headers={"authorization": f"Bearer {ensure_label_source(settings)}"},
            timeout=30,
        ).raise_for_status()


def test_spooled_events_survive_a_predictor_restart_and_refused_ones_do_not_block(serving, tmp_path):
    """Events spooled while the sink was unreachable are replayed by the next logger on the same WAL; an
    event the sink refuses for good (400) is counted as dropped instead of blocking the ones behind it."""
    import numpy as np

    from kfrelease.serving.logger import InferenceLogger
    from tests.serving.serving_helpers import free_port

    settings, store = serving["settings"], serving["store"]
    wal = tmp_path / "wal"
    kwargs = {"model": MODEL, "version": "V3.1.0", "stage": "staging", "features": FEATURES}
    rows = np.asarray(curated_frame()[FEATURES].values[:1], dtype="float64")
    ids = [f"restart-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    down = InferenceLogger(url=f"http://127.0.0.1:{free_port()}/", wal_dir=wal, **kwargs)
    down.start()
    for rid in ids:
        down.log(rid, rows, np.array([1.5]))
    eventually(lambda: down.spooled == 6 or None, 20, "6 events spooled")
    down.close()
    assert down.sent == 0 and list(wal.glob("*.jsonl"))

    refused = InferenceLogger(
        url=settings.url("logsink", "/"),
        wal_dir=tmp_path / "wal-bad",
        **{**kwargs, "model": "../not-a-model"},
    )
    refused.start()
    refused.log("refused-1", rows, np.array([1.0]))
    eventually(lambda: refused.dropped == 2 or None, 20, "the refused events to be dropped")
    refused.close()

    again = InferenceLogger(url=settings.url("logsink", "/"), wal_dir=wal, **kwargs)
    again.start()
    try:
        counts = eventually(
            lambda: (c := _counts_for(store, set(ids))[0]) == {"request": 3, "response": 3} and c,
            30,
            "the replayed events in the store",
        )
        assert counts == {"request": 3, "response": 3}
        eventually(
            lambda: not list(wal.glob("*.jsonl")) or None,
            10,
            "the replayed WAL segment to be deleted",
        )
    finally:
        again.close()


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sink_and_store_outages_lose_no_prediction_and_no_log_event(serving, stack):
    """Under steady load (25 req/s) the log sink is stopped, then the object store; the sink comes back while
    the store is still down, then the store. Each step waits for what the previous one must cause, read from
    the services' own health and metrics, never for a time: the predictor spools events while the sink is down,
    the sink holds the replayed events in its write-ahead file while the store is down, and both drain once
    back. Every prediction is answered and every event reaches the store exactly once."""
    settings, url, store = serving["settings"], serving["url"], serving["store"]
    features = curated_frame()[FEATURES].values.tolist()
    sent: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load():
        with httpcalls.client(timeout=10) as client:
            i = 0
            while not stop.is_set():
                rid = f"outage-{i}-{uuid.uuid4().hex[:6]}"
                try:
                    r = _predict(client, url, features[i % len(features)], rid)
                    (sent if r.status_code == 200 else failures).append(
                        rid if r.status_code == 200 else f"{r.status_code}"
                    )
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                i += 1
                stop.wait(0.04)

    def logger(name: str, **labels) -> float:
        return _metric(httpcalls.get(f"{url}/metrics", timeout=10).text, name, **labels)

    def spooled() -> float:
        return logger("kfrelease_predictor_log_events_total", result="spooled")

    def sink_pending() -> int:
        return httpcalls.get(settings.url("logsink", "/healthz"), timeout=10).json()["pending"]

    def answered(more: int, what: str) -> None:
        start = len(sent)
        eventually(lambda: len(sent) - start >= more or failures, 60, f"{more} answered predictions {what}")

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        answered(50, "before the outages")
        spooled_before = spooled()
        supervisor.stop_service(settings, "logsink")
        eventually(lambda: spooled() - spooled_before >= 100, 60, "the predictor spooling events with the sink down")
        supervisor.stop_service(stack, "s3")
        answered(100, "with the sink and the object store down")
        supervisor.start_service(settings, serving["sink"])
        # the predictor hands its spool to the sink, which cannot write the store: it holds them in its WAL
        pending = eventually(
            lambda: logger("kfrelease_predictor_log_backlog") == 0 and sink_pending(),
            60,
            "the predictor's spool replayed into the sink's write-ahead file",
        )
        supervisor.start_service(stack, s3_service(stack))
        eventually(lambda: sink_pending() == 0, 60, "the sink writing its held events to the object store")
        answered(50, "after both came back")
    finally:
        stop.set()
        thread.join(30)
        if not supervisor.service_status(stack, "s3").healthy:
            supervisor.start_service(stack, s3_service(stack))
        if not supervisor.service_status(settings, "logsink").healthy:
            supervisor.start_service(settings, serving["sink"])
    assert failures == [], f"{len(failures)} predictions failed: {failures[:5]}"
    assert len(sent) >= 250  # the four waits for answers above
    assert pending > 0
    ids = set(sent)
    counts, raw = eventually(
        lambda: (c := _counts_for(store, ids)) and c[0]["response"] == len(ids) and c[0]["request"] == len(ids) and c,
        120,
        f"{len(ids)} requests and responses in the store",
    )
    assert counts == {"request": len(ids), "response": len(ids)}, "sent != logged"
    print(
        f"outage: {len(ids)} predictions sent, {counts} distinct events logged, {raw} lines, {pending} held by the sink"
    )
    assert raw == 2 * len(ids), f"{raw - 2 * len(ids)} duplicate lines were written"
    metrics = httpcalls.get(f"{url}/metrics").text
    assert _metric(metrics, "kfrelease_predictor_log_events_total", result="dropped") == 0
    assert _metric(metrics, "kfrelease_predictor_log_events_total", result="spooled") > 0, (
        "the sink outage was not seen"
    )
    assert re.search(r"kfrelease_predictor_log_backlog\{[^}]*\} 0\.0", metrics)
    frame = read_predictions(store, MODEL)
    assert frame[frame.request_id.isin(ids)].groupby("request_id").size().eq(1).all()
    assert isinstance(frame["time"].dtype, pd.DatetimeTZDtype)
