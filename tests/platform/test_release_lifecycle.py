"""``kfrelease down`` stops the releases in flight before the services, so that none of them can start or
move anything after it; their records say ``interrupted`` (what ``kfrelease up`` resumes).

The process here stands in for a release runner: like ``handover.start_release`` starts it, in a session
of its own with a child (as kfp.local's task processes are), recorded in ``releases/<model>/<V>.json``."""

from __future__ import annotations

import json
import subprocess
import sys

from kfrelease.config import Settings
from kfrelease.release.lifecycle import stop_releases
from kfrelease.stack.supervisor import pid_alive
from tests.waiting import eventually


def _record(settings, model, version, pid):
    path = settings.home / "releases" / model / f"{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "version": version, "pid": pid, "log": "-", "spec": None}))
    return path


def test_stop_releases_stops_each_runner_and_its_children_and_marks_it_interrupted(tmp_path):
    settings = Settings(home=tmp_path)
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(120)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        eventually(
            lambda: runner.poll() is not None or (child_pid_file.exists() and child_pid_file.read_text()),
            30,
            "the stand-in runner writing its child's pid",
        )
        assert runner.poll() is None, "the stand-in runner died"
        child = int(child_pid_file.read_text())
        running = _record(settings, "alpha", "V1.2.0", runner.pid)
        finished = _record(settings, "beta", "V2.1.0", 999_999_999)  # a release that ended long ago

        assert stop_releases(settings) == ["alpha V1.2.0"]
        runner.wait(timeout=20)
        assert not pid_alive(runner.pid) and not pid_alive(child), "the runner or its task survived"
        assert json.loads(running.read_text())["interrupted"] is True
        assert "interrupted" not in json.loads(finished.read_text())
        assert stop_releases(settings) == []  # nothing left to stop
    finally:
        if runner.poll() is None:
            runner.kill()
