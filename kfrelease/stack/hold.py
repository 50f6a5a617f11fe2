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

**A call the gateway's config does not route** (an unknown model, or one whose release withdrew it) comes
here too, with the generation of the worker's config in ``x-kfrelease-unrouted``: nginx's reload is not atomic
across workers. The master starts the new workers, sleeps 100 ms "to allow new processes to start", and only then
tells the old ones to stop accepting (``ngx_master_process_cycle``, nginx src/os/unix/ngx_process_cycle.c), so a
client that saw a new model answer (a new worker) may send its next call to an old worker, whose config has no
route for it. The hold asks the gateway again with the generation installed (``x-kfrelease-resolve``, read from
the gateway's ``nginx.conf``): a worker of that generation routes the call or gives the answer its config has
for it (the 404 naming the models served, the withdrawn model's 503); a worker of another generation answers 421
and the hold asks again, with the same back-off and deadline. An unknown model gets its 404 a few milliseconds
later, never a wrong one.

Run as ``python -m kfrelease.stack.hold --port P --gateway-port G --gateway-config PATH``; ``GET /healthz``
answers ``{"status": "ok", "held": N, "answered": N, "expired": N, "asked_again": N}``. Only ``/v1/models/...``
and ``/v2/models/...`` calls are held, to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tenacity import AsyncRetrying, RetryError, retry_if_result, stop_after_delay, wait_exponential

from kfrelease import httpcalls
from kfrelease.config import LOG_FORMAT, Settings, setting
from kfrelease.stack.gateway import READ_TIMEOUT, GatewayError, config_generation, gateway_dir

log = logging.getLogger(__name__)

BACKENDS_HEADER = "x-kfrelease-backends"
#: Set by nginx on a call its config does not route: the generation of that config.
UNROUTED_HEADER = "x-kfrelease-unrouted"
#: Set by the hold when it asks the gateway again: the generation installed; only a worker running it answers.
RESOLVE_HEADER = "x-kfrelease-resolve"
#: What a worker of another generation answers to a call asked again (``templates/gateway.nginx.j2``).
STALE_WORKER = 421
#: Headers of the held request that are the connection's, not the request's (RFC 9110 7.6.1), and ours.
_NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}
_NOT_FORWARDED |= {BACKENDS_HEADER, UNROUTED_HEADER, RESOLVE_HEADER}
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


def installed_generation(config: Path | None) -> str:
    """The generation of the gateway config installed (``nginx.conf``), ``"none"`` when there is none."""
    try:
        return config_generation(config.read_text()) if config else "none"
    except (OSError, GatewayError):
        return "none"


def create_app(
    deadline_seconds: float | None = None, gateway_port: int | None = None, gateway_config: Path | None = None
) -> Starlette:
    """``gateway_port``, ``gateway_config``: where to ask a call the gateway did not route again (none: such a
    call gets a 400)."""
    counts = {"held": 0, "answered": 0, "expired": 0, "asked_again": 0}
    client = httpcalls.async_client(
        timeout=None, limits=httpx.Limits(max_connections=256, max_keepalive_connections=32)
    )

    async def forward(port: int, request: Request, body: bytes, headers: dict, left: float):
        url = f"http://127.0.0.1:{port}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        try:
            return await client.request(
                request.method, url, content=body, headers=headers, timeout=httpx.Timeout(max(left, 0.1), connect=1.0)
            )
        except httpx.TransportError as exc:
            return f"127.0.0.1:{port}: {type(exc).__name__}"

    def answer_of(response: httpx.Response) -> Response:
        kept = {k: v for k, v in response.headers.items() if k.lower() not in _NOT_FORWARDED | {"content-encoding"}}
        return Response(response.content, response.status_code, headers=kept)

    async def ask_again(request: Request, seconds: float) -> Response:
        """A call an old worker did not route: to the gateway again until a worker of the installed config takes it."""
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        url = f"http://127.0.0.1:{gateway_port}{request.url.path}" + (
            f"?{request.url.query}" if request.url.query else ""
        )
        counts["asked_again"] += 1
        last = ["none tried"]

        async def one_try():
            installed = installed_generation(gateway_config)
            try:
                answer = await client.request(
                    request.method,
                    url,
                    content=body,
                    headers={**headers, RESOLVE_HEADER: installed},
                    timeout=httpx.Timeout(READ_TIMEOUT + 2 * seconds, connect=1.0),
                )
            except httpx.TransportError as exc:
                last[:] = [f"the gateway: {type(exc).__name__}"]
                return None
            if answer.status_code == STALE_WORKER:
                last[:] = [f"only workers of an older config than {installed} answered"]
                return None
            return answer

        tries = AsyncRetrying(
            stop=stop_after_delay(seconds),
            wait=wait_exponential(multiplier=0.02, exp_base=1.5, max=0.5),
            retry=retry_if_result(lambda answer: answer is None),
        )
        try:
            return answer_of(await tries(one_try))
        except RetryError:
            log.warning("asked the gateway again for %s for %.0f s: %s", request.url.path, seconds, last[0])
            return JSONResponse(
                {
                    "error": f"the gateway did not load its new config within {seconds:g} s, so {request.url.path} "
                    f"could not be routed (KFRELEASE_GATEWAY_HOLD_SECONDS; {last[0]}); check `kfrelease serve status`"
                },
                503,
            )

    async def held(request: Request) -> Response:
        seconds = hold_seconds() if deadline_seconds is None else deadline_seconds
        if (
            request.headers.get(UNROUTED_HEADER)
            and gateway_port
            and request.url.path.startswith(("/v1/models/", "/v2/models/"))
        ):
            return await ask_again(request, seconds)
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
        return answer_of(answer)

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
    import uvicorn  # heavy: uvicorn

    p = argparse.ArgumentParser(prog="python -m kfrelease.stack.hold", description="The gateway's hold.")
    p.add_argument("--port", type=int, default=None, help="default: the stack's gateway-hold port")
    p.add_argument("--gateway-port", type=int, default=None, help="default: the stack's gateway port")
    p.add_argument("--gateway-config", type=Path, default=None, help="default: the stack's gateway nginx.conf")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = Settings.from_env()
    uvicorn.run(
        create_app(
            gateway_port=args.gateway_port or settings.port("gateway"),
            gateway_config=args.gateway_config or gateway_dir(settings) / "nginx.conf",
        ),
        host="127.0.0.1",
        port=args.port or settings.port("gateway-hold"),
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
