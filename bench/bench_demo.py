"""Wall time of the full demo flow (`kfrelease demo`: stack up -> data -> merge 1 -> production; merge 2 ->
shadow -> canary -> promoted; merge 3 -> shadow -> rejected) in a fresh home on free ports; goal < 5 min
on 2 cores. Writes bench/results/demo.json and demo.md."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GOAL_SECONDS = 300.0


def _offset() -> int:
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import free_port_offset

    return free_port_offset()


def main() -> dict:
    home = Path(tempfile.mkdtemp(prefix="kfrelease-bench-demo-"))
    env = {
        **os.environ,
        "KFRELEASE_HOME": str(home),
        "KFRELEASE_PORT_OFFSET": str(_offset()),
        "COLUMNS": "200",
    }
    env.pop("KFRELEASE_ROLLOUT_SPEC", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    wall = time.monotonic() - started
    subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", "down"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    steps = [
        (m.group(1), float(m.group(2)))
        for m in re.finditer(r"\d+/\d+ (.+?)\s*─*\n(?:.*\n)*?done in ([\d.]+) s", proc.stdout)
    ]
    load = os.getloadavg()[0]
    result = {
        "wall_seconds": round(wall, 1),
        "goal_seconds": GOAL_SECONDS,
        "met": proc.returncode == 0 and wall < GOAL_SECONDS,
        "exit_code": proc.returncode,
        "load_1m": round(load, 1),
        "cpus": os.cpu_count(),
        "steps": steps,
        "tail": proc.stdout[-1500:],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(result, indent=2))
    md = [
        f"### Full demo flow (`kfrelease demo`), {os.cpu_count()} shared cores, load {load:.1f}",
        "",
        "| step | wall time (s) |",
        "| --- | ---: |",
    ]
    md += [f"| {name} | {sec:.1f} |" for name, sec in steps]
    md += [
        f"| **total** (exit code {proc.returncode}) | **{wall:.1f}** |",
        "",
        f"Goal < {GOAL_SECONDS:.0f} s: **{'met' if result['met'] else 'not met'}**.",
    ]
    (RESULTS / "demo.md").write_text("\n".join(md) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in main().items() if k != "tail"}, indent=2))
