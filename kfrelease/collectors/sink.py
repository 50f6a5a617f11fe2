"""The log sink: receives KServe InferenceLogger CloudEvents and writes them to ``inference-logs``.

``POST /`` takes (parsed by the ``cloudevents`` SDK, ``parse_events``) one event in CloudEvents binary mode (``ce-*`` headers, JSON body: what KServe's logger
and ``kfrelease.serving.logger`` send), structured mode (``application/cloudevents+json``) or a batch
(``application/cloudevents-batch+json``, a JSON array of structured events: what
``kfrelease.serving.logger`` sends when more than one event is queued). Each event becomes one JSON line
(fields in docs/CONTRACTS.md, "Prediction logs").

A batch is all or nothing: its events are appended (and fsync'ed) together and acknowledged with one 200
``{"written": n, "duplicates": d}``; if any event of it is not a valid inference CloudEvent the answer is a
400 JSON error naming that event's index, and none of the batch is written (the sender can tell nothing
apart from a retry; ``kfrelease.serving.logger`` then sends that batch's events one at a time, so only the
invalid ones are refused). An empty batch writes nothing and is a 200.

Acknowledged means durable: an event is appended to the local write-ahead file (``services/logsink/wal/``,
a ``kfrelease.lake.spool.Spool``) and fsync'ed before the 200 goes out (concurrent requests share one
fsync). A background uploader turns each closed segment into Parquet batches
``inference-logs/model=<m>/date=<YYYY-MM-DD>/hour=<HH>/<uuid>.parquet`` (``kfrelease.lake``: one per model
and hour, the uuid derived from the segment, written with ``If-None-Match`` so a retried upload never
doubles a batch) and deletes the segment only once every object of it is stored. While the object store is
down, segments pile up locally and are flushed, oldest first, when it is back (the spool's back-off).
Closed hours with many small batches are compacted into one (``kfrelease.lake.write.compact_partition``).

Who may log what (a cluster): the sink is started with ``--writer <principal>=<model>:<stage>,...`` per predictor
identity (``kfrelease.k8s.render.mesh.logsink_writer_args``: one service account per InferenceService, so per model
and stage: a model's production identity logs that model's ``production`` and ``canary``, its shadow's that model's
``staging``). An event is only its attributes (kserve/kserve@v0.20.0 ``pkg/logger/worker.go`` sets id, source and the
extensions ``inferenceservicename``, ``namespace``, ``component``, ``endpoint``; nothing signs them), so who sent it
is the caller's mesh identity, read from the ``x-forwarded-client-cert`` header the sink's own sidecar sets
(``kfrelease.collectors.peer.peer_principal``). A request whose peer is not a declared writer, or that holds an event
of another model or of a stage its peer does not log, is answered 403 with a JSON error naming it, and none of it is
written: a shadow cannot log "production's" answers to the mirrored request ids, nor any event of another model.
With no writer declared (the embedded stack: no mesh, one user) every event is taken.

Duplicates: an event is identified by its server (CloudEvents ``source``, InferenceService, endpoint), its
``id`` and its type (``event_key``: the primary, the shadow and the canary answer the same request id, and
every KServe agent sends the same default source); a repeated event is acknowledged and dropped. The sink remembers the last ``dedup_window`` keys (and every key still in its
WAL across restarts); readers drop any older duplicate too.

"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from cloudevents.exceptions import GenericException as CloudEventError
from cloudevents.http import CloudEvent, from_dict, from_http
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest

from kfrelease.collectors.peer import XFCC_HEADER, peer_principal
from kfrelease.config import LOG_FORMAT, Settings
from kfrelease.errors import KfreleaseError
from kfrelease.lake.schema import parse_time
from kfrelease.lake.spool import Spool
from kfrelease.lake.write import closed_partitions, compact_partition, put_batch, segment_objects
from kfrelease.storage import store_for

log = logging.getLogger(__name__)

BUCKET = "inference-logs"
TYPES = {
    "org.kubeflow.serving.inference.request": "request",
    "org.kubeflow.serving.inference.response": "response",
}

EVENTS = Counter(
    "kfrelease_logsink_events",
    "CloudEvents received, by result (written, duplicate, invalid, refused: not the sender's stage).",
    ["result"],
)
UPLOADED = Counter("kfrelease_logsink_uploaded_events", "Events written to the object store.")
PENDING = Gauge(
    "kfrelease_logsink_pending_events",
    "Events acknowledged but not yet in the object store.",
)
STORE_UP = Gauge(
    "kfrelease_logsink_store_up",
    "1 when the last upload to the object store succeeded.",
)


class InvalidEvent(KfreleaseError):
    """A request that is not an inference CloudEvent; answered with 400."""


class ForeignEvent(KfreleaseError):
    """An event its sender's mesh identity may not log (another stage's); answered with 403."""


#: What a declared writer may log: the model its events must name and the stages of it.
WriterScope = tuple[str, frozenset[str]]


def parse_writer(text: str) -> tuple[str, WriterScope]:
    """``<principal>=<model>:<stage>[,<stage>]`` (``--writer``) -> (principal, (model, stages))."""
    who, _, what = text.partition("=")
    model, _, stages = what.rpartition(":")
    wanted = frozenset(s.strip() for s in stages.split(",") if s.strip())
    if not who or not model or not wanted or not wanted <= {"production", "canary", "staging"}:
        raise ValueError(
            f"--writer {text!r}: expected <principal>=<model>:<stage>[,<stage>] with stages of production, canary, "
            "staging"
        )
    return who, (model, wanted)


def parse_writers(texts: list[str]) -> dict[str, WriterScope]:
    """Every ``--writer``; a principal declared twice is a ValueError (one identity logs one model)."""
    out: dict[str, WriterScope] = {}
    for text in texts:
        who, writer = parse_writer(text)
        if who in out:
            raise ValueError(f"--writer {who} is declared twice: one predictor identity logs one model")
        out[who] = writer
    return out


def check_writer(writers: dict[str, WriterScope], peer: str | None, lines: list[dict]) -> None:
    """ForeignEvent unless ``peer`` (the caller's mesh principal) is a declared writer of every line's model and
    stage; no ``writers`` (the embedded stack) takes every line."""
    if not writers:
        return
    writer = writers.get(peer or "")
    if writer is None:
        raise ForeignEvent(
            f"{peer or 'a caller without a mesh identity'} may not log predictions here: only the predictors' "
            f"service accounts may ({', '.join(sorted(writers))}); nothing was written"
        )
    model, stages = writer
    for i, line in enumerate(lines):
        if line["model"] != model or line["stage"] not in stages:
            raise ForeignEvent(
                f"event {i} (model {line['model']}, {line.get('inferenceservicename') or line['model']} "
                f"{line.get('model_version') or ''}, stage {line['stage']}) is not {peer}'s to log: that identity "
                f"logs {', '.join(sorted(stages))} of model {model} only; nothing of this request was written"
            )


# --- event -> JSON line ----------------------------------------------------------------------------


def _stage(headers: dict, isvc: str) -> str:
    stage = headers.get("ce-stage")
    if stage:
        return stage
    if headers.get("ce-endpoint") == "canary":
        return "canary"
    return "staging" if isvc.endswith(("-staging", "-shadow")) else "production"


def _instances(data, features: list[str] | None) -> tuple[list | None, list[str] | None]:
    """Instances as lists in feature order, from a v1 or v2 request body."""
    if not isinstance(data, dict):
        return None, features
    if isinstance(data.get("instances"), list):
        inst = data["instances"]
        if inst and all(isinstance(i, dict) for i in inst):
            names = features or list(inst[0])
            return [[i.get(f) for f in names] for i in inst], names
        return inst, features
    inputs = data.get("inputs")
    if isinstance(inputs, list) and inputs and all(isinstance(t, dict) for t in inputs):
        if (
            len(inputs) == 1
            and len(inputs[0].get("shape") or []) in (1, 2)
            and inputs[0].get("name") not in (features or [])
        ):
            t = inputs[0]
            shape = t["shape"] if len(t["shape"]) == 2 else [1, t["shape"][0]]
            flat = _flat(t.get("data") or [])
            k = shape[1] or 1
            return [flat[i : i + k] for i in range(0, len(flat), k)], features
        names = [t.get("name") for t in inputs]
        cols = {t.get("name"): _flat(t.get("data") or []) for t in inputs}
        order = features if features and set(features) == set(names) else names
        n = len(cols[order[0]])
        return [[cols[f][i] for f in order] for i in range(n)], order
    return None, features


def _flat(data) -> list:
    out = []
    for v in data:
        out.extend(_flat(v) if isinstance(v, list) else [v])
    return out


def _predictions(data) -> list | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("predictions"), list):
        return data["predictions"]
    outputs = data.get("outputs")
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        return _flat(outputs[0].get("data") or [])
    return None


def _raw(data):
    return data


def parse_events(headers: dict, body: bytes) -> list[CloudEvent]:
    """The CloudEvents of one POST, parsed by the ``cloudevents`` SDK: binary mode (``ce-*`` headers),
    structured mode (``application/cloudevents+json``) or a batch (``application/cloudevents-batch+json``).
    ``headers`` have lower-case names."""
    ctype = headers.get("content-type", "").split(";")[0].strip()
    try:
        if ctype == "application/cloudevents-batch+json":
            docs = orjson.loads(body)
            if not isinstance(docs, list):
                raise InvalidEvent("a CloudEvents batch must be a JSON array of objects; nothing was written")
            events = []
            for i, d in enumerate(docs):
                if not isinstance(d, dict):
                    raise InvalidEvent(f"{_in_batch(i, len(docs))}: not a JSON object")
                try:
                    events.append(from_dict(d))
                except CloudEventError as exc:
                    raise InvalidEvent(f"{_in_batch(i, len(docs))}: not a CloudEvent: {exc}") from None
            return events
        if ctype == "application/cloudevents+json":
            if not isinstance(orjson.loads(body), dict):
                raise InvalidEvent("a structured CloudEvent must be a JSON object")
        else:
            missing = [h for h in ("ce-id", "ce-type", "ce-specversion", "ce-source") if not headers.get(h)]
            if missing:
                raise InvalidEvent(f"not a binary-mode CloudEvent: headers {missing} are missing")
        return [from_http(headers, body, data_unmarshaller=_raw)]
    except CloudEventError as exc:
        raise InvalidEvent(f"not a CloudEvent: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"the CloudEvent is not JSON: {exc}") from None


def _in_batch(index: int, size: int) -> str:
    return f"event {index} of the batch of {size} (none of the batch was written)"


def lines_from_events(events: list[CloudEvent], batch: bool = False) -> list[dict]:
    """The JSON lines of one POST's events; an invalid one refuses them all (``InvalidEvent`` naming its
    index when the POST was a batch)."""
    out = []
    for i, event in enumerate(events):
        try:
            out.append(line_from_event(event))
        except InvalidEvent as exc:
            if not batch:
                raise
            raise InvalidEvent(f"{_in_batch(i, len(events))}: {exc}") from None
    return out


def event_line(headers: dict, body: bytes) -> dict:
    """One binary-mode CloudEvent (lower-case header names) -> the JSON line of docs/CONTRACTS.md."""
    return line_from_event(parse_events(headers, body)[0])


def line_from_event(event: CloudEvent) -> dict:
    """One inference CloudEvent -> the JSON line of docs/CONTRACTS.md."""
    attrs = event.get_attributes()
    headers = {f"ce-{k}": v for k, v in attrs.items() if isinstance(v, str)}
    kind = TYPES.get(headers["ce-type"])
    if kind is None:
        raise InvalidEvent(f"ce-type {headers['ce-type']!r} is not an inference event; expected one of {sorted(TYPES)}")
    data = event.data
    try:
        data = orjson.loads(data) if isinstance(data, (bytes, str)) and data else (data or None)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"the event data is not JSON: {exc}") from None
    isvc = headers.get("ce-inferenceservicename", "")
    features = [f for f in headers.get("ce-features", "").split(",") if f] or None
    # The KServe agent names only the InferenceService, namespace, component and endpoint
    # (kserve/kserve pkg/logger/worker.go); the model is the InferenceService's name without the stage
    # suffix (kfrelease/k8s/render/inference.py production_name / staging_name), so a request (whose body names no model) and
    # its response land in the same partition. ce-model / ce-modelversion / ce-stage / ce-features are
    # kfrelease's own logger's extras: used when present, never required.
    model = headers.get("ce-model") or isvc
    for suffix in ("-staging", "-shadow", "-canary"):
        if not headers.get("ce-model") and model.endswith(suffix):
            model = model[: -len(suffix)]
    if not model and isinstance(data, dict):
        model = str(data.get("model_name") or "")
    if not model or "/" in model or model.startswith("."):
        raise InvalidEvent("the event names no usable model (ce-model or ce-inferenceservicename)")
    when = headers.get("ce-time")
    if when:
        try:
            parse_time(when)
        except ValueError:
            raise InvalidEvent(f"ce-time {when!r} is not an RFC 3339 timestamp") from None
    version = headers.get("ce-modelversion") or (data.get("model_version") if isinstance(data, dict) else None)
    line = {
        "id": headers["ce-id"],
        "type": kind,
        "time": headers.get("ce-time") or dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "source": headers["ce-source"],
        "model": model,
        "model_version": version,
        "stage": _stage(headers, isvc),
        "endpoint": headers.get("ce-endpoint", "default"),
        "component": headers.get("ce-component", "predictor"),
        "inferenceservicename": isvc,
        "namespace": headers.get("ce-namespace", ""),
    }
    if kind == "request":
        try:
            instances, features = _instances(data, features)
        except (KeyError, IndexError, TypeError):
            instances = None
        line["instances"] = instances
        if features:
            line["features"] = features
    else:
        line["predictions"] = _predictions(data)
    if (line.get("instances") if kind == "request" else line.get("predictions")) is None:
        line["data"] = data  # kept as sent; readers skip it
    return line


def event_key(line: dict) -> tuple:
    """What makes an event a duplicate: the same id and type from the same server. Every KServe agent sends
    the same default ``ce-source`` (``http://localhost:9081/``, kserve/kserve cmd/agent/main.go), so the
    InferenceService and endpoint are part of the server's identity (the primary, the shadow and the
    canary answer the same request id)."""
    return (
        line["source"],
        line.get("inferenceservicename") or "",
        line.get("endpoint") or "",
        line["id"],
        line["type"],
    )


# --- write-ahead file and uploader -------------------------------------------------------------------


class Uploader(threading.Thread):
    """Moves closed write-ahead segments of a ``BatchWriter`` into its bucket (the spool's back-off between
    failed tries)."""

    def __init__(self, writer: BatchWriter, interval: float):
        super().__init__(name=f"{writer.bucket}-uploader", daemon=True)
        self.writer = writer
        self.interval = interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        last_compaction = time.monotonic()
        while not self.stop_event.wait(min(self.interval, 0.5)):
            if self.flush_once() and time.monotonic() - last_compaction >= self.writer.compact_interval:
                last_compaction = time.monotonic()
                self.compact()

    def compact(self) -> int:
        """Merge the small batches of closed hours (only where this role may list: the sink's bucket)."""
        w = self.writer
        if not w.compact_interval:
            return 0
        done = 0
        try:
            for path in closed_partitions(w.store, w.bucket):
                done += compact_partition(w.store, w.bucket, path) is not None
        except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; the batches stay readable
            log.warning("compaction of %s failed (%s); retried later", w.bucket, exc)
        return done

    def flush_once(self, force: bool = False) -> bool:
        """Rotate the open segment if due and upload every closed one (``force``: now, whatever the
        back-off); True if nothing is left."""
        w = self.writer
        spool = w.spool
        if not (force or spool.backoff.ready()):
            return False
        if force or spool.age() >= self.interval or spool.open_lines >= w.max_segment_events:
            spool.rotate()
        ok = spool.drain(self._upload)
        w.store_up(ok)
        return ok

    def _upload(self, segment: Path, lines: list[bytes]) -> int:
        """One segment's objects, each created once (a retried upload finds the same key with the same rows)."""
        objects = segment_objects(segment, self.writer.bucket)
        for key, (data, _) in objects.items():
            put_batch(self.writer.store, self.writer.bucket, key, data)
        if self.writer.bucket == BUCKET:
            UPLOADED.inc(sum(count for _, count in objects.values()))
        return len(lines)


class BatchWriter:
    """Durable batches for one bucket: ``append`` returns once the lines are fsync'ed in the local WAL
    (group commit); the uploader turns each closed segment into Parquet batches
    ``<bucket>/model=<m>/date=<d>/hour=<h>/<uuid>.parquet`` (``kfrelease.lake``)."""

    def __init__(
        self,
        store,
        bucket: str,
        wal_dir: Path,
        flush_interval: float = 2.0,
        max_segment_events: int = 20_000,
        compact_interval: float = 0.0,
    ):
        self.store = store
        self.bucket = bucket
        self.compact_interval = compact_interval  # seconds between compactions; 0: never
        self.spool = Spool(wal_dir, sync=True)
        self.max_segment_events = max_segment_events
        self.last_store_ok = True
        self._buffer: list[tuple[bytes, int, asyncio.Future]] = []
        self._flushing = False
        self.uploader = Uploader(self, flush_interval)

    @property
    def pending(self) -> int:
        """Lines acknowledged but not yet in the object store."""
        return self.spool.pending

    def existing_lines(self) -> Iterator[dict]:
        """Lines still in the write-ahead file from an earlier run (not yet uploaded)."""
        for raw in self.spool.lines():
            try:
                yield orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue

    def store_up(self, ok: bool) -> None:
        self.last_store_ok = ok
        if self.bucket == BUCKET:
            STORE_UP.set(1 if ok else 0)
            PENDING.set(self.pending)

    async def append(self, lines: list[bytes]) -> None:
        # Group commit: whoever arrives while an fsync runs waits for the next one, shared by all.
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._buffer.append((b"".join(lines), len(lines), fut))
        if not self._flushing:
            self._flushing = True
            loop.create_task(self._flush_buffer())
        await fut

    async def _flush_buffer(self) -> None:
        try:
            while self._buffer:
                batch, self._buffer = self._buffer, []
                try:
                    await asyncio.to_thread(self.spool.append, [b for b, _, _ in batch])
                except Exception as exc:  # noqa: BLE001
                    for _, _, f in batch:
                        f.set_exception(exc)
                else:
                    if self.bucket == BUCKET:
                        PENDING.set(self.pending)
                    for _, _, f in batch:
                        f.set_result(None)
        finally:
            self._flushing = False

    def start(self) -> None:
        self.uploader.start()

    def stop(self) -> None:
        """Stop the uploader and try one last upload; what fails stays in the WAL for the next start."""
        self.uploader.stop_event.set()
        if self.uploader.is_alive():
            self.uploader.join(15)
        self.spool.rotate()
        try:
            self.uploader.flush_once(force=True)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "last upload before stopping failed (%s); the WAL keeps the events for the next start",
                exc,
            )


