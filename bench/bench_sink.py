"""Log sink throughput: how many prediction-log events per second the log sink acknowledges (fsync'ed in
its WAL) and writes (Parquet batches in ``inference-logs``), fed the way the model servers feed it.

Against the stack of ``KFRELEASE_HOME`` / ``KFRELEASE_PORT_OFFSET`` when ``BENCH_SINK_STACK=env`` (it is
started if it is not running, and left running), else in a fresh home on free ports (stopped afterwards).

Two scenarios, each with its own model name so that the store's row count is exact:

- ``loggers``: the real path. ``BENCH_SINK_LOGGERS`` prediction loggers (``kfrelease.serving.logger``;
  the demo has four: production and staging shadow of two models) in two processes, as the production and
  the staging model server run them, each logging ``BENCH_SINK_PREDICTIONS`` predictions (two events each)
  at once. Acknowledged: events / seconds until every logger's events are acknowledged; written: until
  the store holds every event.
- ``single``: the sink alone, one event per POST in binary mode (what KServe's own agent sends) from
  ``BENCH_SINK_CLIENTS`` concurrent connections for ``BENCH_SINK_SECONDS``.

The demo's load, for comparison: 2 models x R requests/s x 2 model servers (primary and shadow) x 2
events (request, response): 320 events/s at 40 requests/s per model, 640 at 80.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from pathlib import Path

from kfrelease import httpcalls

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOGGERS = int(os.environ.get("BENCH_SINK_LOGGERS", "4"))
PREDICTIONS = int(os.environ.get("BENCH_SINK_PREDICTIONS", "3000"))
CLIENTS = int(os.environ.get("BENCH_SINK_CLIENTS", "8"))
SECONDS = float(os.environ.get("BENCH_SINK_SECONDS", "10"))
BEFORE_NOTE = (
    "The demo at 40 requests/s per model sends 320 events/s; at 80, 640. Before the logger batched its events "
    "(one POST, one fsync wait per event), the same loggers got 491 events/s acknowledged and 473 written "
    "(2026-12-02, load 4.1): the sink took the demo's 40 requests/s and not its 80."
)
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]


def _log_worker(url: str, wal_root: str, model: str, stages: list[str], n: int, queue) -> None:
    """One model server's loggers: log ``n`` predictions on each, then wait until all are acknowledged."""
    import numpy as np

    from kfrelease.serving.logger import InferenceLogger

    loggers = [InferenceLogger(url, Path(wal_root) / stage, model, "V1.0.0", stage, FEATURES) for stage in stages]
    for lg in loggers:
        lg.start()
    rows = np.arange(len(FEATURES), dtype="float64").reshape(1, -1)
    pred = np.array([1.5])
    queue.put(("ready", time.time()))
    started = time.time()
    for i in range(n):
        for k, lg in enumerate(loggers):
            lg.log(f"bench-{k}-{i}", rows, pred)
    while sum(lg.sent for lg in loggers) < 2 * n * len(loggers):
        time.sleep(0.01)
    queue.put(("sent", time.time() - started, sum(lg.spooled for lg in loggers)))
    for lg in loggers:
        lg.close()


def _wait_stored(settings, model: str, expected: int, timeout: float = 300.0) -> float | None:
    """Seconds until the store holds ``expected`` rows of ``model`` (None: not within ``timeout``)."""
    from kfrelease.lake.read import count_logged_rows
    from kfrelease.storage import store_for

    store = store_for("monitoring", settings)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if count_logged_rows(store, model) >= expected:
            return time.monotonic() - t0
        time.sleep(0.25)
    return None


