"""Publish benchmark: time and peak memory of publishing a curated version at 1, 10 and 100 times 4.7M rows.

One command (``python -m bench publish``; sizes from ``BENCH_PUBLISH_SIZES``, default ``1,10,100``). For each
size it starts a private embedded stack (SeaweedFS, own home and free ports, removed afterwards), uploads
that many source objects of 4.7M rows each (the diabetes schema, rows drawn from the 442 bundled patients, a
unique ``patient_id`` across all objects: about 309 MB of CSV per object), and publishes them with
``run_data_pipeline`` in a fresh process, reading its peak resident memory (``VmHWM``).

The peer, in the same run and on the same 1x source: **today's pandas path**, the in-memory data pipeline of
commit ``PEER_COMMIT`` (``git archive`` of that commit, run the same way). It needs about 16 times the file in
memory, so it is run at 1x only: 10x would need some 60 GB. The two must publish the same version id.

Objects are gzip-compressed CSV (``.csv.gz``) at every size, so that 100x (470M rows) fits the disk: 8.8 GB of
sources instead of 31 GB. At 1x both engines also read the plain ``.csv`` (the peer reads no gzip).
**Goal:** peak memory flat in the file size and under 2 GiB.

Results are written after each size, so a run stopped early keeps what it measured. ``BENCH_PUBLISH_KEEP=1``
keeps the points of sizes this run does not measure from the last ``publish.json`` (e.g. a second run of
``BENCH_PUBLISH_SIZES=30`` beside an earlier 1x and 10x). A size of the goal (1, 10, 100) with no point is listed
under the table with the time it would take at the largest measured size's rates (writing and uploading the
sources, publishing), so that a size left out says why.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROWS_PER_OBJECT = int(os.environ.get("BENCH_PUBLISH_ROWS", "4700000"))
SIZES = [int(x) for x in os.environ.get("BENCH_PUBLISH_SIZES", "1,10,100").split(",")]
PEER_COMMIT = "1171e0f"
GOAL_MB = 2048
GENERATORS = 2  # processes writing source objects
#: The sizes the goal names (issue 26): each is measured, or listed with what it would take.
GOAL_SIZES = (1, 10, 100)
#: "Flat": the largest size's peak memory within this factor of the smallest's.
FLAT = 1.5

RUN = """
import json, sys, time
import kfrelease
from kfrelease.data.pipeline import run_data_pipeline
from kfrelease.data.spec import parse_spec
from kfrelease.storage import store_for
from kfrelease.training.run_records import peak_rss_mb
spec = parse_spec(sys.argv[1])
start = time.monotonic()
dv = run_data_pipeline(spec, store_for("data-engineer"))
print(json.dumps({"seconds": time.monotonic() - start, "peak_mb": peak_rss_mb(), "version": dv.version,
                  "rows": dv.row_count, "code": kfrelease.__file__}))
"""


def _spec(name: str) -> str:
    import yaml

    from kfrelease.data.spec import load_spec

    doc = yaml.safe_load(load_spec("diabetes").text)
    doc.update(name=name, source={"prefix": f"{name}/"})
    return yaml.safe_dump(doc, sort_keys=False)


def _lines() -> list[str]:
    """The 442 patients as CSV lines without their id (pandas' text of the values, as the demo uploads them)."""
    from kfrelease.demo.data import diabetes_frame

    df = diabetes_frame()
    return df.drop(columns="patient_id").to_csv(index=False, header=False).splitlines()


def write_object(path: Path, k: int, rows: int, lines: list[str], header: str) -> None:
    """Object ``k``: ``rows`` rows drawn (seed ``k``) from the patients, ids ``k * rows + 1 ...``."""
    import numpy as np

    rng = np.random.default_rng(k)
    opener = gzip.open(path, "wt", compresslevel=1) if path.suffix == ".gz" else open(path, "w")  # noqa: SIM115
    with opener as f:
        f.write(header + "\n")
        first = k * rows + 1
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            pick = rng.integers(0, len(lines), n).tolist()
            f.write("".join(f"{first + start + i},{lines[p]}\n" for i, p in enumerate(pick)))


def _upload(store, prefix: str, objects: int, suffix: str, work: Path) -> int:
    """Write and upload ``objects`` objects, two written at a time (separate processes) while the finished one is
    uploaded, each removed once uploaded: at most three on local disk at once."""
    from concurrent.futures import ProcessPoolExecutor

    from kfrelease.demo.data import diabetes_frame

    lines, header = _lines(), ",".join(diabetes_frame().columns)
    size = 0
    with ProcessPoolExecutor(GENERATORS) as pool:
        pending = {}
        for k in range(objects):
            path = work / f"part-{k:03d}{suffix}"
            pending[k] = (path, pool.submit(write_object, path, k, ROWS_PER_OBJECT, lines, header))
            if k >= GENERATORS:
                size += _put(store, prefix, *pending.pop(k - GENERATORS))
        for k in sorted(pending):
            size += _put(store, prefix, *pending[k])
    return size


def _put(store, prefix: str, path: Path, written) -> int:
    written.result()
    size = path.stat().st_size
    store.put_file("raw", f"{prefix}{path.name}", str(path))
    path.unlink()
    return size


def _measure(spec_text: str, env: dict, pythonpath: str, cwd: Path) -> dict:
    """``RUN`` in a fresh process whose ``kfrelease`` is the one in ``pythonpath`` (run outside the repository, so
    that the current folder, first on ``sys.path``, does not shadow it)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN, spec_text],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": pythonpath},
        timeout=6 * 3600,
        check=False,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _peer_tree() -> Path:
    """``kfrelease`` as it was at ``PEER_COMMIT`` (the in-memory pandas path), exported to a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix="kfrelease-bench-peer-"))
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", PEER_COMMIT, "kfrelease", "components", "pipelines", "serving"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    # the components/pipelines/serving folders are kfrelease.* subpackages in an install (setup.py package_dir)
    for folder in ("components", "pipelines", "serving"):
        shutil.move(str(out / folder), str(out / "kfrelease" / folder))
    return out


