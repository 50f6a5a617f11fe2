"""The predictor's prediction logger: KServe InferenceLogger CloudEvents, posted without ever slowing a
prediction down.

Format (KServe ``pkg/logger/types.go`` and ``pkg/logger/worker.go``; attributes built with the ``cloudevents``
SDK from a template event, ``event_headers`` / ``event_template``): the events queued since the last POST go
in one POST in CloudEvents *batched* mode (``content-type: application/cloudevents-batch+json``, a JSON array
of structured events, at most ``max_batch`` events or ``MAX_BATCH_BYTES``); a lone event goes in *binary*
mode as KServe's agent sends it (``content-type: application/json``). Attributes: ``specversion: 1.0``,
``id`` (the request id, the same for a request and its response), ``type``
``org.kubeflow.serving.inference.request`` /
``org.kubeflow.serving.inference.response``, ``source``, ``time`` and the extensions
``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` (``default`` or ``canary``) (in binary
mode each as a ``ce-`` header). kfrelease adds extensions of its own so the sink needs no lookup: ``model``,
``modelversion``, ``stage`` and ``features`` (the input schema's feature names, comma separated). The
request event's data is the
checked request as v1 ``{"instances": [[...]]}`` in schema order; the response's is
``{"predictions": [...], "model_name", "model_version"}``.

Never failing, never stalling, never losing an answered request:
- ``log()`` writes the request and response events of a prediction to the write-ahead file
  (``kfrelease.lake.spool.Spool`` in ``wal_dir``, one unbuffered write, no fsync: the events survive a kill
  of the model server, which is what takes a predictor down) and returns; a full write-ahead file
  (``max_wal_bytes``) drops the new events and counts them (``kfrelease_predictor_log_events_total{result="dropped"}``).
- one background thread posts what was written, everything at once (one fsync in the sink per batch, not
  per event: a sender that waited for each event's fsync kept up with about 500 events/s), after letting a
  batch gather for ``linger`` seconds (0.1: at most ten POSTs a second per logger at any rate; the sink's
  uploads are seconds apart anyway), oldest first. A batch the sink refuses as a whole (4xx: the sink writes
  none of a batch with an invalid event) is sent again one event at a time, so that only the events the
  sink refuses themselves are dropped.
- When the sink does not answer 2xx, the events stay in the write-ahead file (counted once as ``spooled``)
  and are sent, oldest first, once the sink answers again (the spool's back-off: 0.1 s doubling up to 5 s).
  A delivery that is interrupted re-sends a few events; the sink drops duplicates by (id, type). The
  write-ahead file survives a restart of the predictor: it is delivered on start.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

import httpx
import orjson
from prometheus_client import Counter, Gauge

from kfrelease import httpcalls
from kfrelease.lake.spool import Backoff, Spool

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
#: Most bytes of one batched POST (the sink takes up to 8 MiB).
MAX_BATCH_BYTES = 2 * 1024 * 1024

LOG_EVENTS = Counter(
    "kfrelease_predictor_log_events",
    "Prediction-log events by result: sent (acknowledged by the sink), spooled (kept in the local "
    "write-ahead file after a failed delivery, sent later), dropped (lost: write-ahead file full, or refused "
    "by the sink for good).",
    ["model", "version", "stage", "result"],
)
LOG_BACKLOG = Gauge(
    "kfrelease_predictor_log_backlog",
    "Prediction-log events not yet acknowledged by the sink (in memory and in the write-ahead file).",
    ["model", "version", "stage"],
)


def event_headers(attributes: dict) -> dict[str, str]:
    """The binary-mode headers every event of one logger shares, built by the ``cloudevents`` SDK from a
    template event (``ce-specversion``, ``ce-source``, the extensions, ``content-type``); ``_post`` adds the
    per-event ``ce-id``, ``ce-type`` and ``ce-time``."""
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    template = CloudEvent({**attributes, "id": "-", "time": "-", "datacontenttype": "application/json"}, None)
    headers, _ = to_binary(template, data_marshaller=lambda data: data)
    return {k: v for k, v in headers.items() if k not in ("ce-id", "ce-type", "ce-time")}


def event_template(attributes: dict) -> bytes:
    """The attributes every event of one logger shares, as the opening of a structured-mode JSON object
    (``{"specversion": "1.0", "source": ..., ...,``), built by the ``cloudevents`` SDK from a template event;
    ``_batch_body`` appends each event's ``id``, ``type``, ``time`` and ``data``."""
    from cloudevents.conversion import to_dict
    from cloudevents.http import CloudEvent

    template = to_dict(CloudEvent({**attributes, "id": "-", "time": "-", "datacontenttype": "application/json"}, None))
    shared = {k: v for k, v in template.items() if k not in ("id", "type", "time", "data")}
    return orjson.dumps(shared)[:-1] + b","


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class InferenceLogger:
    def __init__(
        self,
        url: str,
        wal_dir: str | Path,
        model: str,
        version: str,
        stage: str,
        features: list[str],
        namespace: str = "kfrelease",
        inference_service: str | None = None,
        component: str = "predictor",
        max_wal_bytes: int = 512 * 1024 * 1024,
        timeout: float = 2.0,
        max_batch: int = 500,
        linger: float = 0.1,
    ):
        self.url = url
        self.wal_dir = Path(wal_dir)
        self.model, self.version, self.stage = model, version, stage
        self.timeout = timeout
        self.max_batch = max(1, max_batch)
        self.linger = linger
        attributes = {
            "type": REQUEST_TYPE,
            "source": f"http://kfrelease/{namespace}/{inference_service or model}/{stage}",
            "inferenceservicename": inference_service or model,
            "namespace": namespace,
            "component": component,
            "endpoint": "canary" if stage == "canary" else "default",
            "model": model,
            "modelversion": version,
            "stage": stage,
            "features": ",".join(features),
        }
        self.base_headers = event_headers(attributes)
        self.structured_prefix = event_template(attributes)
        self.spool = Spool(self.wal_dir, sync=False, max_bytes=max_wal_bytes, backoff=Backoff(0.1, 5.0))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None
        labels = (model, version, stage)
        self._sent = LOG_EVENTS.labels(*labels, "sent")
        self._spooled = LOG_EVENTS.labels(*labels, "spooled")
        self._dropped = LOG_EVENTS.labels(*labels, "dropped")
        self._backlog = LOG_BACKLOG.labels(*labels)
        self.sent = self.spooled = self.dropped = 0
        # events in the order written (a previous run's backlog first): how many were delivered, and up to
        # which one they were counted as spooled (only the sender thread touches these)
        self._delivered, self._counted = 0, self.spool.pending

    # --- request path ------------------------------------------------------------------------------
    def log(self, request_id: str, rows, predictions) -> None:
        """Write the request and response events of one prediction to the write-ahead file (it survives a
        kill of this process) for the sender thread to post; never raises."""
        try:
            events = self._events(request_id, _now_iso(), rows, predictions)
            if not self.spool.append([orjson.dumps(e) + b"\n" for e in events]):
                self.dropped += 2
                self._dropped.inc(2)
                return
            self._wake.set()
        except Exception:
            log.exception("could not write a prediction-log event")

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._client = httpcalls.client(timeout=self.timeout)
        self._thread = threading.Thread(target=self._run, name="inference-logger", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent now (one try); the rest stays in the write-ahead file."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1)
        self.spool.close()
        if self._client is not None:
            self._client.close()

    def backlog(self) -> int:
        """Events not yet acknowledged by the sink (all in the write-ahead file)."""
        return self.spool.pending

    # --- sender thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.spool.backoff.ready():
                self._stop.wait(min(1.0, self.spool.backoff.remaining()))
                continue
            if not self.spool.pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if self.spool.open_lines < self.max_batch:
                self._stop.wait(self.linger)  # let a batch gather: one POST per linger, not per prediction
            self._send_spooled()
        if self.spool.pending and self.spool.backoff.ready():
            self._send_spooled()

    def _send_spooled(self) -> None:
        try:
            self.spool.rotate()
            self.spool.drain(self._deliver_segment)
        except Exception:
            log.exception("prediction-log sender error")
            self._stop.wait(0.1)
        self._backlog.set(self.backlog())

    def _deliver_segment(self, segment: Path, lines: list[bytes]) -> int:
        """Post one write-ahead segment's events; how many of its lines, from the first, the sink is done with."""
        events = []
        for i, line in enumerate(lines):
            try:
                events.append((i, orjson.loads(line)))
            except orjson.JSONDecodeError:
                log.error("skipping an unreadable line %d of %s", i, segment)
        done = self._deliver([e for _, e in events])
        taken = len(lines) if done == len(events) else events[done][0]
        written = self._delivered + self.spool.pending  # every event written so far, oldest first
        self._delivered += taken
        if taken < len(lines):  # the sink is down: every event waiting now counts as spooled, once
            fresh = written - max(self._counted, self._delivered)
            self.spooled += fresh
            self._spooled.inc(fresh)
            self._counted = written
        return taken

    def _events(self, request_id: str, when: str, rows, predictions) -> list[dict]:
        request = orjson.dumps({"instances": rows.tolist()})
        response = orjson.dumps(
            {
                "predictions": predictions.tolist(),
                "model_name": self.model,
                "model_version": self.version,
            }
        )
        return [
            {
                "id": request_id,
                "type": REQUEST_TYPE,
                "time": when,
                "data": request.decode(),
            },
            {
                "id": request_id,
                "type": RESPONSE_TYPE,
                "time": when,
                "data": response.decode(),
            },
        ]

    def _deliver(self, events: list[dict]) -> int:
        """Send ``events`` (one POST per ``MAX_BATCH_BYTES``); how many of them, from the first, the sink is
        done with (acknowledged, or refused for good and dropped). The rest are to be retried."""
        done = 0
        while done < len(events):
            chunk, size = [], 0
            for event in events[done:]:
                if chunk and size + len(event["data"]) > MAX_BATCH_BYTES:
                    break
                chunk.append(event)
                size += len(event["data"]) + 300
            if len(chunk) == 1:
                if not self._post(chunk[0]):
                    return done
                done += 1
                continue
            status = self._post_batch(chunk)
            if status is False:
                return done
            if status is None:  # refused as a whole: one at a time, so only the bad ones are dropped
                for event in chunk:
                    if not self._post(event):
                        return done
                    done += 1
                continue
            done += len(chunk)
        return done

    def _batch_body(self, events: list[dict]) -> bytes:
        prefix = self.structured_prefix
        parts = [
            prefix
            + orjson.dumps({"id": e["id"], "type": e["type"], "time": e["time"]})[1:-1]
            + b',"data":'
            + e["data"].encode()
            + b"}"
            for e in events
        ]
        return b"[" + b",".join(parts) + b"]"

    def _post_batch(self, events: list[dict]) -> bool | None:
        """One batched POST: True when acknowledged, False when it should be retried, None when the sink
        refused the batch for good (4xx other than 408/429: some event in it is invalid)."""
        outcome, answer = self._send(self._batch_body(events), {"content-type": BATCH_CONTENT_TYPE}, len(events))
        if outcome is None:
            log.warning("log sink refused a batch of %d events (%s); sending them one at a time", len(events), answer)
        return outcome

    def _post(self, event: dict) -> bool:
        """True when the sink is done with the event (acknowledged, or refused for good and counted as
        dropped); False when it should be retried."""
        headers = dict(self.base_headers)
        headers["ce-id"] = event["id"]
        headers["ce-type"] = event["type"]
        headers["ce-time"] = event["time"]
        outcome, answer = self._send(event["data"], headers, 1)
        if outcome is None:
            # the sink refuses this event for good: retrying would block every later one
            log.error("log sink refused event %s (%s); dropped", event["id"], answer)
            self.dropped += 1
            self._dropped.inc()
            return True
        return outcome

    def _send(self, content, headers: dict, events: int) -> tuple[bool | None, str]:
        """One POST of ``events`` events to the sink, and the sink's answer (``status: text``): True when
        acknowledged (counted as sent), None when refused for good (a 4xx other than 408/429), False when it
        should be retried (after the spool's back-off)."""
        try:
            resp = self._client.post(self.url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("log sink %s unreachable (%s); kept in %s", self.url, type(exc).__name__, self.wal_dir)
            resp = None
        answer = f"{resp.status_code}: {resp.text[:200]}" if resp is not None else "unreachable"
        if resp is not None and 200 <= resp.status_code < 300:
            self.sent += events
            self._sent.inc(events)
            return True, answer
        if resp is not None and 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            return None, answer
        if resp is not None:
            log.warning("log sink answered %s", answer)
        return False, answer
