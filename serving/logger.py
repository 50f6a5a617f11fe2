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

Never failing, never stalling, never losing an answered prediction:
- ``log()`` appends the prediction's two events to the logger's *journal* (``<wal_dir>/journal/<n>.jsonl``,
  one unbuffered ``write``: the page cache keeps it when the model server is killed, no fsync in the request
  path) and to a bounded in-memory queue (``max_buffer`` events), before the answer leaves; a full queue
  drops the new event and counts it (``kfrelease_predictor_log_events_total{result="dropped"}``). A journal
  segment is deleted once every event in it has been acknowledged by the sink or written to the write-ahead
  file; the segments a killed server left are moved into the write-ahead file when a logger starts on the
  same folder, and replayed (the sink drops the events it already has by (id, type)).
- one background thread posts the events, everything queued at once (one fsync in the sink per batch, not
  per event: a sender that waited for each event's fsync kept up with about 500 events/s), after letting
  a batch gather for ``linger`` seconds (0.1: at most ten POSTs a second per logger at any rate; the
  sink's uploads are seconds apart anyway). A batch the
  sink refuses as a whole (4xx: the sink writes none of a batch with an invalid event) is sent again one
  event at a time, so that only the events the sink refuses themselves are dropped.
- When the sink does not answer 2xx, the events and every later
  one go to a local write-ahead file (``<wal_dir>/<n>.jsonl``, capped at ``max_wal_bytes``) and are
  replayed, oldest first, once the sink answers again (exponential back-off up to 5 s). A replay that is
  interrupted re-sends a few events; the sink drops duplicates by (id, type). The WAL survives a restart
  of the predictor: it is replayed on start.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import threading
import time
from pathlib import Path

import httpx
import orjson
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
#: Most bytes of one batched POST (the sink takes up to 8 MiB).
MAX_BATCH_BYTES = 2 * 1024 * 1024

LOG_EVENTS = Counter(
    "kfrelease_predictor_log_events",
    "Prediction-log events by result: sent (acknowledged by the sink), spooled (written to the local "
    "write-ahead file while the sink was unreachable), dropped (lost: queue or WAL full).",
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
        max_buffer: int = 50_000,
        max_wal_bytes: int = 512 * 1024 * 1024,
        timeout: float = 2.0,
        max_batch: int = 500,
        linger: float = 0.1,
    ):
        self.url = url
        self.wal_dir = Path(wal_dir)
        self.model, self.version, self.stage = model, version, stage
        self.max_buffer = max_buffer
        self.max_wal_bytes = max_wal_bytes
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
        self._queue: collections.deque = collections.deque()
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
        # write-ahead file state (only the sender thread touches these)
        self._wal_fh = None
        self._wal_seq = 0
        self._wal_bytes = 0
        self._wal_pending = 0
        self._retry_at = 0.0
        self._backoff = 0.1
        # the journal: what log() has queued, on disk before the answer leaves (see the module docstring)
        self._journal_lock = threading.Lock()
        self._journal_fd: int | None = None
        self._journal_seq = 0
        self._journaled = 0  # predictions queued (and journaled once started) so far
        self._handled = 0  # of those, how many the sender has delivered or spooled (in order)
        self._journal_segments: collections.deque = collections.deque()  # (path, journaled when it was closed)
        self._rotated_at = 0.0

    # --- request path ------------------------------------------------------------------------------
    def log(self, request_id: str, rows, predictions) -> None:
        """Journal and queue the request and response events of one prediction; never raises."""
        try:
            if len(self._queue) >= self.max_buffer:
                self.dropped += 2
                self._dropped.inc(2)
                return
            events = self._events(request_id, _now_iso(), rows, predictions)
            line = b"".join(orjson.dumps(e) + b"\n" for e in events)
            with self._journal_lock:
                if self._journal_fd is not None:
                    os.write(self._journal_fd, line)
                self._journaled += 1
                self._queue.append(events)
            self._wake.set()
        except Exception:
            log.exception("could not queue a prediction-log event")

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.wal_dir.mkdir(parents=True, exist_ok=True)
        existing = self._wal_segments()
        self._wal_seq = (int(existing[-1].stem) + 1) if existing else 0
        for left in self._journal_files():  # a killed server's journal: its events go to the write-ahead file
            left.rename(self.wal_dir / f"{self._wal_seq}.jsonl")
            self._wal_seq += 1
        existing = self._wal_segments()
        self._wal_pending = sum(self._count_lines(p) for p in existing)
        self._wal_bytes = self._disk_bytes()
        self._open_journal()
        self._client = httpx.Client(timeout=self.timeout)
        self._thread = threading.Thread(target=self._run, name="inference-logger", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout``; the rest is kept in the write-ahead file."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 1)
        self._close_segment()
        with self._journal_lock:
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            if self._handled >= self._journaled:  # everything is sent or in the write-ahead file
                for path in self._journal_files():
                    path.unlink(missing_ok=True)
        if self._client is not None:
            self._client.close()

    def backlog(self) -> int:
        return len(self._queue) * 2 + self._wal_pending

    # --- sender thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        deadline = None
        while True:
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + 5.0
                if not self._queue or time.monotonic() > deadline:
                    self._spool_queue()
                    return
            if not self._queue and not (self._wal_pending and time.monotonic() >= self._retry_at):
                idle = 1.0 if not self._wal_pending else min(1.0, self._retry_at - time.monotonic())
                self._wake.wait(timeout=max(0.05, idle))
                self._wake.clear()
            if self._queue and len(self._queue) * 2 < self.max_batch and not self._stop.is_set():
                time.sleep(self.linger)  # let a batch gather: one POST per linger, not per prediction
            try:
                self._rotate_journal()
                if self._wal_pending and time.monotonic() >= self._retry_at:
                    self._replay()
                while self._queue:
                    events, taken = [], 0
                    while self._queue and len(events) < self.max_batch:
                        events += self._queue.popleft()
                        taken += 1
                    if self._wal_pending or time.monotonic() < self._retry_at:
                        done = 0
                    else:
                        done = self._deliver(events)
                    for event in events[done:]:
                        self._spool(event)
                    self._handled += taken
                    if self._wal_pending and time.monotonic() >= self._retry_at:
                        break  # the sink may be back: replay before sending newer events
                self._trim_journal()
            except Exception:
                log.exception("prediction-log sender error")
                time.sleep(0.1)
            self._backlog.set(self.backlog())

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
        should be retried (after the back-off, which doubles up to 5 s)."""
        try:
            resp = self._client.post(self.url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("log sink %s unreachable (%s); spooling to %s", self.url, type(exc).__name__, self.wal_dir)
            resp = None
        answer = f"{resp.status_code}: {resp.text[:200]}" if resp is not None else "unreachable"
        if resp is not None and 200 <= resp.status_code < 300:
            self.sent += events
            self._sent.inc(events)
            self._backoff = 0.1
            return True, answer
        if resp is not None and 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
            return None, answer
        if resp is not None:
            log.warning("log sink answered %s", answer)
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)
        return False, answer

    # --- journal ---------------------------------------------------------------------------------------
    def _journal_dir(self) -> Path:
        return self.wal_dir / "journal"

    def _journal_files(self) -> list[Path]:
        return sorted(self._journal_dir().glob("*.jsonl"), key=lambda p: int(p.stem))

    def _open_journal(self) -> None:
        self._journal_dir().mkdir(parents=True, exist_ok=True)
        path = self._journal_dir() / f"{self._journal_seq}.jsonl"
        self._journal_seq += 1
        self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._journal_path = path

    def _rotate_journal(self) -> None:
        """Start a new journal segment (at most twice a second); the closed one is deleted once the sender
        has handled every prediction journaled up to now."""
        if self._journal_fd is None or time.monotonic() - self._rotated_at < 0.5:
            return
        with self._journal_lock:
            if self._journaled == (self._journal_segments[-1][1] if self._journal_segments else 0):
                return  # nothing journaled since the last rotation
            os.close(self._journal_fd)
            self._journal_segments.append((self._journal_path, self._journaled))
            self._open_journal()
        self._rotated_at = time.monotonic()

    def _trim_journal(self) -> None:
        if self._journal_segments and self._wal_fh is not None:
            self._wal_fh.flush()  # spooled events must be in the write-ahead file before their journal goes
        while self._journal_segments and self._handled >= self._journal_segments[0][1]:
            self._journal_segments.popleft()[0].unlink(missing_ok=True)

    # --- write-ahead file ------------------------------------------------------------------------------
    def _wal_segments(self) -> list[Path]:
        return sorted(self.wal_dir.glob("*.jsonl"), key=lambda p: int(p.stem))

    @staticmethod
    def _count_lines(path: Path) -> int:
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())

    def _spool(self, event: dict) -> None:
        line = orjson.dumps(event) + b"\n"
        if self._wal_bytes + len(line) > self.max_wal_bytes:
            self.dropped += 1
            self._dropped.inc()
            return
        if self._wal_fh is None:
            self._wal_fh = open(self.wal_dir / f"{self._wal_seq}.jsonl", "ab")  # noqa: SIM115 - kept open, closed on rotation
            self._wal_seq += 1
        self._wal_fh.write(line)
        self._wal_bytes += len(line)
        self._wal_pending += 1
        self.spooled += 1
        self._spooled.inc()
        if self._wal_pending % 64 == 0:
            self._wal_fh.flush()

    def _spool_queue(self) -> None:
        while self._queue:
            for event in self._queue.popleft():
                self._spool(event)
            self._handled += 1

    def _close_segment(self) -> None:
        if self._wal_fh is not None:
            self._wal_fh.flush()
            os.fsync(self._wal_fh.fileno())
            self._wal_fh.close()
            self._wal_fh = None

    def _replay(self) -> None:
        """Send spooled events oldest first; a segment is deleted once every event in it is acknowledged."""
        self._close_segment()  # new events go to a new segment while this one is replayed
        for segment in self._wal_segments():
            with open(segment, "rb") as fh:
                lines = [line for line in fh if line.strip()]
            events = []
            for line in lines:
                try:
                    events.append(orjson.loads(line))
                except orjson.JSONDecodeError:  # a torn last line after a crash
                    self._wal_pending -= 1
            for start in range(0, len(events), self.max_batch):
                chunk = events[start : start + self.max_batch]
                done = self._deliver(chunk)
                self._wal_pending -= done
                if done < len(chunk):
                    # keep the unsent rest (the sent part may be re-sent later: the sink dedups)
                    self._rewrite(segment, [orjson.dumps(e) + b"\n" for e in events[start + done :]])
                    self._wal_bytes = self._disk_bytes()
                    return
            segment.unlink()
        self._wal_bytes = self._disk_bytes()
        self._wal_pending = max(self._wal_pending, 0)

    def _disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._wal_segments())

    @staticmethod
    def _rewrite(segment: Path, lines: list[bytes]) -> None:
        tmp = segment.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.writelines(lines)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, segment)
