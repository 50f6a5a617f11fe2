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
**Goal:** peak memory flat in the file size and under 2 GiB, within the budget the publish declares (``budget``,
listed under the table).

The sources are written by two processes (Arrow-vectorised: 100 objects written and uploaded in 10 minutes, not
the 50 minutes of one f-string per row) while the previous object uploads. While a size runs, the measured
process's log says each object it has read (so a long run shows its rate), and the run keeps
``BENCH_PUBLISH_MIN_FREE_GB`` (default 10) free on the disk: below it, it stops uploading, or stops the publish,
and records why with what the publish had read by then and its peak memory so far (not a point of its size).

Results are written after each size, so a run stopped early keeps what it measured. ``BENCH_PUBLISH_KEEP=1``
keeps the points of sizes this run does not measure from the last ``publish.json`` (e.g. a second run of
``BENCH_PUBLISH_SIZES=30`` beside an earlier 1x and 10x). A size of the goal (1, 10, 100) with no point is listed
under the table with the time it would take at the largest measured size's rates (writing and uploading the
sources, publishing), so that a size left out says why.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
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
#: The publish's log line for each source object read (``kfrelease.data.ingest``).
READ = re.compile(r"read \S+: (\d+) rows")
#: Free disk the run keeps: below it, it stops uploading or stops the publish and records why.
MIN_FREE_GB = float(os.environ.get("BENCH_PUBLISH_MIN_FREE_GB", "10"))
#: "Flat": the largest size's peak memory within this factor of the smallest's.
FLAT = 1.5

