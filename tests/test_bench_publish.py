"""The publish benchmark's own parts: its source objects hold the rows a line-per-row writer would, and its disk
guard stops a run before it fills the disk (bench/bench_publish.py)."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import bench_publish
from bench.bench_publish import DiskFull, DiskGuard, write_object
from tests.waiting import eventually

LINES = ["0.03,1,-0.0446,151.0", "-0.0019,2,0.0507,75.0", "0.085,1,-1e-05,141.0"]


def _one_line_per_row(path: Path, k: int, rows: int, lines: list[str], header: str) -> None:
    """The writer the 1x and 10x rows were measured with (one f-string per row): the reference."""
    rng = np.random.default_rng(k)
    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write(header + "\n")
        first = k * rows + 1
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            pick = rng.integers(0, len(lines), n).tolist()
            f.write("".join(f"{first + start + i},{lines[p]}\n" for i, p in enumerate(pick)))


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv"])
def test_an_object_holds_the_same_text_as_one_line_per_row(tmp_path, suffix):
    """Object 3 of 1.2M rows (two chunks of the seeded draw): the vectorised writer's text is the reference's,
    byte for byte, so the 100x row reads the same rows the 1x and 10x rows read (a wrong id offset, a lost chunk
    or a missing newline fails here)."""
    rows = 1_200_000
    _one_line_per_row(tmp_path / "ref.csv.gz", 3, rows, LINES, "patient_id,a,b,c,y")
    write_object(tmp_path / f"new{suffix}", 3, rows, LINES, "patient_id,a,b,c,y")
    new = (tmp_path / f"new{suffix}").read_bytes()
    if suffix == ".csv.gz":
        new = gzip.decompress(new)
    ref = gzip.decompress((tmp_path / "ref.csv.gz").read_bytes())
    assert new == ref
    assert new.count(b"\n") == rows + 1
    assert new.split(b"\n")[1].startswith(f"{3 * rows + 1},".encode())


def test_the_disk_guard_stops_the_measured_process_below_the_free_space_kept(tmp_path, monkeypatch):
    """With more free space asked than the disk has, the guard refuses to go on and kills the measured process,
    saying why, having read its peak memory first."""
    monkeypatch.setattr(bench_publish, "MIN_FREE_GB", 1e9)
    guard = DiskGuard(tmp_path, every=0.1)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        guard.proc = proc
        eventually(lambda: proc.poll() is not None, 20, "the guard stopping the measured process")
        assert proc.returncode == -9
        assert guard.full.startswith("stopped: ") and "below the 1000000000 GB kept free" in guard.full
        assert guard.hwm > 1  # MiB: a Python interpreter
        with pytest.raises(DiskFull):
            guard.check()
    finally:
        proc.kill()
        proc.wait()
        guard.close()


def test_the_disk_guard_lets_a_run_go_on_while_the_space_is_there(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_publish, "MIN_FREE_GB", 0.0)
    guard = DiskGuard(tmp_path, every=0.1)
    try:
        guard.check()
        assert guard.full == "" and guard.lowest > 0
    finally:
        guard.close()
