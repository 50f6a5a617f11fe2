"""The gateway's hold: where nginx sends a prediction that no model server of its role could answer.

nginx tries a prediction on every replica of the role it routes it to (``proxy_next_upstream``: a refused,
reset or 502/503 answer moves it on to the next replica); when every replica failed it (all of them killed,
or the only one restarting), the last server of the role's upstream is this service (an nginx ``backup``
server), with the replicas' ports in the ``x-kfrelease-backends`` header. It holds the request and sends it
again to those ports, with a back-off from 0.05 s to 0.5 s, until one answers, for at most
``KFRELEASE_GATEWAY_HOLD_SECONDS`` (default 30 s, ``kfrelease.config``), then answers 503 naming the deadline.
A prediction is idempotent (the same request and version give the same answer; the log sink keeps one
event per request id), so sending it again is safe.

The hold is what KServe gets from the Knative activator, which queues a revision's requests while it has no
ready pod: the stack's watchdog restarts a killed model server from its warm spare in a second or two
(``kfrelease.stack.watchdog``), and the held requests are answered by the restarted server. 30 s covers a
restart without the spare (a fresh KServe process takes 5-20 s on two busy cores) and stays well under a
client's usual 60 s timeout.

Run as ``python -m kfrelease.stack.hold --port P``; ``GET /healthz`` answers ``{"status": "ok", "held": N,
"answered": N, "expired": N}``. Only ``/v1/models/...`` and ``/v2/models/...`` calls are held, to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tenacity import AsyncRetrying, RetryError, retry_if_result, stop_after_delay, wait_exponential

from kfrelease.config import Settings, setting

log = logging.getLogger(__name__)

BACKENDS_HEADER = "x-kfrelease-backends"
#: Headers of the held request that are the connection's, not the request's (RFC 9110 7.6.1), and ours.
_NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}
_NOT_FORWARDED.add(BACKENDS_HEADER)
#: Answers of a model server that mean "not this one, not now": sent again until the deadline.
_UNAVAILABLE = {502, 503, 504}


def hold_seconds() -> float:
    return float(setting("KFRELEASE_GATEWAY_HOLD_SECONDS"))


def backends_of(header: str | None) -> list[int]:
    """The ports of ``x-kfrelease-backends`` (``"8100 8103"``); an unreadable header is no port."""
    ports = []
    for part in (header or "").replace(",", " ").split():
        if part.isdigit() and 0 < int(part) < 65536:
            ports.append(int(part))
    return ports


def create_app(deadline_seconds: float | None = None) -> Starlette:
    counts = {"held": 0, "answered": 0, "expired": 0}
    client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=256, max_keepalive_connections=32))

    async def forward(port: int, request: Request, body: bytes, headers: dict, left: float):
        url = f"http://127.0.0.1:{port}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        try:
            return await client.request(
                request.method, url, content=body, headers=headers, timeout=httpx.Timeout(max(left, 0.1), connect=1.0)
            )
        except httpx.TransportError as exc:
            return f"127.0.0.1:{port}: {type(exc).__name__}"

    async def held(request: Request) -> Response:
        seconds = hold_seconds() if deadline_seconds is None else deadline_seconds
        ports = backends_of(request.headers.get(BACKENDS_HEADER))
        if not ports or not request.url.path.startswith(("/v1/models/", "/v2/models/")):
            return JSONResponse({"error": "the gateway's hold takes model calls from the gateway only"}, 400)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        counts["held"] += 1
        started = time.monotonic()
        last: list[str] = []

        async def one_round():
            for port in ports:
                answer = await forward(port, request, body, headers, seconds - (time.monotonic() - started))
                if isinstance(answer, str):
                    last[:] = [answer]
                elif answer.status_code in _UNAVAILABLE:
                    last[:] = [f"127.0.0.1:{port}: HTTP {answer.status_code}"]
                else:
                    return answer
            return None

        rounds = AsyncRetrying(
            stop=stop_after_delay(seconds),
            wait=wait_exponential(multiplier=0.05, exp_base=1.5, max=0.5),
            retry=retry_if_result(lambda answer: answer is None),
        )
        try:
            answer = await rounds(one_round)
        except RetryError:
            counts["expired"] += 1
            log.warning("held %s for %.0f s: no model server answered (%s)", request.url.path, seconds, last[0])
            return JSONResponse(
                {
                    "error": f"no model server answered {request.url.path} within {seconds:g} s "
                    f"(KFRELEASE_GATEWAY_HOLD_SECONDS; last: {last[0] if last else 'none tried'}); "
                    "check `kfrelease serve status`"
                },
                503,
            )
        counts["answered"] += 1
        log.info("held %s for %.2f s until a model server answered", request.url.path, time.monotonic() - started)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED | {"content-encoding"}}
        return Response(answer.content, answer.status_code, headers=kept)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", **counts})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/{path:path}", held, methods=["GET", "POST", "PUT", "HEAD"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m kfrelease.stack.hold", description="The gateway's hold.")
    p.add_argument("--port", type=int, default=None, help="default: the stack's gateway-hold port")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings.from_env()
    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=args.port or settings.port("gateway-hold"),
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