# --- the service ---------------------------------------------------------------------------------


class LogSink:
    def __init__(
        self,
        settings: Settings,
        wal_dir: Path | None = None,
        store=None,
        flush_interval: float = 2.0,
        dedup_window: int = 500_000,
        max_segment_events: int = 20_000,
        compact_interval: float = 300.0,
        writers: dict[str, WriterScope] | None = None,
    ):
        self.settings = settings
        #: mesh principal -> the model and stages it may log (``check_writer``); empty: every event is taken
        self.writers = dict(writers or {})
        self.writer = BatchWriter(
            store or store_for("serving", settings),
            BUCKET,
            wal_dir or settings.service_dir("logsink") / "wal",
            flush_interval,
            max_segment_events,
            compact_interval,
        )
        self.dedup_window = dedup_window
        self.seen: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        for line in self.writer.existing_lines():  # not yet uploaded: remember their keys
            if {"source", "id", "type"} <= set(line):
                self._remember(event_key(line))

    @property
    def pending(self) -> int:
        return self.writer.pending

    def _remember(self, key: tuple) -> None:
        self.seen[key] = None
        if len(self.seen) > self.dedup_window:
            self.seen.popitem(last=False)

    async def accept(self, lines: list[dict]) -> dict:
        """Dedup, append durably, then return (the caller acknowledges)."""
        fresh, keys = [], []
        for line in lines:
            key = event_key(line)
            if key in self.seen:
                EVENTS.labels("duplicate").inc()
                continue
            self._remember(key)
            keys.append(key)
            fresh.append(orjson.dumps(line) + b"\n")
        if fresh:
            try:
                await self.writer.append(fresh)
            except Exception:
                for key in keys:  # not durable: let a retry through
                    self.seen.pop(key, None)
                raise
            EVENTS.labels("written").inc(len(fresh))
        return {"written": len(fresh), "duplicates": len(lines) - len(fresh)}


