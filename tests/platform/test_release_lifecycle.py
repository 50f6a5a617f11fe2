"""``kfrelease down`` stops the releases in flight before the services, so that none of them can start or
move anything after it; their records say ``interrupted`` (what ``kfrelease up`` resumes).

The process here stands in for a release runner: like ``handover.start_release`` starts it, in a session
of its own with a child (as kfp.local's task processes are), recorded in ``releases/<model>/<V>.json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kfrelease.config import Settings
from kfrelease.errors import Conflict
from kfrelease.release.embedded import ReleaseLock, lock_path
from kfrelease.release.lifecycle import stop_releases
from kfrelease.stack.supervisor import pid_alive, process_started
from tests.waiting import eventually


def _record(settings, model, version, pid, started=None):
    path = settings.home / "releases" / model / f"{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": model, "version": version, "pid": pid, "pid_started": started, "log": "-", "spec": None}
    path.write_text(json.dumps(record))
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


def test_a_release_record_or_lock_whose_pid_is_another_programs_now_names_no_runner(tmp_path):
    """pids wrap (32768 here): once a release runner ended, its pid may be another program's. Its record and its
    model's release lock name the runner by pid and start time (``supervisor.process_identity``), so that
    program is not taken for it: ``kfrelease down`` neither marks the release interrupted nor signals the
    program (it SIGTERMed its group), and the model's next release takes the lock at once (it waited for the
    program, up to the hand-over's hour). Named by its own start time, the same program is the runner."""
    settings = Settings(home=tmp_path)
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        started = eventually(lambda: process_started(other.pid), 10, "the other program started")
        record = _record(settings, "alpha", "V1.2.0", other.pid, started - 1)  # the runner that had the pid
        lock = lock_path(settings, "alpha")
        lock.write_text(f"{other.pid} V1.2.0 {started - 1}\n")
        assert stop_releases(settings) == []
        assert "interrupted" not in json.loads(record.read_text())
        with ReleaseLock(settings, "alpha", "V1.3.0"):  # no wait: a live holder would raise Conflict
            assert lock.read_text().split()[:2] == [str(os.getpid()), "V1.3.0"]
        assert other.poll() is None, "the other program was signalled"

        _record(settings, "alpha", "V1.2.0", other.pid, started)
        lock.write_text(f"{other.pid} V1.2.0 {started}\n")
        with pytest.raises(Conflict, match="a release of V1.2.0 is running"):
            ReleaseLock(settings, "alpha", "V1.3.0").__enter__()
        assert stop_releases(settings) == ["alpha V1.2.0"]
        assert other.wait(timeout=20) is not None and not pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_takers_racing_for_a_dead_holders_lock_never_hold_it_together(tmp_path):
    """The release lock is taken over from a dead holder (its pid ended). Takers that race for it (the hand-over
    queues a model's releases, each polling the lock) must not both hold it: each checks and takes under the
    lock's guard, and the record is written whole, so no taker reads a half-written record as a dead holder's and
    none removes a record another taker has just written. 40 rounds of 6 threads released at once on a dead
    holder's record (threads: one pid, so a taken record reads as a live holder to the others)."""
    import threading
    import time

    settings = Settings(home=tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = lock_path(settings, "alpha")
    lock.parent.mkdir(parents=True, exist_ok=True)
    holding, most, problems = [0], [0], []
    guard = threading.Lock()

    def take(barrier):
        barrier.wait()
        try:
            with ReleaseLock(settings, "alpha", "V1.3.0"):
                with guard:
                    holding[0] += 1
                    most[0] = max(most[0], holding[0])
                time.sleep(0.005)
                with guard:
                    holding[0] -= 1
        except Conflict:
            pass
        except Exception as exc:  # noqa: BLE001 - any other failure is the test's finding
            problems.append(repr(exc))

    for _ in range(40):
        lock.write_text(f"{gone.pid} V1.2.0\n")  # a dead holder's record (written before start times)
        barrier = threading.Barrier(6)
        threads = [threading.Thread(target=take, args=(barrier,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
    assert problems == []
    assert most[0] == 1, f"{most[0]} takers held the release lock at once"
    assert not lock.exists()  # the last holder removed its own record
