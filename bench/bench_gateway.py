"""Gateway benchmark: what the nginx gateway adds over calling the model server directly, and what mirroring
100 % of the requests to a shadow adds to the primary's latency.

One command (``python -m bench gateway``), one run: the same model server, payload, request count and
concurrency for each mode; modes are interleaved in rounds so that noise from other processes on the
machine spreads over all of them. Model server: the kfrelease predictor (``kfrelease.serving.predictor``)
on a scikit-learn model of the diabetes data when it is installed, else a minimal ``kserve.Model``.

Goals (issue 5): the gateway adds <= 1 ms to p50; 100 % mirroring adds <= 5 % to the primary's p99.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from kfrelease import httpcalls

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REQUESTS = int(os.environ.get("BENCH_GATEWAY_REQUESTS", "300"))  # per mode and round
ROUNDS = int(os.environ.get("BENCH_GATEWAY_ROUNDS", "10"))
# One client at a time: latency, not CPU saturation (2 shared cores carry client, nginx and model servers)
CONCURRENCY = int(os.environ.get("BENCH_GATEWAY_CONCURRENCY", "1"))
MODEL = "diabetes-progression"
IDLE_SHADOW_SECONDS = 0.05


def _model_dir(root: Path, version: str = "V1.1.0") -> tuple[Path, list[float]]:
    """A registry-style model directory (model.joblib + model.json) of a linear model on the diabetes data."""
    import joblib
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    data = load_diabetes(as_frame=True)
    frame = data.frame
    features = [c for c in frame.columns if c != "target"]
    model = LinearRegression().fit(frame[features], frame["target"])
    d = root / "model" / version
    d.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, d / "model.joblib")
    entry = {
        "name": MODEL,
        "version": version,
        "input_schema": [{"name": f, "dtype": "float64"} for f in features],
        "target": "progression",
    }
    (d / "model.json").write_text(json.dumps(entry))
    return d, [float(x) for x in frame[features].iloc[0]]


def _host_command(settings):
    """The stack's multi-model host without its prediction logger (no log sink in this benchmark)."""
    from kfrelease.stack.hosts import default_host_command

    base = default_host_command(settings)

    def command(slot, manifest, port):
        argv = base(slot, manifest, port)
        i = argv.index("--logger-url")
        return argv[:i] + argv[i + 2 :]

    return command


