"""The paths of the predictor that go around KServe's own request handling, pinned to KServe 0.21.0.

KServe's ``ModelServer`` owns HTTP, the protocols and ``/metrics``; three things here reach past it, each
because KServe offers no extension point for it, each written against KServe 0.21.0's source
(``kserve/model_server.py``, ``kserve/protocol/rest/server.py``, ``v1_endpoints.py``, ``v2_endpoints.py``)
and refused on any other version (``check_kserve_version``; ``tests/serving/test_fastlane.py`` fails when
the installed KServe is not the pinned one):

- ``run_model_server``: KServe's ``RESTServer`` binds 0.0.0.0 and adds ``timing_asgi``'s middleware (it times
  every request only to log it to ``kserve.trace``, about 15 % of a request's CPU); the server here binds the
  given host and leaves that middleware out, calling ``ModelServer``'s model registration itself. Its HTTP
  protocol (uvicorn's ``HttpToolsProtocol``, ``whole_responses``) sends a response's head and body in one
  write: uvicorn writes them in two, and a server killed between the two left nginx a head without a body,
  which it cannot send to another replica (the client got a cut response); killed before the one write, the
  request simply failed on this server and nginx sends it on.
- ``RequestGuard`` (ASGI middleware): bodies over the limit get 413 before anything parses them, and the
  answers KServe gives a body it cannot decode (FastAPI's 422 ``detail``, a plain Python error's 500, vague
  400s) are replaced by a 400 whose ``error`` says what is wrong (``decode.diagnose_v2_body``).
- ``FastLane``: a *valid* JSON v1/v2 request for a served model is answered straight from the model's
  ``predict`` (the same checks, metrics, logging and headers), skipping FastAPI's routing and pydantic
  models: about half of a request's CPU. Anything else returns None and takes KServe's route. The lane sits
  in front of the whole application (``FastLaneFront``, uvicorn's loaded app): a valid prediction also skips
  uvicorn's proxy-headers middleware, FastAPI's body-limit and telemetry middleware and Starlette's error
  middleware, which together cost about as much as the lane itself (py-spy, docs/serving.md).
  ``tests/serving/test_fastlane.py`` sends the same 1,000 fuzzed requests to a server with the lane and one
  without it and requires the same status and body for every one.
"""

from __future__ import annotations

import json
import logging
import warnings
from importlib import metadata

import orjson

from kfrelease.errors import KfreleaseError
from kfrelease.serving.decode import (
    Decoded,
    InvalidRequest,
    diagnose_v2_body,
    new_request_id,
    request_id_from,
    rows_from_v1,
    rows_from_v2,
)
from kfrelease.serving.metrics import FAST_LANE

log = logging.getLogger(__name__)

#: The KServe release the paths of this module were written against and tested with.
KSERVE_VERSION = "0.21.0"
#: Largest request body accepted (bytes); larger ones get 413 before any parsing.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class KserveVersionError(KfreleaseError):
    """The installed KServe is not the release this module's paths were written against."""


def check_kserve_version(installed: str | None = None) -> None:
    """Refuse to run the paths of this module on a KServe other than ``KSERVE_VERSION``."""
    installed = installed or metadata.version("kserve")
    if installed != KSERVE_VERSION:
        raise KserveVersionError(
            f"kfrelease.serving.fastlane was written against kserve {KSERVE_VERSION}, but kserve {installed} is "
            f"installed; install kserve=={KSERVE_VERSION} (constraints.txt), or re-read KServe's model_server.py "
            f"and rest/ endpoints of {installed}, update this module and its differential test, then KSERVE_VERSION"
        )


class _OneWritePerTurn:
    """An asyncio transport whose writes of one event-loop turn leave in one ``write``: a response's head and
    body (uvicorn writes them one after the other, with no wait between) reach the socket together or not at
    all. Everything else is the wrapped transport's."""

    def __init__(self, transport, loop):
        self._transport, self._loop, self._parts = transport, loop, []

    def write(self, data) -> None:
        if not self._parts:
            self._loop.call_soon(self._flush)
        self._parts.append(bytes(data))

    def _flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._parts.clear()
        self._transport.abort()

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


