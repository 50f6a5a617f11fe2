"""The embedded stack's lifecycle: up waits for readiness, up twice changes nothing, down leaves nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kfrelease.config import DEFAULT_PORTS, Settings
from kfrelease.errors import StackError
from kfrelease.stack import supervisor
from kfrelease.stack.service import Service
from kfrelease.stack.services import declared_services
from tests.conftest import free_port_offset
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def _cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "COLUMNS": "200"},
        timeout=300,
        check=False,
    )


@pytest.fixture
def own_stack(tmp_path):
    """A second, private stack (core services only) for lifecycle tests."""
    env = {"KFRELEASE_HOME": str(tmp_path / "home"), "KFRELEASE_PORT_OFFSET": str(free_port_offset())}
    yield env
    _cli(env, "down")


def test_up_status_up_again_down(own_stack):
    settings = Settings(home=Path(own_stack["KFRELEASE_HOME"]), port_offset=int(own_stack["KFRELEASE_PORT_OFFSET"]))
    first = _cli(own_stack, "up")
    assert first.returncode == 0, first.stderr
    pids = {r["name"]: r["pid"] for r in supervisor.records(settings)}
    assert {"s3", "registry"} <= set(pids)

    st = _cli(own_stack, "status")
    assert st.returncode == 0
    for name, pid in pids.items():  # without a terminal: one plain line per service, its name first
        line = next(l for l in st.stdout.splitlines() if l.split()[:1] == [name])
        assert " yes " in line and str(pid) in line

    again = _cli(own_stack, "up")
    assert again.returncode == 0 and "already running" in again.stdout
    assert {r["name"]: r["pid"] for r in supervisor.records(settings)} == pids  # nothing restarted

    down = _cli(own_stack, "down")
    assert down.returncode == 0
    assert not any(supervisor.pid_alive(p) for p in pids.values())
    assert supervisor.records(settings) == []
    st = _cli(own_stack, "status")
    assert " no " in st.stdout


def test_port_taken_by_another_program_is_explained(stack, tmp_path):
    other = Settings(home=tmp_path, port_offset=stack.port_offset)
    s3_port = stack.port("s3")  # the session stack holds it
    svc = Service(name="dummy", port=s3_port, command=[sys.executable, "-c", "pass"])
    with pytest.raises(StackError, match=f"port {s3_port}.*KFRELEASE_PORT_OFFSET"):
        supervisor.start_service(other, svc)


def test_a_service_that_exits_during_start_reports_its_log(tmp_path):
    settings = Settings(home=tmp_path, port_offset=free_port_offset())
    svc = Service(
        name="broken",
        port=settings.port("gateway"),
        command=[sys.executable, "-c", "import sys; print('config is bad: no listen'); sys.exit(3)"],
        startup_timeout=20,
    )
    with pytest.raises(StackError, match="broken exited with code 3.*config is bad"):
        supervisor.start_service(settings, svc)
    assert supervisor.records(settings) == []


def test_a_private_stack_never_takes_a_port_range_another_stack_of_the_run_claimed(tmp_path, monkeypatch):
    """A test's private stack chose its ports by what was free at that moment, so it could take a range a
    worker's session stack had claimed but not bound yet; its restart then found its port taken by the other
    worker's server (CI, test_a_restart_that_fails_keeps_the_service_and_the_next_one_brings_it_back)."""
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "claims-test")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own claims file
    first = free_port_offset()
    real = random.randrange
    offered = iter([first, first])  # the search first offers the claimed offset again, twice
    monkeypatch.setattr(random, "randrange", lambda *a: next(offered, None) or real(*a))
    second = free_port_offset()

    def ports(offset: int) -> set[int]:
        return {p + offset for p in DEFAULT_PORTS.values()}

    assert second != first and not ports(first) & ports(second)


def http_server_service(tmp_path, name: str) -> tuple[Settings, Service]:
    """A restartable service of the supervisor (Python's http.server on the gateway's port) in its own home."""
    settings = Settings(home=tmp_path, port_offset=free_port_offset())
    port = settings.port("gateway")
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return settings, Service(name=name, port=port, command=command, startup_timeout=30, restart=True)


