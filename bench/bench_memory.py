"""Memory benchmark: peak memory of the train step per 1M rows of a 10-column dataset.

One command (``python -m bench memory``). It starts a private embedded stack (SeaweedFS + registry, own home
and free ports), publishes synthetic curated datasets (float64, 9 features + target) of ``ROWS`` rows, and
runs the real split and train steps (``kfrelease.training.steps.split_step``: read the curated version from S3,
check, hash split, write the training rows and the held-out features; ``train_step``: fit a Ridge, write the
model and the held-out predictions), one after the other, in a fresh process per measurement, reading the
process's peak resident memory (``VmHWM``, what ``run_records.peak_rss_mb`` records; not ``ru_maxrss``, which
would include this benchmark's own memory at fork). The slope over the sizes is the memory per 1M rows; the
intercept is the interpreter and its imports. A second dataset has 10 more columns the model does not use:
the train step reads only its own columns, so its peak stays that of the 10-column data, where reading the
whole version (what the step did before) costs the extra columns too.

The estimate the train step uses to refuse a dataset too large for its memory limit
(``kfrelease.training.memory``) is printed beside the measurement.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench import fresh_home

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS = [int(x) for x in os.environ.get("BENCH_MEMORY_ROWS", "250000,500000,1000000").split(",")]
FEATURES = [f"x{i}" for i in range(9)]

STEP = """
import json, sys, tempfile
from pathlib import Path
from kfrelease.training.run_records import peak_rss_mb
from kfrelease.training.spec import parse_spec
from kfrelease.training.steps import split_step, train_step
spec = parse_spec(sys.argv[1])
mode = sys.argv[3]
base = peak_rss_mb()
with tempfile.TemporaryDirectory() as tmp:
    p = {n: str(Path(tmp) / n) for n in ("m.joblib", "train.parquet", "holdout.parquet", "pred.parquet", "champion")}
    if mode == "step":
        split_step(spec, sys.argv[2], p["train.parquet"], p["holdout.parquet"], p["champion"])
        train_step(spec, p["train.parquet"], p["holdout.parquet"], p["m.joblib"], p["pred.parquet"])
    else:  # the step before column pruning: the whole version read
        from kfrelease.data.publish import load_dataset
        from kfrelease.storage import store_for
        from kfrelease.training.core import train
        df, dv = load_dataset(store_for("pipeline"), spec.dataset, sys.argv[2])
        train(spec, df, dv.version)
print(json.dumps({"baseline_mb": base, "peak_mb": peak_rss_mb()}))
"""


def _spec(dataset: str) -> str:
    return (
        f"name: bench-memory\ntag: 1\ndataset: {dataset}\nfeatures: [{', '.join(FEATURES)}]\ntarget: y\n"
        "estimator: {class: sklearn.linear_model.Ridge}\nresources: {memory: 8Gi}\n"
    )


def _frame(rows: int, extra: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(rows)
    data = {c: rng.normal(size=rows) for c in FEATURES}
    data["y"] = sum(data[c] * (i + 1) for i, c in enumerate(FEATURES)) + rng.normal(size=rows)
    for i in range(extra):
        data[f"unused{i}"] = rng.normal(size=rows)
    return pd.DataFrame(data)


def _publish(store, name: str, df) -> str:
    from kfrelease.data.publish import publish
    from kfrelease.data.spec import DatasetSpec

    spec = DatasetSpec(name=name, source={"prefix": f"{name}/"}, columns={c: {"dtype": "float64"} for c in df.columns})
    return publish(df, spec, store, sources=[], run_id="bench-memory").version


def _measure(spec_text: str, version: str, mode: str, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", STEP, spec_text, version, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"train step failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> dict:
    from kfrelease.config import Settings
    from kfrelease.stack import supervisor
    from kfrelease.stack.services import declared_services
    from kfrelease.storage import store_for
    from kfrelease.training.memory import estimate_bytes

    _home, env = fresh_home("memory")
    settings = Settings.from_env()
    load_before = os.getloadavg()[0]
    supervisor.up(settings, declared_services(settings, ("core",)))
    points, wide = [], {}
    try:
        store = store_for("data-engineer", settings)
        for rows in ROWS:
            version = _publish(store, f"bench10-{rows}", _frame(rows))
            m = _measure(_spec(f"bench10-{rows}"), version, "step", env)
            points.append({"rows": rows, **m, "estimate_mb": estimate_bytes(rows, 10) / 2**20})
            print(f"{rows} rows x 10 columns: peak {m['peak_mb']:.0f} MB", flush=True)
        rows = ROWS[-1]
        version = _publish(store, f"bench20-{rows}", _frame(rows, extra=10))
        wide = {
            "rows": rows,
            "step_reads_its_columns_mb": _measure(_spec(f"bench20-{rows}"), version, "step", env)["peak_mb"],
            "whole_version_read_mb": _measure(_spec(f"bench20-{rows}"), version, "whole", env)["peak_mb"],
        }
        print(f"{rows} rows x 20 columns (10 used): {wide}", flush=True)
    finally:
        supervisor.down(settings)
    xs, ys = [p["rows"] / 1e6 for p in points], [p["peak_mb"] for p in points]
    n = len(xs)
    slope = (n * sum(x * y for x, y in zip(xs, ys)) - sum(xs) * sum(ys)) / (n * sum(x * x for x in xs) - sum(xs) ** 2)
    intercept = (sum(ys) - slope * sum(xs)) / n
    raw_mb_per_1m = 10 * 8 * 1e6 / 2**20
    result = {
        "points": points,
        "peak_mb_per_1m_rows": slope,
        "intercept_mb": intercept,
        "raw_float64_mb_per_1m_rows": raw_mb_per_1m,
        "copies_of_the_data": slope / raw_mb_per_1m,
        "wide_dataset": wide,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
            "python": platform.python_version(),
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2))
    md = [
        f"### Train step peak memory ({os.cpu_count()} shared cores, load {load_before:.1f})",
        "",
        "| rows x columns | peak RSS (MB) | refusal estimate (MB) |",
        "| --- | ---: | ---: |",
    ]
    md += [f"| {p['rows']:,} x 10 | {p['peak_mb']:.0f} | {p['estimate_mb']:.0f} |" for p in points]
    md += [
        f"| {wide['rows']:,} x 20 (10 used; the step reads its 10) | {wide['step_reads_its_columns_mb']:.0f} | |",
        f"| {wide['rows']:,} x 20 (the whole version read, as before) | {wide['whole_version_read_mb']:.0f} | |",
        "",
        (
            f"**{slope:.0f} MB per 1M rows** of a 10-column float64 dataset ({slope / raw_mb_per_1m:.1f} copies of "
            f"the {raw_mb_per_1m:.0f} MB of raw data) on top of {intercept:.0f} MB of interpreter and imports; "
            "the refusal estimate (`kfrelease.training.memory`) stays above the measurement."
        ),
    ]
    (RESULTS / "memory.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