def whole_responses():
    """uvicorn's httptools protocol (uvicorn 0.54 ``protocols/http/httptools_impl.py``) with a transport that
    sends a response in one write (``_OneWritePerTurn``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class WholeResponses(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(_OneWritePerTurn(transport, self.loop))

    return WholeResponses


def run_model_server(
    models: list,
    http_port: int,
    host: str = "127.0.0.1",
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    fast_lane=None,
    middleware: tuple = (),
    on_start=None,
) -> None:
    """KServe's ModelServer (REST only, one worker) for ``models`` (possibly none yet) on ``host:http_port``.
    ``middleware`` are (class, kwargs) pairs added outside the request guard; ``on_start(server)`` runs
    once the server object exists (the multi-model host keeps it to load and unload models)."""
    check_kserve_version()
    # heavy: kserve (FastAPI, uvicorn, grpc) and uvloop load only in a model server's process
    import uvloop  # kserve requires uvicorn[standard], which installs uvloop
    from kserve import ModelServer
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer

    class LeanRESTServer(RESTServer):
        # kserve adds timing_asgi's TimingMiddleware, which measures wall and CPU time of every request only
        # to log it to kserve.trace (off here): about 15 % of a request's CPU. Our own histogram
        # (kfrelease_predictor_request_seconds) and kserve's PREDICT_HIST_TIME keep the latency metrics.
        def _add_middlewares(self, app):
            return None

    class LocalModelServer(ModelServer):
        # kserve's RESTServer binds 0.0.0.0; this binds ``host`` (127.0.0.1 on the embedded stack).
        def start(self, models):
            if models:
                self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = LeanRESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            config = self._rest_server.config
            config.host = host
            config.http = whole_responses()  # before load(): it picks the protocol class
            if fast_lane is not None:
                # the lane goes in front of everything (uvicorn's proxy headers, FastAPI's and Starlette's
                # middleware, the router): a valid prediction pays for none of them. kserve's RESTServer
                # registers its routes on the same app object later (create_application); the loaded app is it.
                config.load()
                config.loaded_app = FastLaneFront(config.loaded_app, fast_lane, max_body)
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            # kserve starts its servers inside asyncio.run, so uvicorn's own loop choice never applies; run
            # them on uvloop (installed with uvicorn[standard]) as uvicorn would: cheaper socket I/O.
            uvloop.run(self._serve())

    app.add_middleware(RequestGuard, max_body=max_body)
    for cls, kwargs in middleware:
        app.add_middleware(cls, **kwargs)
    server = LocalModelServer(
        http_port=http_port,
        enable_grpc=False,
        workers=1,
        grace_period=5,
        enable_latency_logging=False,
    )
    if on_start is not None:
        on_start(server)
    # Per-request trace and access lines cost more than the prediction itself; errors are still logged.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server.start(list(models))


class FastLaneFront:
    """The outermost ASGI app: a POST to a predict path with a body of known size within the limit is offered
    to the fast lane first; anything it declines (and everything else) goes to the full application, the
    request guard included, with the body replayed as it came."""

    def __init__(self, app, fast_lane, max_body: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.fast_lane = fast_lane
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith((":predict", "/infer")):
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
                break
        if length is None or not length.isdigit() or int(length) > self.max_body:
            return await self.app(scope, receive, send)  # chunked, odd or too big: the guard decides
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay(chunks, message, receive), send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        answer = await self.fast_lane.answer(scope, body)
        if answer is not None:
            return await RequestGuard._send_answer(send, *answer)
        return await self.app(scope, _replay([body], None, receive), send)


def _replay(chunks: list[bytes], last, receive):
    """A ``receive`` that gives back what was already read (the chunks, then ``last`` if any), then the rest."""
    pending = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if last is not None:
        pending.append(last)
    elif pending:
        pending[-1]["more_body"] = False

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class RequestGuard:
    """ASGI middleware: bodies over ``max_body`` get 413 before anything parses them, and a request that
    kserve's decoders fail on with a plain Python error (ValueError, TypeError, ...) gets 400, not 500."""

    DECODE_ERRORS = (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
        OverflowError,
        RecursionError,
    )

    def __init__(self, app, max_body: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reply(
                        send,
                        413,
                        f"request body is {int(value)} bytes; the limit is {self.max_body}",
                    )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self._reply(
                    send,
                    413,
                    f"request body is over the limit of {self.max_body} bytes",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        started = False
        binary_v2 = any(n == b"inference-header-content-length" for n, _ in scope.get("headers", []))
        held = None

        async def tracking_send(message):
            # kserve's messages for a body that is not JSON / not an inference request are vague; hold each
            # 400 and say what is actually wrong.
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                names = {n for n, _ in message.get("headers", [])}
                if message["status"] == 200 and b"content-type" not in names:
                    # kserve's v2 endpoint sends pre-serialized bytes without a content type or length
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (b"content-type", b"application/json"),
                        ],
                    }
                if message["status"] in (400, 422) or b"content-length" not in names:
                    held = message
                    return
            elif held is not None and held["status"] not in (400, 422) and message["type"] == "http.response.body":
                if not message.get("more_body", False):  # one body: send it with its length, not chunked
                    length = str(len(message.get("body", b""))).encode()
                    held = {
                        **held,
                        "headers": [*held["headers"], (b"content-length", length)],
                    }
                await send(held)
                held = None
            elif held is not None and message["type"] == "http.response.body":
                content = message.get("body", b"")
                try:
                    has_error = isinstance(json.loads(content).get("error"), str)
                except (ValueError, AttributeError):
                    has_error = False
                if not has_error:  # FastAPI's own answers ({"detail": ...}) for bodies it could not parse
                    return await self._reply(send, 400, diagnose_v2_body(body))
                if not binary_v2 and b"inference-header-content-length" in content:
                    return await self._reply(send, 400, diagnose_v2_body(body))
                if b"Unrecognized request format" in content:
                    detail = json.loads(content).get("error", "").split(":", 1)[-1].strip()
                    return await self._reply(send, 400, f"the request body is not valid JSON: {detail}")
                await send(held)
                held = None
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except self.DECODE_ERRORS as exc:
            if started:
                raise
            log.info("request could not be decoded: %s: %s", type(exc).__name__, exc)
            if scope["path"].endswith("/infer") and not binary_v2:
                message = diagnose_v2_body(body)
            else:
                message = f"the request could not be decoded: {type(exc).__name__}: {exc}"
            await self._reply(send, 400, message[:2000])

    @staticmethod
    async def _send_answer(send, content: bytes, headers: dict[str, str]) -> None:
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _Tensor:
    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, name, shape, datatype, data):
        self.name, self.shape, self.datatype, self.data = name, shape, datatype, data