RUN = """
import json, logging, sys, time
import kfrelease
logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(message)s")
logging.getLogger("kfrelease.data.ingest").setLevel(logging.INFO)  # "read <key>: <rows> rows", one line per object
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
    """Object ``k``: ``rows`` rows drawn (seed ``k``) from the patients, ids ``k * rows + 1 ...``.

    Vectorised with Arrow (the ids cast to text, each joined to its drawn line): the same text, line for line,
    as one Python f-string per row, in a tenth of the time (``tests/test_bench_publish.py``), so that writing
    100 objects does not take longer than publishing them."""
    import zlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(k)
    table = pa.array([line + "\n" for line in lines], type=pa.large_string())
    gz = path.suffix == ".gz"
    with open(path, "wb") as f:
        # one gzip stream (wbits 31: a gzip header and trailer) at the same level 1 as gzip.open(compresslevel=1)
        pack = zlib.compressobj(1, zlib.DEFLATED, 31) if gz else None
        write = (lambda b: f.write(pack.compress(b))) if gz else f.write
        write(header.encode() + b"\n")
        first = k * rows + 1
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            pick = rng.integers(0, len(lines), n)
            ids = pc.cast(pa.array(np.arange(first + start, first + start + n, dtype=np.int64)), pa.large_string())
            text = pc.binary_join_element_wise(ids, table.take(pa.array(pick)), pa.scalar(",", pa.large_string()))
            offsets = text.buffers()[1]
            end = np.frombuffer(offsets, dtype=np.int64)[text.offset + len(text)]
            begin = np.frombuffer(offsets, dtype=np.int64)[text.offset]
            write(memoryview(text.buffers()[2])[begin:end])
        if gz:
            f.write(pack.flush())


def _upload(store, prefix: str, objects: int, suffix: str, work: Path, disk: DiskGuard) -> int:
    """Write and upload ``objects`` objects, two written at a time (separate processes) while the finished one is
    uploaded, each removed once uploaded: at most three on local disk at once."""
    from concurrent.futures import ProcessPoolExecutor

    from kfrelease.demo.data import diabetes_frame

    lines, header = _lines(), ",".join(diabetes_frame().columns)
    size, started = 0, time.monotonic()
    with ProcessPoolExecutor(GENERATORS) as pool:
        pending = {}
        for k in range(objects):
            disk.check()
            path = work / f"part-{k:03d}{suffix}"
            pending[k] = (path, pool.submit(write_object, path, k, ROWS_PER_OBJECT, lines, header))
            if k >= GENERATORS:
                size += _put(store, prefix, *pending.pop(k - GENERATORS), started)
        for k in sorted(pending):
            size += _put(store, prefix, *pending[k], started)
    return size


def _put(store, prefix: str, path: Path, written, started: float) -> int:
    written.result()
    size = path.stat().st_size
    store.put_file("raw", f"{prefix}{path.name}", str(path))
    path.unlink()
    print(f"{time.monotonic() - started:7.0f} s uploaded {prefix}{path.name} ({size / 1e6:.0f} MB)", flush=True)
    return size


class DiskFull(RuntimeError):
    pass


class DiskGuard:
    """Keeps ``MIN_FREE_GB`` free on the disk of ``path``: ``check`` raises ``DiskFull`` below it, and a thread
    checks every few seconds and stops ``proc`` (the measured publish) when it is set. ``lowest``: the least free
    space seen, in GB."""

    def __init__(self, path: Path, every: float = 5.0):
        import threading

        self.path, self.every, self.proc, self.full = path, every, None, ""
        self.lowest = self.free()
        self.hwm = 0.0  # the measured process's peak resident memory (MiB), as last read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def free(self) -> float:
        return shutil.disk_usage(self.path).free / 1e9

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()
            free = self.free()
            self.lowest = min(self.lowest, free)
            if free < MIN_FREE_GB and not self.full:
                self.full = f"stopped: {free:.1f} GB free on {self.path}, below the {MIN_FREE_GB:.0f} GB kept free"
                print(self.full, flush=True)
                if self.proc is not None:
                    self.proc.kill()

    def sample(self) -> None:
        """The measured process's ``VmHWM`` so far (kept when it is stopped before it reports its own)."""
        proc = self.proc
        if proc is None:
            return
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) / 1024)
        except OSError:
            pass

    def check(self) -> None:
        free = self.free()
        self.lowest = min(self.lowest, free)
        if free < MIN_FREE_GB and not self.full:
            self.full = f"stopped: {free:.1f} GB free on {self.path}, below the {MIN_FREE_GB:.0f} GB kept free"
        if self.full:
            raise DiskFull(self.full)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _measure(spec_text: str, env: dict, pythonpath: str, cwd: Path, disk: DiskGuard) -> dict:
    """``RUN`` in a fresh process whose ``kfrelease`` is the one in ``pythonpath`` (run outside the repository, so
    that the current folder, first on ``sys.path``, does not shadow it). Its log (one line per source object read)
    is echoed as it comes, so that a long run shows its rate."""
    disk.check()
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, spec_text],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**env, "PYTHONPATH": pythonpath},
    )
    disk.proc, disk.hwm = proc, 0.0
    last = ["no output"]
    progress = {"objects_read": 0, "rows_read": 0, "read_seconds": 0.0}
    try:
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                if not line.startswith((" ", "Possible solutions", "* ", "See also")):
                    last.append(line)  # the exception's own line, not its traceback or its hints
                    del last[:-1]
                read = READ.search(line)
                if read:
                    progress["objects_read"] += 1
                    progress["rows_read"] += int(read.group(1))
                    progress["read_seconds"] = time.monotonic() - started
                print(f"{time.monotonic() - started:7.0f} s {line}", flush=True)
        stdout = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        disk.proc = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if disk.full or proc.returncode != 0:
        # what it got through before it stopped: objects and rows read, in how long, and its peak memory so far
        return {"error": disk.full or last[-1], **progress, "peak_mb_sampled": round(disk.hwm, 1)}
    return {**json.loads(stdout.strip().splitlines()[-1]), **progress}


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
    disk = DiskGuard(home)
    out = []
    try:
        supervisor.up(settings, declared_services(settings, ("core",)))
        store = store_for("data-engineer", settings)
        name = f"bench-{objects}x{suffix.replace('.', '-')}"
        started = time.monotonic()
        measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        try:
            size = _upload(store, f"{name}/", objects, suffix, home, disk)
        except DiskFull as exc:
            load = os.getloadavg()[0]
            out.append({"error": str(exc), "engine": runs[-1][0], "objects": objects, "format": suffix,
                        "source_mb": 0.0, "load": [load, load], "measured": measured})  # fmt: skip
            return out
        uploaded = time.monotonic() - started
        print(f"{objects} object(s) of {ROWS_PER_OBJECT:,} rows ({suffix}, {size / 1e6:,.0f} MB) written and uploaded "
              f"in {uploaded:.0f} s; {disk.free():.1f} GB free", flush=True)  # fmt: skip
        for engine, pythonpath in runs:
            load = os.getloadavg()[0]
            m = _measure(_spec(name), env, pythonpath, home, disk)
            if "code" in m and not m["code"].startswith(pythonpath):
                raise RuntimeError(f"{engine} ran the kfrelease of {m['code']}, not of {pythonpath}")
            m.update(
                engine=engine,
                objects=objects,
                format=suffix,
                source_mb=size / 1e6,
                upload_seconds=uploaded,
                load=[load, os.getloadavg()[0]],
                measured=measured,
                lowest_free_gb=round(disk.lowest, 1),
            )
            print(json.dumps(m), flush=True)
            out.append(m)
    finally:
        disk.close()
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
        if any(p["objects"] == n and "seconds" in p for p in points):
            continue
        if any(p["objects"] == n and p.get("objects_read") for p in points):
            lines.append(
                f"- {n}x ({n * ROWS_PER_OBJECT:,} rows): no version published (the row above says where it failed)"
            )
            continue
        hours = n * (per_object + write) / 3600
        lines.append(
            f"- {n}x ({n * ROWS_PER_OBJECT:,} rows, {n * ref['source_mb'] / ref['objects'] / 1000:,.1f} GB of .csv.gz): "
            f"not measured; at the {ref['objects']}x run's rates ({per_object:.0f} s to publish and "
            f"{write:.0f} s to write and upload per object, load {ref['load'][0]:.0f}) it takes about {hours:.1f} h"
        )
    return lines