def test_a_restart_that_fails_keeps_the_service_and_the_next_one_brings_it_back(tmp_path, monkeypatch):
    """A server killed again in its first second (before the watchdog saw it ready) used to lose its record: the
    failed restart's clean-up deleted it, so nothing restarted it ever again (the fault test's kills in a row)."""
    settings, svc = http_server_service(tmp_path, "flaky")
    first = supervisor.start_service(settings, svc)
    os.killpg(first.pid, signal.SIGKILL)
    eventually(lambda: not supervisor.pid_alive(first.pid), 10, "the killed server is gone")

    def dies_while_starting(service, env, cwd, log_path):  # what a second kill during the start looks like
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(9)"], start_new_session=True)

    with pytest.raises(StackError, match=r"restart 1 of flaky failed, next try in 0.5 s: flaky exited with code 9"):
        supervisor.restart_if_dead(settings, "flaky", dies_while_starting)
    (rec,) = supervisor.records(settings)
    assert rec["restart"] and rec["restart_failures"] == 1 and "exited with code 9" in rec["last_error"]
    assert "restart failed 1 time(s)" in supervisor.service_status(settings, "flaky").note

    monkeypatch.setattr(supervisor.time, "time", lambda: rec["retry_at"] - 0.1)  # not before its back-off
    assert supervisor.restart_if_dead(settings, "flaky") is False
    monkeypatch.undo()
    eventually(lambda: supervisor.restart_if_dead(settings, "flaky"), 10, "the next restart after the back-off")
    st = supervisor.service_status(settings, "flaky")
    assert st.healthy and st.pid not in (None, first.pid)
    assert "restart_failures" not in supervisor.records(settings)[0]  # a good start forgets the failures
    supervisor.stop_service(settings, "flaky")


def test_a_recorded_pid_the_kernel_gave_to_another_program_is_not_the_service(tmp_path):
    """pids wrap (32768 here): once a service died, its pid may be another program's. Its record must not make
    that program the service: status says the service exited, the watchdog's restart brings it back, and a
    stop signals nothing (it used to SIGTERM the other program's group, or fail with "did not stop after
    SIGKILL" when that program led no group). The record here is made as a reuse leaves it: the service's pid
    and start time, the pid now a live program's."""
    settings, svc = http_server_service(tmp_path, "reused")
    first = supervisor.start_service(settings, svc)
    (rec,) = supervisor.records(settings)
    assert rec["pid_started"] == supervisor.process_started(first.pid)
    os.killpg(first.pid, signal.SIGKILL)
    eventually(lambda: not supervisor.pid_alive(first.pid), 10, "the killed server is gone")
    for leads_a_group in (True, False):
        other = subprocess.Popen(["sleep", "300"], start_new_session=leads_a_group)
        try:
            eventually(lambda pid=other.pid: supervisor.process_started(pid), 10, "the other program started")
            path = settings.run_dir / "reused.json"
            path.write_text(json.dumps({**json.loads(path.read_text()), "pid": other.pid}))
            st = supervisor.service_status(settings, "reused")
            assert not st.healthy and st.pid is None and st.note.startswith("process exited"), st
            if leads_a_group:
                assert supervisor.restart_if_dead(settings, "reused"), "the watchdog took the other program for it"
                again = supervisor.service_status(settings, "reused")
                assert again.healthy and again.pid not in (first.pid, other.pid)
                os.killpg(again.pid, signal.SIGKILL)
                eventually(lambda pid=again.pid: not supervisor.pid_alive(pid), 10, "the restarted one is gone")
            else:
                assert supervisor.stop_service(settings, "reused") is False
                assert supervisor.records(settings) == []
            assert other.poll() is None, "the other program was signalled"
        finally:
            other.kill()
            other.wait()


def test_missing_program_names_its_debian_package(tmp_path):
    settings = Settings(home=tmp_path, port_offset=free_port_offset())
    svc = Service(
        name="x",
        port=settings.port("gateway"),
        command=["no-such-program-kf"],
        executables={"no-such-program-kf": "kf-package"},
    )
    with pytest.raises(StackError, match="apt-get install -y kf-package"):
        supervisor.start_service(settings, svc)


def test_core_services_are_declared_for_up():
    names = [s.name for s in declared_services(Settings.from_env(), ("core",))]
    assert names[:2] == ["s3", "registry"]