def create_app(sink: LogSink):
    from starlette.applications import Starlette  # heavy: starlette
    from starlette.requests import Request  # heavy: starlette
    from starlette.responses import JSONResponse, Response  # heavy: starlette
    from starlette.routing import Route  # heavy: starlette

    max_body = 8 * 1024 * 1024

    async def receive(request: Request):
        body = await request.body()
        if len(body) > max_body:
            return JSONResponse(
                {"error": f"event body is {len(body)} bytes; the limit is {max_body}"},
                413,
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        batch = headers.get("content-type", "").split(";")[0].strip() == "application/cloudevents-batch+json"
        try:
            lines = lines_from_events(parse_events(headers, body), batch)
        except InvalidEvent as exc:
            EVENTS.labels("invalid").inc()
            return JSONResponse({"error": str(exc)}, 400)
        try:
            check_writer(sink.writers, peer_principal(headers.get(XFCC_HEADER)), lines)
        except ForeignEvent as exc:
            EVENTS.labels("refused").inc(len(lines))
            log.warning("refused: %s", exc)
            return JSONResponse({"error": str(exc)}, 403)
        try:
            result = await sink.accept(lines)
        except OSError as exc:
            log.error("write-ahead file not writable: %s", exc)
            return JSONResponse({"error": f"the sink could not store the event durably: {exc}"}, 503)
        return JSONResponse(result, 200)

    async def health(_request):
        return JSONResponse({"ok": True, "pending": sink.pending})

    async def metrics(_request):
        return Response(generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})

    return Starlette(
        routes=[
            Route("/", receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    import uvicorn  # heavy: uvicorn

    p = argparse.ArgumentParser(prog="python -m kfrelease.collectors.sink", description="Prediction-log sink.")
    p.add_argument("--port", type=int, default=None, help="default: the stack's logsink port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--flush-interval",
        type=float,
        default=2.0,
        help="seconds between uploads of the WAL",
    )
    p.add_argument(
        "--writer",
        action="append",
        default=[],
        metavar="PRINCIPAL=MODEL:STAGES",
        help="a mesh principal that may log these stages of this model (repeat; none: every event is taken)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    try:
        writers = parse_writers(args.writer)
    except ValueError as exc:
        p.error(str(exc))
    sink = LogSink(settings, flush_interval=args.flush_interval, writers=writers)
    sink.writer.start()
    try:
        uvicorn.run(
            create_app(sink),
            host=args.host,
            port=args.port or settings.port("logsink"),
            log_level="warning",
            access_log=False,
        )
    finally:
        sink.writer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