def loggers_scenario(settings, wal_root: Path) -> dict:
    model = f"sinkbench-loggers-{uuid.uuid4().hex[:6]}"
    url = settings.url("logsink", "/")
    stages = [("production", "staging")[i % 2] + str(i // 2) for i in range(LOGGERS)]  # distinct event sources
    groups = [stages[0::2], stages[1::2]]  # two processes, like the production and the staging model server
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_log_worker, args=(url, str(wal_root / f"p{i}"), model, g, PREDICTIONS, queue))
        for i, g in enumerate(groups)
        if g
    ]
    for p in procs:
        p.start()
    for _ in procs:
        queue.get(timeout=120)  # ready
    t0 = time.monotonic()
    results = [queue.get(timeout=900) for _ in procs]
    acked = time.monotonic() - t0
    for p in procs:
        p.join(60)
    events = 2 * PREDICTIONS * LOGGERS
    return {
        "scenario": "loggers",
        "loggers": LOGGERS,
        "spooled": sum(r[2] for r in results),
        **_rates(settings, model, events, acked),
    }


def _rates(settings, model: str, events: int, acked: float) -> dict:
    """Events acknowledged per second and, once the store holds them all, written per second."""
    stored = _wait_stored(settings, model, events)
    written = acked + stored if stored is not None else None
    return {
        "events": events,
        "ack_seconds": round(acked, 2),
        "ack_per_s": round(events / acked),
        "written_seconds": round(written, 2) if written else None,
        "written_per_s": round(events / written) if written else None,
    }


async def _single_clients(url: str, model: str, seconds: float) -> int:

    headers = {
        "ce-specversion": "1.0",
        "ce-type": "org.kubeflow.serving.inference.request",
        "ce-source": "http://bench/",
        "ce-inferenceservicename": model,
        "ce-model": model,
        "ce-modelversion": "V1.0.0",
        "ce-stage": "production",
        "ce-features": ",".join(FEATURES),
        "content-type": "application/json",
    }
    body = json.dumps({"instances": [list(range(len(FEATURES)))]}).encode()
    deadline = time.monotonic() + seconds
    done = 0

    async def client(k: int) -> None:
        nonlocal done
        async with httpcalls.async_client(timeout=30) as c:
            i = 0
            while time.monotonic() < deadline:
                r = await c.post(url, content=body, headers={**headers, "ce-id": f"single-{k}-{i}"})
                r.raise_for_status()
                done += 1
                i += 1

    await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    return done


def single_scenario(settings) -> dict:
    model = f"sinkbench-single-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    events = asyncio.run(_single_clients(settings.url("logsink", "/"), model, SECONDS))
    acked = time.monotonic() - t0
    return {"scenario": "single", "clients": CLIENTS, **_rates(settings, model, events, acked)}


def main() -> dict:
    from kfrelease.cli.stack import start_stack
    from kfrelease.config import Settings
    from kfrelease.release.embedded import ensure_serving_services
    from kfrelease.stack import supervisor

    own = os.environ.get("BENCH_SINK_STACK") != "env"
    if own:
        from bench.bench_gateway import _free_offset

        settings = Settings(home=Path(tempfile.mkdtemp(prefix="bench-sink-")), port_offset=_free_offset())
        os.environ["KFRELEASE_HOME"], os.environ["KFRELEASE_PORT_OFFSET"] = (
            str(settings.home),
            str(settings.port_offset),
        )
    else:
        settings = Settings.from_env()
    wal_root = Path(tempfile.mkdtemp(prefix="bench-sink-wal-"))
    try:
        start_stack(settings)
        ensure_serving_services(settings)
        rows = [loggers_scenario(settings, wal_root), single_scenario(settings)]
    finally:
        if own:
            supervisor.down(settings)
    load = [round(x, 1) for x in os.getloadavg()]
    result = {"load": load, "cpus": os.cpu_count(), "predictions_per_logger": PREDICTIONS, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sink.json").write_text(json.dumps(result, indent=2))
    md = [
        f"### Log sink throughput, {os.cpu_count()} shared cores, load {load[0]}/{load[1]}",
        "",
        "| scenario | events | acknowledged (events/s) | written to the store (events/s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        what = (
            f"{r['loggers']} prediction loggers in 2 processes, burst"
            if r["scenario"] == "loggers"
            else f"one event per POST, {r['clients']} connections"
        )
        md.append(f"| {what} | {r['events']} | {r['ack_per_s']} | {r['written_per_s']} |")
    md += ["", BEFORE_NOTE]
    (RESULTS / "sink.md").write_text("\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