_REQUEST_KEYS = frozenset({"inputs", "id", "parameters"})
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


class _V2Body:
    """The fields of a JSON v2 request that ``rows_from_v2`` reads, or None when anything is unusual."""

    __slots__ = ("id", "inputs")

    def __init__(self, inputs, rid):
        self.inputs, self.id = inputs, rid

    @classmethod
    def parse(cls, doc) -> _V2Body | None:
        if type(doc) is not dict or not doc.keys() <= _REQUEST_KEYS or type(doc.get("inputs")) is not list:
            return None
        rid = doc.get("id")
        if rid is not None and type(rid) is not str:
            return None
        tensors = []
        for t in doc["inputs"]:
            if (
                type(t) is not dict
                or not t.keys() <= _TENSOR_KEYS
                or type(t.get("name")) is not str
                or type(t.get("datatype")) is not str
                or t["datatype"] == "FP16"  # KServe refuses FP16 in JSON (infer_type.py, InferInput)
                or type(t.get("shape")) is not list
                or type(t.get("data")) is not list
                or not _plain_parameters(t.get("parameters"))
            ):
                return None
            tensors.append(_Tensor(t["name"], t["shape"], t["datatype"], t["data"]))
        return cls(tensors, rid)


def _plain_parameters(parameters) -> bool:
    """A tensor's parameters that change nothing here: none, or only a string ``content_type`` (MLServer's
    pandas codec marks a column ``{"content_type": "str"}``)."""
    if parameters is None:
        return True
    return (
        type(parameters) is dict
        and set(parameters) <= {"content_type"}
        and all(type(v) is str for v in parameters.values())
    )


def _json_type(content_type: bytes) -> bool:
    """Whether FastAPI parses a body of this content type as JSON (``fastapi/routing.py``, 0.115+): the v2
    route validates only those as an inference request; any other body reaches KServe as bytes."""
    main, _, sub = content_type.split(b";", 1)[0].strip().lower().partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))


class FastLane:
    """Answers *valid* JSON predict requests for this model straight from the ``RegressionPredictor``
    (its ``predict``, so the same checks, cache, metrics, logging and headers), without FastAPI's routing and
    pydantic models: about half of a request's CPU. Anything else (an invalid, unusual, binary or
    CloudEvent request, another model, metadata, health) returns None and takes kserve's own route, which
    gives the error answers."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.v1_path = f"/v1/models/{predictor.name}:predict"
        self.v2_path = f"/v2/models/{predictor.name}/infer"
        self.answered = FAST_LANE.labels(predictor.name)

    async def answer(self, scope, body: bytes):
        path = scope["path"]
        if path != self.v1_path and path != self.v2_path:
            return None
        p = self.predictor
        if not p.ready:
            return None
        headers = {}
        for name, value in scope.get("headers", []):
            if name in (b"ce-id", b"x-request-id"):
                headers[name.decode()] = value.decode("latin-1")
            elif (
                name == b"inference-header-content-length"
                or name.startswith(b"ce-spec")
                or (name == b"content-type" and b"cloudevents" in value)
                or (name == b"content-type" and path == self.v2_path and not _json_type(value))
            ):
                return None
        try:
            doc = orjson.loads(body)
            if path == self.v1_path:
                protocol, rows, v2_id = (
                    "v1",
                    rows_from_v1(doc, p.model, p.max_instances),
                    None,
                )
            else:
                request = _V2Body.parse(doc)
                if request is None:
                    return None
                protocol, rows, v2_id = (
                    "v2",
                    rows_from_v2(request, p.model, p.max_instances),
                    request.id,
                )
        except (orjson.JSONDecodeError, InvalidRequest):
            return None
        rid = request_id_from(headers) or v2_id or new_request_id()
        self.answered.inc()
        response_headers: dict[str, str] = {}
        result = await p.predict(Decoded(rows, protocol, rid, v2_id), headers, response_headers)
        return (result if isinstance(result, bytes) else orjson.dumps(result)), response_headers