def _size(objects: int, suffix: str, runs: list[tuple[str, str]]) -> list[dict]:
    """Publish ``objects`` objects on a private stack with each ``(engine, PYTHONPATH)`` of ``runs``."""
    from kfrelease.config import Settings
    from kfrelease.stack import supervisor
    from kfrelease.stack.services import declared_services
    from kfrelease.storage import store_for
    from tests.conftest import free_port_offset

    home = Path(tempfile.mkdtemp(prefix="kfrelease-bench-publish-"))
    env = {**os.environ, "KFRELEASE_HOME": str(home), "KFRELEASE_PORT_OFFSET": str(free_port_offset())}
    os.environ.update({k: env[k] for k in ("KFRELEASE_HOME", "KFRELEASE_PORT_OFFSET")})
    settings = Settings.from_env()
    supervisor.up(settings, declared_services(settings, ("core",)))
    out = []
    try:
        store = store_for("data-engineer", settings)
        name = f"bench-{objects}x{suffix.replace('.', '-')}"
        started = time.monotonic()
        size = _upload(store, f"{name}/", objects, suffix, home)
        uploaded = time.monotonic() - started
        print(f"{objects} object(s) of {ROWS_PER_OBJECT:,} rows ({suffix}, {size / 1e6:,.0f} MB) written and uploaded "
              f"in {uploaded:.0f} s", flush=True)  # fmt: skip
        for engine, pythonpath in runs:
            load = os.getloadavg()[0]
            m = _measure(_spec(name), env, pythonpath, home)
            if "code" in m and not m["code"].startswith(pythonpath):
                raise RuntimeError(f"{engine} ran the kfrelease of {m['code']}, not of {pythonpath}")
            m.update(
                engine=engine,
                objects=objects,
                format=suffix,
                source_mb=size / 1e6,
                upload_seconds=uploaded,
                load=[load, os.getloadavg()[0]],
            )
            print(json.dumps(m), flush=True)
            out.append(m)
    finally:
        supervisor.down(settings)
        shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> dict:
    ours = ("kfrelease (streaming)", str(HERE.parent))
    peer_tree = _peer_tree()
    peer = (f"today's pandas path ({PEER_COMMIT})", str(peer_tree))
    kept = _kept()
    points: list[dict] = []
    try:
        if 1 in SIZES:
            points += _size(1, ".csv", [peer, ours])
            _write(kept + points)
        for n in SIZES:
            points += _size(n, ".csv.gz", [ours])
            _write(kept + points)  # after each size, so that a run cut short keeps what it measured
    finally:
        shutil.rmtree(peer_tree, ignore_errors=True)
    return _write(kept + points, show=True)


def _kept() -> list[dict]:
    """With ``BENCH_PUBLISH_KEEP=1``: the last run's points of the sizes this run does not measure."""
    previous = RESULTS / "publish.json"
    if os.environ.get("BENCH_PUBLISH_KEEP") != "1" or not previous.exists():
        return []
    doc = json.loads(previous.read_text())
    if doc.get("rows_per_object") != ROWS_PER_OBJECT:
        return []
    return [p for p in doc["points"] if p["objects"] not in SIZES]


