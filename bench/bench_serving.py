"""Serving benchmark: the kfrelease predictor (kserve ModelServer) against MLServer 1.7.1 + mlserver-sklearn
on the same model file, the same Open Inference Protocol (v2) payloads and the same client concurrency.

One command (``python -m bench serving``), one run. For each payload (1 instance, 32 instances) every server
is measured for ``BENCH_SERVING_SECONDS`` (after a warm-up), in interleaved rounds so that noise from other
processes on the shared machine spreads over all of them. The load comes from a separate process: ``wrk``
(Debian package ``wrk``; one thread, ``BENCH_SERVING_CONCURRENCY`` keep-alive connections, a POST script)
when it is installed, else a small asyncio HTTP/1.1 keep-alive client with pre-encoded requests. Our predictor
is measured twice: as it runs (with the fast lane, ``kfrelease.serving.fastlane``) and with
``--no-fast-lane`` (every request through KServe's own routes). The machine's load average is recorded.

MLServer cannot share the project's virtualenv (it pins starlette<0.47, kserve 0.21 needs >=1.3.1), so it
runs from its own venv (``bench/requirements-mlserver.txt``, created on first use under
``~/.cache/kfrelease-bench/``). It is measured twice: with its defaults (``parallel_workers`` = 1, inference
in a worker process) and with inference inline (``parallel_workers`` = 0); the goal compares against the
faster of the two. Logging and the cache are off in our predictor (MLServer has neither on by default).

Goal (issue 5): our RPS >= 1.5 x MLServer's, at a p99 <= MLServer's.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from kfrelease.serving.services import predictor_argv

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECONDS = float(os.environ.get("BENCH_SERVING_SECONDS", "4"))
WARMUP = float(os.environ.get("BENCH_SERVING_WARMUP", "1"))
ROUNDS = int(os.environ.get("BENCH_SERVING_ROUNDS", "5"))
CONCURRENCY = int(os.environ.get("BENCH_SERVING_CONCURRENCY", "8"))
BATCHES = tuple(int(x) for x in os.environ.get("BENCH_SERVING_BATCHES", "1,32").split(","))
MODEL = "diabetes-progression"
MLSERVER_VENV = Path(os.environ.get("BENCH_MLSERVER_VENV", Path.home() / ".cache/kfrelease-bench/mlserver-1.7.1"))
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]


# --- load client (runs in its own process) ----------------------------------------------------------


async def _client_main(port: int, path: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = [0]
    total = [0]
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def one_connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                t1 = time.perf_counter()
                total[0] += 1
                if t0 >= measure_from:
                    if b" 200 " in status_line:
                        latencies.append((t1 - t0) * 1000)
                    else:
                        errors[0] += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    return {
        "latencies_ms": latencies,
        "errors": errors[0],
        "seconds": seconds,
        "requests_including_warmup": total[0],
    }


def wrk_process(port: int, path: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    """One wrk run (after a warm-up run): requests/s and latency percentiles from its own report."""
    import re

    script = (
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("KF %d %d %d %f %f %f\\n", summary.requests, summary.errors.status,\n'
        "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,\n"
        "    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.mean / 1000))\n"
        "end\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        run = lambda secs: (
            subprocess.run(
                ["wrk", "-t1", f"-c{concurrency}", f"-d{secs}s", "-s", fh.name, url],
                capture_output=True,
                text=True,
                check=True,
                timeout=secs + 60,
            ).stdout
        )
        if warmup > 0:
            run(max(1, round(warmup)))
        out = run(max(1, round(seconds)))
    finally:
        os.unlink(fh.name)
    m = re.search(r"^KF (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$", out, re.MULTILINE)
    requests, bad_status, socket_errors = int(m[1]), int(m[2]), int(m[3])
    return {
        "wrk": True,
        "requests": requests - bad_status,
        "errors": bad_status + socket_errors,
        "seconds": float(max(1, round(seconds))),
        "p50_ms": float(m[4]),
        "p99_ms": float(m[5]),
        "mean_ms": float(m[6]),
        "requests_including_warmup": requests,
    }


def client_process(port: int, path: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    if shutil.which("wrk"):
        return wrk_process(port, path, body, concurrency, seconds, warmup)
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as fh:
        fh.write(body)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.bench_serving",
                "client",
                str(port),
                path,
                fh.name,
                str(concurrency),
                str(seconds),
                str(warmup),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
            timeout=seconds + warmup + 120,
        )
    finally:
        os.unlink(fh.name)
    return json.loads(out.stdout)


# --- servers --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} while starting ({url})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def _model_dir(root: Path) -> Path:
    """The demo model (StandardScaler + Ridge, examples/diabetes-model) on the curated columns."""
    import joblib
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from kfrelease.data.features import diabetes_features
    from kfrelease.demo.data import diabetes_frame

    frame = diabetes_features(diabetes_frame())
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(frame[FEATURES], frame["progression"])
    d = root / "model"
    d.mkdir(parents=True)
    joblib.dump(model, d / "model.joblib")
    entry = {
        "name": MODEL,
        "version": "V1.1.0",
        "target": "progression",
        "input_schema": [{"name": f, "dtype": "float64"} for f in FEATURES],
    }
    (d / "model.json").write_text(json.dumps(entry))
    return d


def ensure_mlserver() -> Path:
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    subprocess.run(
        [
            str(MLSERVER_VENV / "bin" / "pip"),
            "install",
            "-q",
            "-r",
            str(HERE / "requirements-mlserver.txt"),
        ],
        check=True,
    )
    return exe


def start_ours(model_dir: Path, port: int, log: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        predictor_argv(model_dir, MODEL, "production", port) + list(extra),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_mlserver(model_dir: Path, root: Path, port: int, parallel_workers: int, log: Path) -> subprocess.Popen:
    exe = ensure_mlserver()
    d = root / f"mlserver-pw{parallel_workers}"
    (d / MODEL).mkdir(parents=True)
    shutil.copy(model_dir / "model.joblib", d / MODEL / "model.joblib")
    (d / "settings.json").write_text(
        json.dumps(
            {
                "http_port": port,
                "grpc_port": _free_port(),
                "metrics_port": _free_port(),
                "host": "127.0.0.1",
                "parallel_workers": parallel_workers,
                "debug": False,
                "metrics_endpoint": None,
            }
        )
    )
    (d / MODEL / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "V1.1.0"},
            }
        )
    )
    return subprocess.Popen(
        [str(exe), "start", str(d)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=d,
    )


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (a server and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


# --- the run -----------------------------------------------------------------------------------------


def _payload(rows: list[list[float]]) -> bytes:
    flat = [v for r in rows for v in r]
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input-0",
                    "shape": [len(rows), len(FEATURES)],
                    "datatype": "FP64",
                    "data": flat,
                }
            ]
        }
    ).encode()


def _summary(samples: list[dict]) -> dict:
    if samples[0].get("wrk"):  # wrk reports percentiles per run: the median run's, and the worst p99
        secs = sum(s["seconds"] for s in samples)
        cpu = sum(s["cpu_seconds"] for s in samples) / max(1, sum(s["all_requests"] for s in samples))
        return {
            "requests": sum(s["requests"] for s in samples),
            "errors": sum(s["errors"] for s in samples),
            "rps": round(sum(s["requests"] for s in samples) / secs, 1),
            "p50_ms": round(statistics.median(s["p50_ms"] for s in samples), 3),
            "p99_ms": round(statistics.median(s["p99_ms"] for s in samples), 3),
            "worst_p99_ms": round(max(s["p99_ms"] for s in samples), 3),
            "mean_ms": round(statistics.fmean(s["mean_ms"] for s in samples), 3),
            "server_cpu_ms_per_request": round(cpu * 1000, 3),
        }
    lat = sorted(x for s in samples for x in s["latencies_ms"])
    secs = sum(s["seconds"] for s in samples)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    cpu = sum(s["cpu_seconds"] for s in samples) / max(1, sum(s["all_requests"] for s in samples))
    return {
        "requests": len(lat),
        "errors": sum(s["errors"] for s in samples),
        "rps": round(len(lat) / secs, 1),
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
        "mean_ms": round(statistics.fmean(lat), 3),
        "server_cpu_ms_per_request": round(cpu * 1000, 3),
    }


def main() -> dict:
    from kfrelease.data.features import diabetes_features
    from kfrelease.demo.data import holdout

    RESULTS.mkdir(exist_ok=True)
    rows = diabetes_features(holdout())[FEATURES].values.tolist()
    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    model_dir = _model_dir(root)
    servers = {
        "kfrelease predictor (kserve 0.21)": lambda port: start_ours(model_dir, port, root / "ours.log"),
        "kfrelease predictor, --no-fast-lane": lambda port: start_ours(
            model_dir, port, root / "ours-kserve.log", ("--no-fast-lane",)
        ),
        "MLServer 1.7.1 (defaults)": lambda port: start_mlserver(model_dir, root, port, 1, root / "mls1.log"),
        "MLServer 1.7.1 (parallel_workers=0)": lambda port: start_mlserver(model_dir, root, port, 0, root / "mls0.log"),
    }
    running: dict[str, tuple[subprocess.Popen, int]] = {}
    samples: dict[tuple[str, int], list[dict]] = {}
    load_before = os.getloadavg()
    try:
        for name, start in servers.items():
            port = _free_port()
            proc = start(port)
            _wait_ready(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", proc)
            running[name] = (proc, port)
        # same answers from every server before timing anything
        answers = {}
        for name, (_, port) in running.items():
            r = httpx.post(
                f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
                content=_payload(rows[:5]),
                headers={"content-type": "application/json"},
                timeout=30,
            )
            r.raise_for_status()
            answers[name] = [round(v, 9) for v in r.json()["outputs"][0]["data"]]
        assert len({json.dumps(a) for a in answers.values()}) == 1, f"servers disagree: {answers}"
        for _ in range(ROUNDS):
            for batch in BATCHES:
                body = _payload((rows * ((batch // len(rows)) + 1))[:batch])
                for name, (proc, port) in running.items():
                    cpu0 = group_cpu_seconds(proc.pid)
                    sample = client_process(
                        port,
                        f"/v2/models/{MODEL}/infer",
                        body,
                        CONCURRENCY,
                        SECONDS,
                        WARMUP,
                    )
                    sample["cpu_seconds"] = group_cpu_seconds(proc.pid) - cpu0
                    sample["all_requests"] = sample.pop("requests_including_warmup", None)
                    samples.setdefault((name, batch), []).append(sample)
    finally:
        for proc, _ in running.values():
            _stop(proc)
        shutil.rmtree(root, ignore_errors=True)

    results = []
    for (name, batch), s in samples.items():
        results.append({"server": name, "batch": batch, **_summary(s)})
    verdicts = {}
    for batch in BATCHES:
        ours = next(r for r in results if r["batch"] == batch and r["server"] == "kfrelease predictor (kserve 0.21)")
        peers = [r for r in results if r["batch"] == batch and r["server"].startswith("MLServer")]
        best = max(peers, key=lambda r: r["rps"])
        verdicts[str(batch)] = {
            "rps_ratio": round(ours["rps"] / best["rps"], 2),
            "p99_ours_ms": ours["p99_ms"],
            "p99_peer_ms": best["p99_ms"],
            "peer": best["server"],
            "rps_ratio_no_fast_lane": next(
                (
                    round(r["rps"] / best["rps"], 2)
                    for r in results
                    if r["batch"] == batch and r["server"].endswith("--no-fast-lane")
                ),
                None,
            ),
            "goal_met": ours["rps"] >= 1.5 * best["rps"] and ours["p99_ms"] <= best["p99_ms"],
        }
    doc = {
        "benchmark": "serving",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "shared": "2 cores shared with other work",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "method": {
            "protocol": "v2 (Open Inference Protocol) JSON",
            "concurrency": CONCURRENCY,
            "seconds": SECONDS,
            "warmup_seconds": WARMUP,
            "rounds": ROUNDS,
            "model": "StandardScaler + Ridge on 11 curated columns",
            "client": "wrk -t1 (keep-alive), separate process"
            if shutil.which("wrk")
            else "asyncio HTTP/1.1 keep-alive, separate process",
        },
        "results": results,
        "verdicts": verdicts,
    }
    (RESULTS / "serving.json").write_text(json.dumps(doc, indent=2))
    lines = [
        "### Serving: kfrelease predictor vs MLServer",
        "",
        (
            f"v2 JSON, {CONCURRENCY} concurrent keep-alive clients, {ROUNDS} x {SECONDS:g} s per server and batch "
            f"size (interleaved), same model file; {doc['when']}, {os.cpu_count()} shared CPUs, load average "
            f"{doc['machine']['load_average_before'][0]} before and {doc['machine']['load_average_after'][0]} after; "
            f"client: {doc['method']['client']}."
        ),
        "",
        "| server | batch | RPS | p50 ms | p99 ms | server CPU ms / request | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['server']} | {r['batch']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['server_cpu_ms_per_request']} | {r['errors']} |"
        )
    lines.append("")
    lines.append("p50/p99: the median over the rounds of each run's own percentiles (wrk), or over all requests.")
    for batch, v in verdicts.items():
        lines.append(
            f"- batch {batch}: {v['rps_ratio']}x the RPS of {v['peer']}, p99 {v['p99_ours_ms']} vs "
            f"{v['p99_peer_ms']} ms: goal (>= 1.5x at <= its p99) {'met' if v['goal_met'] else 'NOT met'}; "
            f"through KServe's own routes only (--no-fast-lane): {v['rps_ratio_no_fast_lane']}x"
        )
    (RESULTS / "serving.md").write_text("\n".join(lines) + "\n")
    return doc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        port, path, body_file, conc, secs, warm = sys.argv[2:8]
        result = asyncio.run(
            _client_main(
                int(port),
                path,
                Path(body_file).read_bytes(),
                int(conc),
                float(secs),
                float(warm),
            )
        )
        print(json.dumps(result))
    else:
        print(json.dumps(main()["verdicts"], indent=2))
