"""The log sink: KServe logger CloudEvents in, Parquet batches in ``inference-logs`` out (``kfrelease.lake``);
acknowledged only once durable, stored exactly once, duplicates dropped, refused events get a 400 JSON."""

from __future__ import annotations

import io
import json

import orjson
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from kfrelease.collectors.sink import (
    BUCKET,
    InvalidEvent,
    LogSink,
    create_app,
    event_key,
    event_line,
    parse_writer,
    parse_writers,
)
from kfrelease.lake import count_events, read_predictions
from kfrelease.lake.read import stored_rows
from kfrelease.lake.schema import SCHEMA_VERSION, schema_version_of
from kfrelease.lake.write import segment_objects

KSERVE_HEADERS = {  # what KServe's InferenceLogger sends (no kfrelease extensions)
    "ce-specversion": "1.0",
    "ce-id": "abc-1",
    "ce-type": "org.kubeflow.serving.inference.request",
    "ce-source": "http://localhost:9081/",
    "ce-time": "2026-01-02T03:04:05.000001Z",
    "ce-inferenceservicename": "diabetes-progression",
    "ce-namespace": "kfrelease",
    "ce-component": "predictor",
    "ce-endpoint": "canary",
    "content-type": "application/json",
}


def test_kserve_v1_and_v2_requests_and_responses_become_contract_lines():
    req = event_line(KSERVE_HEADERS, b'{"instances": [{"b": 2, "a": 1}, {"a": 3, "b": 4}]}')
    assert req["type"] == "request" and req["stage"] == "canary" and req["model"] == "diabetes-progression"
    assert req["instances"] == [[2, 1], [4, 3]] and req["features"] == ["b", "a"]
    named = event_line({**KSERVE_HEADERS, "ce-features": "a,b"}, b'{"instances": [{"b": 2, "a": 1}]}')
    assert named["instances"] == [[1, 2]]
    v2 = event_line(
        KSERVE_HEADERS,
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 2],
                        "datatype": "FP64",
                        "data": [1, 2, 3, 4],
                    }
                ]
            }
        ).encode(),
    )
    assert v2["instances"] == [[1, 2], [3, 4]]
    cols = event_line(
        {**KSERVE_HEADERS, "ce-features": "a,b"},
        json.dumps(
            {
                "inputs": [
                    {"name": "b", "shape": [2], "datatype": "FP64", "data": [2, 4]},
                    {"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 3]},
                ]
            }
        ).encode(),
    )
    assert cols["instances"] == [[1, 2], [3, 4]]
    resp_headers = {
        **KSERVE_HEADERS,
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-endpoint": "default",
    }
    resp = event_line(
        resp_headers,
        b'{"model_name": "m", "model_version": "V1.0.0", "outputs": [{"data": [5.5, 6]}]}',
    )
    assert resp["predictions"] == [5.5, 6] and resp["model_version"] == "V1.0.0" and resp["stage"] == "production"


AGENT_HEADERS = {
    # Exactly what the KServe agent's logger sends (kserve/kserve pkg/logger/worker.go, sendHttpCloudEvent):
    # a binary-mode CloudEvent with id, type, source, time (cloudevents.WithTimeNow) and only the
    # extensions inferenceservicename, namespace, component, endpoint and metadata; content-type of the body.
    "ce-specversion": "1.0",
    "ce-id": "agent-1",
    "ce-type": "org.kubeflow.serving.inference.request",
    "ce-source": "http://diabetes-progression-predictor.kfrelease-serving/",
    "ce-time": "2026-01-02T03:04:05.123456789Z",  # Go's RFC 3339 with nanoseconds
    "ce-inferenceservicename": "diabetes-progression",
    "ce-namespace": "kfrelease-serving",
    "ce-component": "predictor",
    "ce-endpoint": "default",
    "ce-metadata": "{}",
    "content-type": "application/json",
}


def _agent_pair(tmp_path, isvc: str, endpoint: str, version: str, rid: str):
    request = {**AGENT_HEADERS, "ce-id": rid, "ce-inferenceservicename": isvc, "ce-endpoint": endpoint}
    response = {**request, "ce-type": "org.kubeflow.serving.inference.response"}
    return [
        event_line(request, b'{"instances": [[0.1, 0.2]]}'),  # a v1 request names no model or version
        event_line(
            response,
            json.dumps(
                {"predictions": [151.5], "model_name": "diabetes-progression", "model_version": version}
            ).encode(),
        ),
    ]


def test_the_kserve_agent_headers_alone_give_model_version_and_stage(tmp_path):
    """No ce-model / ce-modelversion / ce-stage / ce-features: the model comes from the InferenceService
    name, the stage from its name (``-staging``) and the endpoint, the version from the response body.
    The primary, the shadow and the canary answer the same request id with the same (default) source,
    and each answer stays its own prediction, in the sink's dedup as in the lake's join."""
    import duckdb

    lines = (
        _agent_pair(tmp_path, "diabetes-progression", "default", "V1.1.0", "r1")
        + _agent_pair(tmp_path, "diabetes-progression-staging", "default", "V1.2.0", "r1")
        + _agent_pair(tmp_path, "diabetes-progression", "canary", "V1.3.0", "r1")
    )
    assert {ln["model"] for ln in lines} == {"diabetes-progression"}
    assert len({event_key(ln) for ln in lines}) == 6, "the sink would drop the shadow's or the canary's answer"
    seg = tmp_path / "000000000001-agent.jsonl"
    seg.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    ((key, (data, n)),) = segment_objects(seg, BUCKET).items()  # one model, one hour: one batch of 6 events
    assert n == 6 and key.startswith("model=diabetes-progression/date=2026-01-02/hour=03/")
    (tmp_path / "b.parquet").write_bytes(data)
    from kfrelease.lake.engine import define_views

    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{tmp_path / 'b.parquet'}')")
    con.execute("CREATE TABLE labels (request_id VARCHAR, instance INTEGER, truth DOUBLE, time TIMESTAMPTZ)")
    define_views(con, ["age", "bmi"])
    rows = con.execute(
        "SELECT request_id, model_version, stage, age, bmi, prediction FROM predictions ORDER BY model_version"
    ).fetchall()
    assert rows == [
        ("r1", "V1.1.0", "production", 0.1, 0.2, 151.5),
        ("r1", "V1.2.0", "staging", 0.1, 0.2, 151.5),
        ("r1", "V1.3.0", "canary", 0.1, 0.2, 151.5),
    ]


@pytest.mark.parametrize(
    "headers,body,fragment",
    [
        ({k: v for k, v in KSERVE_HEADERS.items() if k != "ce-id"}, b"{}", "ce-id"),
        (
            {**KSERVE_HEADERS, "ce-type": "com.example.other"},
            b"{}",
            "not an inference event",
        ),
        (KSERVE_HEADERS, b"{not json", "not JSON"),
        ({**KSERVE_HEADERS, "ce-inferenceservicename": "../x"}, b"{}", "model"),
    ],
)
def test_events_that_are_not_inference_cloudevents_are_refused(headers, body, fragment):
    with pytest.raises(InvalidEvent, match=fragment):
        event_line(headers, body)


def test_a_segment_becomes_one_parquet_object_per_model_and_hour_with_a_stable_key(tmp_path):
    seg = tmp_path / "000000000001-aa.jsonl"
    lines = [
        {
            "id": "1",
            "type": "request",
            "time": "2026-01-02T23:59:59Z",
            "model": "m",
            "source": "s",
        },
        {
            "id": "2",
            "type": "request",
            "time": "2026-01-03T00:00:01Z",
            "model": "m",
            "source": "s",
        },
        {
            "id": "3",
            "type": "request",
            "time": "2026-01-03T00:00:02Z",
            "model": "n",
            "source": "s",
        },
    ]
    seg.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    first, again = segment_objects(seg, BUCKET), segment_objects(seg, BUCKET)
    assert first == again  # a retried upload writes the same keys (If-None-Match makes it a no-op)
    assert sorted(k.rsplit("/", 1)[0] for k in first) == [
        "model=m/date=2026-01-02/hour=23",
        "model=m/date=2026-01-03/hour=00",
        "model=n/date=2026-01-03/hour=00",
    ]
    assert all(k.endswith(".parquet") for k in first)
    assert sum(n for _, n in first.values()) == 3  # every event of the segment, once
    table = pq.read_table(io.BytesIO(first[min(first)][0]))
    assert table.column("request_id").to_pylist() == ["1"]
    assert schema_version_of(io.BytesIO(first[min(first)][0])) == SCHEMA_VERSION


def _wal_ids(wal) -> list[str]:
    return [orjson.loads(x)["id"] for p in sorted(wal.glob("*.jsonl")) for x in p.read_bytes().splitlines()]


def test_a_batch_is_written_whole_or_refused_whole_and_the_logger_then_loses_only_the_invalid_events(tmp_path):
    """Batched mode (what the prediction logger sends): every event of a valid batch is fsync'ed under one
    200; a batch with one invalid event is a 400 JSON error naming its index, and none of it is written;
    the logger then sends that batch one event at a time, so only the invalid event is dropped."""
    import numpy as np

    from kfrelease.config import Settings
    from kfrelease.serving.logger import InferenceLogger

    sink = LogSink(Settings(home=tmp_path), wal_dir=tmp_path / "wal", store=object())
    logger = InferenceLogger(
        "http://testserver/", tmp_path / "logger-wal", "batch-model", "V1.0.0", "production", ["a"]
    )
    with TestClient(create_app(sink)) as client:
        logger._client = client  # the sender thread is not started: _deliver is called here
        rows, pred = np.array([[1.0]]), np.array([2.0])
        events = [e for i in range(50) for e in logger._events(f"ok-{i}", "2026-01-02T03:04:05Z", rows, pred)]
        assert logger._deliver(events) == 100 and logger.sent == 100
        assert sorted(_wal_ids(tmp_path / "wal")) == sorted(e["id"] for e in events)

        bad = [e for i in range(5) for e in logger._events(f"mixed-{i}", "2026-01-02T03:04:06Z", rows, pred)]
        bad[3] = {**bad[3], "time": "yesterday"}
        r = client.post("/", content=logger._batch_body(bad), headers={"content-type": BATCH})
        assert r.status_code == 400 and r.json()["error"].startswith("event 3 of the batch of 10 (none of the")
        assert len(_wal_ids(tmp_path / "wal")) == 100, "a refused batch wrote nothing"
        assert logger._deliver(bad) == 10  # done with all: 9 sent one at a time, the invalid one dropped
        assert (logger.sent, logger.dropped) == (109, 1)
        assert len(_wal_ids(tmp_path / "wal")) == 109

        empty = client.post("/", content=b"[]", headers={"content-type": BATCH})
        assert (empty.status_code, empty.json()) == (200, {"written": 0, "duplicates": 0})
        for body, fragment in ((b"{}", "JSON array"), (b'[{"id": "x"}]', "event 0 of the batch of 1")):
            r = client.post("/", content=body, headers={"content-type": BATCH})
            assert r.status_code == 400 and fragment in r.json()["error"]


BATCH = "application/cloudevents-batch+json"


def test_a_logged_prediction_is_in_the_write_ahead_file_when_log_returns_and_is_sent_from_there(tmp_path):
    """The prediction logger writes before the answer leaves (a killed model server loses no answered
    request: ``tests/lake/test_spool.py`` kills one), and its sender posts from that file and empties it."""
    import numpy as np

    from kfrelease.config import Settings
    from kfrelease.serving.logger import InferenceLogger

    sink = LogSink(Settings(home=tmp_path), wal_dir=tmp_path / "wal", store=object())
    logger = InferenceLogger("http://testserver/", tmp_path / "logger-wal", "wal-model", "V1.0.0", "production", ["a"])
    logger.log("first", np.array([[1.0]]), np.array([2.0]))
    assert _wal_ids(tmp_path / "logger-wal") == ["first", "first"] and logger.backlog() == 2  # request, response
    with TestClient(create_app(sink)) as client:
        logger._client = client  # the sender thread is not started: one round is run here
        logger._send_spooled()
    assert _wal_ids(tmp_path / "wal") == ["first", "first"] and (logger.sent, logger.backlog()) == (2, 0)
    assert _wal_ids(tmp_path / "logger-wal") == []


@pytest.mark.integration
def test_acknowledged_events_are_durable_deduplicated_and_uploaded(stack, tmp_path):
    from kfrelease.storage import store_for

    sink = LogSink(
        stack,
        wal_dir=tmp_path / "wal",
        store=store_for("serving", stack),
        flush_interval=0.2,
    )
    model = "sink-test-model"
    headers = {
        **KSERVE_HEADERS,
        "ce-inferenceservicename": model,
        "ce-model": model,
        "ce-stage": "production",
        "ce-modelversion": "V1.0.0",
        "ce-features": "a,b",
        "ce-time": "2026-01-02T03:04:05Z",
    }
    with TestClient(create_app(sink)) as client:
        r = client.post("/", content=b'{"instances": [[1, 2]]}', headers=headers)
        assert r.status_code == 200 and r.json() == {"written": 1, "duplicates": 0}
        # acknowledged = in the fsync'ed write-ahead file, before any upload
        wal_lines = [orjson.loads(x) for p in (tmp_path / "wal").glob("*.jsonl") for x in p.read_bytes().splitlines()]
        assert [x["id"] for x in wal_lines] == ["abc-1"]
        again = client.post("/", content=b'{"instances": [[1, 2]]}', headers=headers)
        assert again.status_code == 200 and again.json() == {
            "written": 0,
            "duplicates": 1,
        }
        resp = client.post(
            "/",
            content=b'{"predictions": [9.5]}',
            headers={**headers, "ce-type": "org.kubeflow.serving.inference.response"},
        )
        assert resp.json()["written"] == 1
        shadow = client.post(
            "/",
            content=b'{"predictions": [7.0]}',
            headers={
                **headers,
                "ce-type": "org.kubeflow.serving.inference.response",
                "ce-source": "shadow",
                "ce-stage": "staging",
            },
        )
        assert shadow.json()["written"] == 1, "same id from another source is another event"
        bad = client.post("/", content=b"{}", headers={"ce-id": "x"})
        assert bad.status_code == 400 and "ce-type" in bad.json()["error"]
        batch = client.post(
            "/",
            content=json.dumps(
                [
                    {
                        "specversion": "1.0",
                        "id": "abc-2",
                        "type": "org.kubeflow.serving.inference.request",
                        "source": "b",
                        "time": "2026-01-02T03:04:06Z",
                        "model": model,
                        "data": {"instances": [[3, 4]]},
                    }
                ]
            ),
            headers={"content-type": "application/cloudevents-batch+json"},
        )
        assert batch.json()["written"] == 1
    sink.writer.stop()
    store = store_for("monitoring", stack)
    assert count_events(store, model) == {"request": 2, "response": 2}
    stored = stored_rows(store, "inference-logs", model)
    assert stored.num_rows == 4, "the duplicate was written"
    frame = read_predictions(store, model)
    assert frame[["request_id", "a", "b", "prediction"]].values.tolist() == [["abc-1", 1, 2, 9.5]]
    assert not list((tmp_path / "wal").glob("*.jsonl")), "uploaded segments are removed from the WAL"


def test_segments_rotated_while_events_arrive_are_uploaded_whole(stack, tmp_path):
    """Regression (found in the demo: 41 of 3,969 answered requests missing): the uploader listed the WAL
    without the writer's lock, so it could take the segment a concurrent append had just opened for a
    closed one, upload it half-written and delete it; the lines appended after that went to a deleted
    file. Appends and uploads race here on purpose; every acknowledged line must arrive."""
    import threading
    import uuid

    from kfrelease.collectors.sink import BatchWriter
    from kfrelease.storage import store_for

    store = store_for("serving", stack)
    writer = BatchWriter(store, BUCKET, tmp_path / "wal", flush_interval=0.0)  # rotate on every flush
    model = f"wal-race-{uuid.uuid4().hex[:8]}"
    threads, per_thread = 4, 400
    done = threading.Event()

    def append(t: int) -> None:
        for i in range(per_thread):
            line = {"model": model, "time": "2026-01-02T03:04:05Z", "id": f"{t}-{i}", "type": "request"}
            writer.spool.append([orjson.dumps(line) + b"\n"])

    def upload() -> None:
        while not done.is_set():
            writer.uploader.flush_once()

    uploader = threading.Thread(target=upload)
    uploader.start()
    appenders = [threading.Thread(target=append, args=(t,)) for t in range(threads)]
    for a in appenders:
        a.start()
    for a in appenders:
        a.join()
    done.set()
    uploader.join()
    assert writer.uploader.flush_once(force=True)
    ids = stored_rows(store, BUCKET, model).column("request_id").to_pylist()
    assert len(ids) == len(set(ids)) == threads * per_thread, f"{threads * per_thread - len(set(ids))} lines lost"
    assert list((tmp_path / "wal").glob("*.jsonl")) == []


@pytest.mark.integration
def test_small_batches_of_a_closed_hour_are_compacted_into_one_with_every_row_once(stack):
    import datetime as dt
    import uuid

    from kfrelease.lake.write import closed_partitions, compact_partition, write_records
    from kfrelease.storage import store_for

    store = store_for("serving", stack)
    model = f"compact-{uuid.uuid4().hex[:8]}"
    t = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    for b in range(4):
        lines = [
            {
                "id": f"{b}-{i}",
                "type": "request",
                "time": t.isoformat(),
                "source": "s",
                "model": model,
                "instances": [[float(i), 1.0]],
            }
            for i in range(5)
        ]
        write_records(store, "inference-logs", model, lines, origin=f"segment-{b}")
    path = f"model={model}/date={t:%Y-%m-%d}/hour={t:%H}"
    assert path in closed_partitions(store, "inference-logs")
    before = sorted(stored_rows(store, "inference-logs", model).column("request_id").to_pylist())
    target = compact_partition(store, "inference-logs", path)
    assert [o.key for o in store.list("inference-logs", path + "/")] == [target]
    assert sorted(stored_rows(store, "inference-logs", model).column("request_id").to_pylist()) == before
    assert len(before) == 20 and compact_partition(store, "inference-logs", path) is None  # nothing left to merge


def test_on_a_cluster_each_predictor_identity_logs_its_own_model_and_stage_only(tmp_path):
    """Review eks4 R2, beside the refused pickle: a logged event is only its attributes (kserve/kserve@v0.20.0
    ``pkg/logger/worker.go``), so the sink, started with the rendered Deployment's ``--writer`` arguments, asks who
    posted (the ``x-forwarded-client-cert`` its sidecar sets). Each InferenceService has its own service account
    (per model and stage), and the rendered service accounts, the sink's ALLOW policy, its ``--writer`` arguments
    and the InferenceServices' ``serviceAccountName`` name the same identities. The shadow's identity posting a
    response that names production's InferenceService for a mirrored request id is a 403 JSON error and nothing is
    written; so is a predictor of one model posting another model's events (its shadow logging the other's staging,
    its production the other's production: both were taken while one service account served every model); each
    identity's own events, production's canary included, are taken; a caller with no mesh identity is refused."""
    import dataclasses

    from kfrelease.config import Settings
    from kfrelease.k8s.render.inference import production_name, render_inference_services, staging_name
    from kfrelease.k8s.render.mesh import principal
    from kfrelease.k8s.render.tree import Sources, environment_documents
    from kfrelease.rollout.traffic import TrafficState

    sources = Sources.load()
    spec = sources.spec
    other = spec.with_changes(model="friedman-response")
    sources = dataclasses.replace(sources, models=(spec, other))
    env = sources.envs.environments["production"]
    docs = environment_documents(sources, env)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kfrelease-logsink"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    writers = parse_writers([args[i + 1] for i, a in enumerate(args) if a == "--writer"])
    ns = deployment["metadata"]["namespace"]

    def identities(s) -> tuple[str, str]:  # (production's, the shadow's) as the InferenceServices run them
        state = TrafficState(primary="V1.1.0", shadow="V1.2.0")
        isvcs = render_inference_services(s, state, {"V1.1.0": "oci://r/m:1", "V1.2.0": "oci://r/m:2"})
        sa = {d["metadata"]["name"]: d["spec"]["predictor"]["serviceAccountName"] for d in isvcs}
        return principal(ns, sa[production_name(s)]), principal(ns, sa[staging_name(s)])

    (production, shadow), (other_production, other_shadow) = identities(spec), identities(other)
    a, b = production_name(spec), production_name(other)
    assert writers == {
        production: (a, {"production", "canary"}),
        shadow: (a, {"staging"}),
        other_production: (b, {"production", "canary"}),
        other_shadow: (b, {"staging"}),
    }
    accounts = {principal(ns, d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    (policy,) = [d for d in docs if d["kind"] == "AuthorizationPolicy" and d["metadata"]["name"] == "kfrelease-logsink"]
    allowed = {p for r in policy["spec"]["rules"] for f in r.get("from", []) for p in f["source"].get("principals", [])}
    assert set(writers) <= accounts and allowed == set(writers)

    def sent_by(who: str) -> dict:  # what the sink's sidecar appends for an mTLS peer (APPEND_FORWARD, URI SAN)
        return {
            "x-forwarded-client-cert": f"By=spiffe://{principal(ns, 'kfrelease-serving')};Hash=0;URI=spiffe://{who}"
        }

    answer = {**KSERVE_HEADERS, "ce-type": "org.kubeflow.serving.inference.response", "ce-endpoint": ""}
    prod_answer = {**answer, "ce-id": "mirrored-1", "ce-inferenceservicename": production_name(spec)}
    shadow_answer = {**prod_answer, "ce-inferenceservicename": staging_name(spec)}
    canary = {**prod_answer, "ce-id": "canary-1", "ce-endpoint": "canary"}
    other_answer = {**prod_answer, "ce-id": "other-1", "ce-inferenceservicename": production_name(other)}
    other_shadow_answer = {**other_answer, "ce-inferenceservicename": staging_name(other)}
    body = b'{"predictions": [99999.0], "model_version": "V1.1.0"}'
    sink = LogSink(Settings(home=tmp_path), wal_dir=tmp_path / "wal", store=object(), writers=writers)
    with TestClient(create_app(sink)) as client:
        forged = client.post("/", content=body, headers={**prod_answer, **sent_by(shadow)})
        assert forged.status_code == 403, forged.text
        error = forged.json()["error"]
        assert f"stage production) is not {shadow}'s to log: that identity logs staging of model {a} only" in error
        assert _wal_ids(tmp_path / "wal") == []
        nobody = client.post("/", content=body, headers=shadow_answer)  # plain text: no sidecar, no identity
        assert nobody.status_code == 403 and "a caller without a mesh identity may not log" in nobody.json()["error"]
        # one model's predictors log nothing of another's: its shadow not the other's staging, its production
        # not the other's production (the same stage, so only the model tells them apart)
        for who, headers in ((shadow, other_shadow_answer), (production, other_answer)):
            refused = client.post("/", content=body, headers={**headers, **sent_by(who)})
            assert refused.status_code == 403, refused.text
            assert f"(model {b}, " in refused.json()["error"] and f"of model {a} only" in refused.json()["error"]
        assert _wal_ids(tmp_path / "wal") == []
        assert client.post("/", content=body, headers={**shadow_answer, **sent_by(shadow)}).status_code == 200
        assert client.post("/", content=body, headers={**prod_answer, **sent_by(production)}).status_code == 200
        assert client.post("/", content=body, headers={**canary, **sent_by(production)}).status_code == 200
        assert client.post("/", content=body, headers={**canary, **sent_by(shadow)}).status_code == 403
        assert client.post("/", content=body, headers={**other_answer, **sent_by(other_production)}).status_code == 200
        assert client.post("/", content=body, headers={**canary, **sent_by(other_production)}).status_code == 403
    assert sorted(_wal_ids(tmp_path / "wal")) == ["canary-1", "mirrored-1", "mirrored-1", "other-1"]


def test_a_writer_names_one_model_and_its_stages(capsys):
    """``--writer <principal>=<model>:<stages>``: the stage-only form of before names no model and is refused, as
    is a principal declared twice (one predictor identity logs one model); the sink says so in one line."""
    from kfrelease.collectors.sink import main

    p = "cluster.local/ns/kfrelease-serving/sa/kfrelease-predictor-m"
    assert parse_writer(f"{p}=m:production,canary") == (p, ("m", {"production", "canary"}))
    for bad in ([f"{p}=staging"], [f"{p}=m:shadow"], [f"{p}=m:staging", f"{p}=n:staging"]):
        with pytest.raises(ValueError, match="--writer"):
            parse_writers(bad)
    with pytest.raises(SystemExit) as exit_:
        main(["--writer", f"{p}=staging"])
    assert exit_.value.code == 2
    assert "expected <principal>=<model>:<stage>" in capsys.readouterr().err.strip().splitlines()[-1]