def _serve_idle(port: int, delay: float) -> None:
    """A shadow that costs almost no CPU: a bare asyncio HTTP/1.1 server that reads each request, waits
    ``delay`` seconds without computing, and answers 200. It isolates what the gateway's mirroring costs
    the primary from the CPU a real shadow model server takes on the same machine."""
    import asyncio

    body = b'{"predictions": [0.0], "model_version": "idle"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)

    async def handle(reader, writer):
        try:
            while True:
                header = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in header.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if not header.startswith(b"GET"):
                    await asyncio.sleep(delay)
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _load(url: str, payload: dict, n: int, concurrency: int) -> tuple[list[float], float, int]:
    """``n`` requests from ``concurrency`` clients; returns latencies (ms), wall seconds, failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def client(count: int) -> None:
        mine = []
        with httpcalls.client(timeout=30) as c:
            for _ in range(count):
                t0 = time.perf_counter()
                r = c.post(url, json=payload)
                dt = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    mine.append(dt)
                else:
                    with lock:
                        failures[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0, failures[0]


def _free_offset() -> int:
    import random
    import socket

    from kfrelease.config import DEFAULT_PORTS

    for _ in range(100):
        offset = random.randrange(20000, 30000, 10)
        ports = [DEFAULT_PORTS["gateway"] + offset] + [DEFAULT_PORTS["predictor"] + offset + i for i in range(3)]
        ok = True
        for port in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return offset
    raise RuntimeError("no free ports for the gateway benchmark")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def main() -> dict:
    from kfrelease.config import Settings
    from kfrelease.rollout.spec import load_rollout_spec
    from kfrelease.rollout.traffic import TrafficState
    from kfrelease.stack import supervisor
    from kfrelease.stack.gateway import (
        LocalGatewayDriver,
        ModelRoute,
        gateway_dir,
        predictor_port,
        render_nginx_config,
    )
    from kfrelease.stack.service import Service
    from kfrelease.stack.slots import all_slots

    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    settings = Settings(home=tmp, port_offset=_free_offset())
    dirs = {v: _model_dir(tmp, v) for v in ("V1.1.0", "V1.2.0")}
    row = dirs["V1.1.0"][1]
    server = "kfrelease model server (kfrelease.serving.host)"
    spec = load_rollout_spec(model=MODEL)
    driver = LocalGatewayDriver(
        settings,
        spec,
        model_dir_for=lambda model, version: dirs[version][0],
        host_command=_host_command(settings),
    )
    payload = {"instances": [row]}
    path = f"/v1/models/{MODEL}:predict"
    direct = f"http://127.0.0.1:{predictor_port(settings, 'production')}{path}"
    via = settings.url("gateway", path)
    mirrored = TrafficState(primary="V1.1.0", shadow="V1.2.0", mirror_percent=100)
    # Start every process once (primary, shadow model server, idle shadow), then switch modes by reloading
    # the gateway only, in many short interleaved rounds, so that load from other processes on this shared
    # machine spreads evenly over the modes.
    driver.apply(mirrored)
    # past every model server's port (kfrelease.stack.slots: production runs two replicas by default, and the
    # port right after the canary's is the second production replica's)
    idle_port = settings.port("predictor") + len(all_slots())
    ports = {"primary": predictor_port(settings, "production"), "shadow": predictor_port(settings, "staging")}

    def config(state, backends, keepalive):
        return render_nginx_config(
            [
                ModelRoute.of(
                    spec, state, {role: backends[role] for role in ("primary", "shadow") if getattr(state, role)}
                )
            ],
            listen_port=settings.port("gateway"),
            prefix=gateway_dir(settings),
            client_keepalive=keepalive,
        )

    plain = TrafficState(primary="V1.1.0")
    configs = {
        "gateway": config(plain, ports, False),
        "gateway, client keep-alive": config(plain, ports, True),
        "gateway + 100% mirror": config(mirrored, ports, False),
        "gateway + 100% mirror to an idle shadow": config(mirrored, {**ports, "shadow": idle_port}, False),
    }
    modes = {"direct": direct, **{m: via for m in configs}}
    load_before = os.getloadavg()[0]
    samples: dict[str, list[float]] = {m: [] for m in modes}
    walls: dict[str, float] = dict.fromkeys(modes, 0.0)
    failures: dict[str, int] = dict.fromkeys(modes, 0)
    try:  # from the idle shadow's start: a failure stops what was started
        supervisor.start_service(
            settings,
            Service(
                name="bench-idle-shadow",
                port=idle_port,
                command=[
                    sys.executable,
                    "-m",
                    "bench.bench_gateway",
                    "serve-idle",
                    str(idle_port),
                    str(IDLE_SHADOW_SECONDS),
                ],
                health_path="/v2/health/ready",
                env={"PYTHONPATH": str(HERE.parent)},
            ),
        )
        for _ in range(ROUNDS):
            for mode, url in modes.items():
                if mode in configs:
                    driver.install(configs[mode])  # checked with nginx -t, graceful reload, waits until served
                _load(url, payload, 50, CONCURRENCY)  # warm-up
                lat, wall, failed = _load(url, payload, REQUESTS, CONCURRENCY)
                samples[mode] += lat
                walls[mode] += wall
                failures[mode] += failed
    finally:
        supervisor.stop_service(settings, "bench-idle-shadow")
        driver.stop()
    rows = {}
    for mode, lat in samples.items():
        rows[mode] = {
            "requests": len(lat) + failures[mode],
            "failed": failures[mode],
            "rps": round(len(lat) / walls[mode], 1),
            "p50_ms": round(statistics.median(lat), 3),
            "p99_ms": round(_pct(lat, 99), 3),
        }
    added_p50 = rows["gateway"]["p50_ms"] - rows["direct"]["p50_ms"]
    added_p50_keepalive = rows["gateway, client keep-alive"]["p50_ms"] - rows["direct"]["p50_ms"]
    mirror_p99 = (rows["gateway + 100% mirror"]["p99_ms"] / rows["gateway"]["p99_ms"] - 1) * 100
    idle_p99 = (rows["gateway + 100% mirror to an idle shadow"]["p99_ms"] / rows["gateway"]["p99_ms"] - 1) * 100
    result = {
        "benchmark": "gateway",
        "model_server": server,
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "requests_per_mode_and_round": REQUESTS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu (shared), Python {platform.python_version()}",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "modes": rows,
        "gateway_added_p50_ms": round(added_p50, 3),
        "gateway_added_p50_ms_client_keepalive": round(added_p50_keepalive, 3),
        "mirror_added_p99_percent": round(mirror_p99, 1),
        "mirror_to_idle_shadow_added_p99_percent": round(idle_p99, 1),
        "goals": {
            "gateway_added_p50_ms <= 1": added_p50 <= 1.0,
            "mirror_added_p99_percent <= 5": mirror_p99 <= 5.0,
            "mirror_to_idle_shadow_added_p99_percent <= 5": idle_p99 <= 5.0,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "### Gateway overhead and mirroring cost",
        "",
        (
            f"{server}, {CONCURRENCY} concurrent clients, {ROUNDS} interleaved rounds x {REQUESTS} requests per mode, "
            f"one instance per request; {result['machine']}; 1-minute load average before/after: "
            f"{result['load_average_1m'][0]}/{result['load_average_1m'][1]}."
        ),
        "",
        "| mode | requests | failed | RPS | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, r in rows.items():
        lines.append(f"| {mode} | {r['requests']} | {r['failed']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += [
        "",
        (
            f"- gateway adds **{added_p50:.3f} ms** to p50 (goal <= 1 ms: {'met' if added_p50 <= 1 else 'missed'}); "
            f"with client keep-alive {added_p50_keepalive:.3f} ms"
        ),
        (
            f"- 100 % mirroring changes the primary's p99 by **{mirror_p99:+.1f} %** (goal <= 5 %: "
            f"{'met' if mirror_p99 <= 5 else 'missed'}); the shadow is a second model server on the same shared "
            "CPUs, so this includes CPU contention"
        ),
        (
            f"- 100 % mirroring to a shadow that waits {IDLE_SHADOW_SECONDS * 1000:.0f} ms per request (almost no CPU; "
            f"the gateway's own mirroring cost): p99 {idle_p99:+.1f} % (goal <= 5 %: {'met' if idle_p99 <= 5 else 'missed'})"
        ),
    ]
    (RESULTS / "gateway.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "serve-idle":
        _serve_idle(int(sys.argv[2]), float(sys.argv[3]))
    else:
        main()