def _write(points: list[dict], show: bool = False) -> dict:
    points = sorted(points, key=lambda p: (p["objects"], p["format"] != ".csv", p["engine"].startswith("kfrelease")))
    result = {"rows_per_object": ROWS_PER_OBJECT, "points": points, "machine": _machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "publish.json").write_text(json.dumps(result, indent=2))
    md = _table(points)
    (RESULTS / "publish.md").write_text(md)
    if show:
        print(md)
    return result


def unmeasured(points: list[dict]) -> list[str]:
    """A line per goal size with no point: how long it would take at the largest measured size's rates."""
    ours = [p for p in points if p["engine"].startswith("kfrelease") and "seconds" in p and p["format"] == ".csv.gz"]
    if not ours:
        return []
    ref = max(ours, key=lambda p: p["objects"])
    per_object = ref["seconds"] / ref["objects"]
    write = ref.get("upload_seconds", 0.0) / ref["objects"]
    lines = []
    for n in GOAL_SIZES:
        if any(p["objects"] == n for p in points):
            continue
        hours = n * (per_object + write) / 3600
        lines.append(
            f"- {n}x ({n * ROWS_PER_OBJECT:,} rows, {n * ref['source_mb'] / ref['objects'] / 1000:,.1f} GB of .csv.gz): "
            f"not measured; at the {ref['objects']}x run's rates ({per_object:.0f} s to publish and "
            f"{write:.0f} s to write and upload per object, load {ref['load'][0]:.0f}) it takes about {hours:.1f} h"
        )
    return lines


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def _table(points: list[dict]) -> str:
    lines = [
        "### Publishing a curated version: time and peak memory by size",
        "",
        (
            f"`run_data_pipeline` (ingest, validate, features, publish to the embedded SeaweedFS) in a fresh process; "
            f"objects of {ROWS_PER_OBJECT:,} rows of the diabetes schema (unique ids across objects); "
            f"{os.cpu_count()} shared cores."
        ),
        "",
        "| size | rows | sources | engine | publish s | peak MiB | rows/s | load before → after |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        rows = p["objects"] * ROWS_PER_OBJECT
        src = f"{p['objects']} x {p['format']} ({p['source_mb']:,.0f} MB)"
        load = f"{p['load'][0]:.1f} → {p['load'][1]:.1f}"
        if "error" in p:
            lines.append(f"| {p['objects']}x | {rows:,} | {src} | {p['engine']} | failed: {p['error']} | | | {load} |")
            continue
        lines.append(
            f"| {p['objects']}x | {rows:,} | {src} | {p['engine']} | {p['seconds']:.1f} | {p['peak_mb']:.0f} | "
            f"{rows / p['seconds']:,.0f} | {load} |"
        )
    ours = [p for p in points if p["engine"].startswith("kfrelease") and "peak_mb" in p]
    peaks = [p["peak_mb"] for p in ours]
    if peaks:
        flat = max(peaks) / min(peaks)
        met = max(peaks) < GOAL_MB and flat < FLAT
        missing = [f"{n}x" for n in GOAL_SIZES if not any(p["objects"] == n for p in points)]
        verdict = ("met" if met else "not met") + (
            f" up to the largest size measured ({', '.join(missing)} not)" if missing else ""
        )
        lines += [
            "",
            (
                f"- goal (peak memory flat in the file size, under 2 GiB): **{verdict}**: peak "
                f"{min(peaks):.0f} to {max(peaks):.0f} MiB over {min(p['objects'] for p in ours)}x to "
                f"{max(p['objects'] for p in ours)}x (largest / smallest {flat:.2f}; flat: below {FLAT})"
            ),
        ]
    peer = [p for p in points if not p["engine"].startswith("kfrelease")]
    same = [p for p in ours if p["objects"] == 1 and p["format"] == ".csv"]
    if peer and same and "version" in peer[0] and "version" in same[0]:
        agree = "the same version id" if peer[0]["version"] == same[0]["version"] else "DIFFERENT version ids"
        lines.append(
            f"- 1x: {peer[0]['engine']} {peer[0]['seconds']:.0f} s and {peer[0]['peak_mb']:,.0f} MiB, streaming "
            f"{same[0]['seconds']:.0f} s and {same[0]['peak_mb']:,.0f} MiB; {agree} ({same[0]['version']}); the peer "
            "is not run beyond 1x (about 16 times the file in memory)"
        )
    lines += unmeasured(points)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