def budget() -> str:
    """The memory budget the publish declares, as the code declares it (``kfrelease.data``): what it holds
    whatever the size of the data."""
    from kfrelease.data.ingest import BLOCK_BYTES
    from kfrelease.data.validate import DUPLICATES_MEMORY, DUPLICATES_THREADS, Duplicates

    return (
        f"- memory budget (declared in `kfrelease.data`): one batch at a time ({BLOCK_BYTES >> 20} MiB of CSV, "
        f"`ingest.BLOCK_BYTES`); the unique-column check holds {Duplicates.IN_MEMORY_VALUES:,} values during the "
        f"pass (the rest go to a file) and sorts them after it in DuckDB with memory_limit {DUPLICATES_MEMORY} and "
        f"{DUPLICATES_THREADS} threads (`validate.DUPLICATES_MEMORY`, `DUPLICATES_THREADS`), spilling beyond"
    )


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
        "| size | rows | sources | engine | publish s | peak MiB | rows/s | load before → after | measured |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for p in points:
        rows = p["objects"] * ROWS_PER_OBJECT
        src = f"{p['objects']} x {p['format']} ({p['source_mb']:,.0f} MB)"
        load = f"{p['load'][0]:.1f} → {p['load'][1]:.1f} | {p.get('measured', '')}"
        if "error" in p and p.get("objects_read"):
            # stopped part way: what it read, how fast, and its peak memory until then; not a point of its size
            lines.append(
                f"| {p['objects']}x | {p['rows_read']:,} read | {src} | {p['engine']} | failed after reading "
                f"{p['objects_read']} of {p['objects']} objects in {p['read_seconds']:.0f} s: {p['error']} | "
                f"{p['peak_mb_sampled']:.0f} so far | {p['rows_read'] / p['read_seconds']:,.0f} | {load} |"
            )
            continue
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
        missing = [f"{n}x" for n in GOAL_SIZES if not any(p["objects"] == n for p in ours)]
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
    lines.append(budget())
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
