"""Start, probe and stop embedded services as detached processes with pid records and one log each.

State lives under the data directory: ``run/<name>.json`` (pid, port, url, command), ``logs/<name>.log``,
``services/<name>/`` (the service's own data). ``up`` on a running stack changes nothing; ``down`` stops
every recorded process group and waits until it is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.errors import StackError
from kfrelease.locks import exclusive_lock
from kfrelease.stack.service import Service

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
#: The watchdog's back-off after a failed restart: first retry after this many seconds, doubling each time.
RESTART_BACKOFF = 0.5
#: ... up to this many seconds between two restart attempts of the same service.
RESTART_BACKOFF_MAX = 30.0
#: The service that restarts the others when they die (``kfrelease.stack.watchdog``).
WATCHDOG = "watchdog"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    pid: int | None
    note: str = ""


def _record_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def service_lock(settings: Settings, name: str):
    """One start or stop of a service at a time (the CLI, a release and the watchdog may race)."""
    return exclusive_lock(settings.run_dir / f"{name}.lock")


def _read_record(settings: Settings, name: str) -> dict | None:
    path = _record_path(settings, name)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        log.warning("pid record %s is unreadable; treating %s as stopped", path, name)
        return None


def records(settings: Settings) -> list[dict]:
    if not settings.run_dir.exists():
        return []
    out = []
    for path in sorted(settings.run_dir.glob("*.json")):
        rec = _read_record(settings, path.stem)
        if rec:
            out.append(rec)
    return out


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, process group, start time)`` of ``pid`` from ``/proc/<pid>/stat`` (fields 3, 5 and 22; the start
    time in clock ticks after boot, exact, unlike a wall-clock time derived from it), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after "pid (comm)": a comm may hold ") "
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[19])


def process_started(pid: int | None) -> int | None:
    """When process ``pid`` started (clock ticks after boot), None if there is none: recorded with a pid, it tells
    that process from another one the kernel gives the same pid once it is gone (pids wrap: 32768 here)."""
    stat = _proc_stat(pid) if pid else None
    return stat[2] if stat else None


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """True while process ``pid`` runs: a zombie (exited, not yet reaped by its parent: ``kill(pid, 0)`` still
    succeeds) does not, nor, given ``started`` (its ``process_started`` when it was recorded), another process
    that has the same pid since."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return False  # gone (and reaped) since the kill
    state, _, start = stat
    return state != "Z" and (started is None or start == started)


def probe(url: str, timeout: float = 1.0) -> bool:
    try:
        return httpcalls.get(url, timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_holder(port: int) -> str:
    """Which process listens on ``port`` (pid and command line), for an error message."""
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid}: {' '.join(psutil.Process(conn.pid).cmdline())[:160]}"
    except psutil.Error:
        pass
    return "process unknown"


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return " | ".join(tail) or "(log is empty)"


def _check_executables(service: Service) -> None:
    for exe, package in service.executables.items():
        if shutil.which(exe) is None and not Path(exe).is_file():
            raise StackError(
                f"{service.name}: program {exe!r} is not installed; install the Debian package {package!r} "
                f"(`apt-get install -y {package}`, or run `make setup`)"
            )


def service_status(settings: Settings, name: str) -> ServiceStatus:
    rec = _read_record(settings, name)
    if rec is None:
        return ServiceStatus(name, "", False, None, "not started")
    alive = record_alive(rec)
    healthy = alive and probe(rec["health_url"])
    note = "" if healthy else ("process exited; see " + rec.get("log", "its log") if not alive else "not answering")
    if not alive and rec.get("restart_failures"):
        note = (
            f"restart failed {rec['restart_failures']} time(s), next try at "
            f"{time.strftime('%H:%M:%S', time.localtime(rec.get('retry_at', 0)))}; see {rec.get('log', 'its log')}"
        )
    return ServiceStatus(name, rec["url"], healthy, rec.get("pid") if alive else None, note)


def wait_ready(settings: Settings, service: Service, proc: subprocess.Popen | None, log_path: Path) -> None:
    """Probe until the service is ready (back-off 0.05 s to 0.5 s); a process that exits meanwhile, or no
    readiness within its ``startup_timeout``, is a ``StackError`` with the tail of its log."""

    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{service.name} exited with code {proc.returncode} while starting; log {log_path}: "
                f"{_log_tail(log_path)}"
            )
        return probe(service.health_url) and (service.ready is None or service.ready(settings))

    poll = Retrying(
        stop=stop_after_delay(service.startup_timeout),
        wait=wait_exponential(multiplier=0.05, exp_base=1.5, max=0.5),
        retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda _: False,
    )
    if poll(ready):
        return
    raise StackError(
        f"{service.name} did not become ready at {service.health_url} within {service.startup_timeout:.0f} s; "
        f"log {log_path}: {_log_tail(log_path)}"
    )


def start_service(settings: Settings, service: Service, launch: Launcher | None = None) -> ServiceStatus:
    """Start one service unless it already runs healthy; wait until it is ready. ``launch``: how to start its
    process (default ``subprocess.Popen``)."""
    with service_lock(settings, service.name):
        return _start_service(settings, service, launch)


#: ``(service, env, cwd, log_path) -> process`` (``pid``, ``poll()``, ``returncode``): how a service is launched
#: when not by ``subprocess.Popen`` (the watchdog's warm spare for model servers, ``kfrelease.stack.spare``).
Launcher = Callable[[Service, dict, Path, Path], object]


def spawn(service: Service, env: dict, cwd: Path, log_path: Path) -> subprocess.Popen:
    """The default launcher: ``service``'s command in its own process group (``down`` stops it and its
    children), output appended to ``log_path``."""
    return start_detached(service.command, log_path, env, cwd)


def start_detached(argv: list[str], log_path: Path, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    """``argv`` in a session of its own (it outlives the caller and ignores its Ctrl-C; its process group can be
    stopped as one), no stdin, stdout and stderr appended to ``log_path``: a stack service, a local training run's
    runner, a background release."""
    with open(log_path, "ab") as log_fh:
        return subprocess.Popen(
            argv,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def _start_service(settings: Settings, service: Service, launch: Launcher | None = None) -> ServiceStatus:
    current = service_status(settings, service.name)
    if current.healthy:
        return ServiceStatus(service.name, current.url, True, current.pid, "already running")
    rec = _read_record(settings, service.name)
    if rec and record_alive(rec):
        _stop_service(settings, service.name)  # running but unhealthy: restart it cleanly
    if port_in_use(service.port):  # checked before the record goes: a restart that fails here is retried
        raise StackError(
            f"{service.name}: port {service.port} on 127.0.0.1 is taken by another program "
            f"({port_holder(service.port)}); stop it, or move "
            f"this stack with KFRELEASE_PORT_OFFSET=1000 (or KFRELEASE_{service.name.upper().replace('-', '_')}_PORT)"
        )
    _record_path(settings, service.name).unlink(missing_ok=True)
    _check_executables(service)
    for d in (settings.run_dir, settings.log_dir, settings.service_dir(service.name)):
        d.mkdir(parents=True, exist_ok=True)
    if service.prepare:
        service.prepare(settings)
    log_path = settings.log_dir / f"{service.name}.log"
    env = {**os.environ, **service.env}
    with open(log_path, "ab") as log_fh:
        log_fh.write(f"\n--- start {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(service.command)}\n".encode())
        log_fh.flush()
    proc = (launch or spawn)(service, env, settings.service_dir(service.name), log_path)
    record = {
        "name": service.name,
        **process_identity(proc.pid),
        "port": service.port,
        "url": service.url,
        "health_url": service.health_url,
        "group": service.group,
        "command": service.command,
        "health_path": service.health_path,
        "env": service.env,
        "restart": service.restart,
        "startup_timeout": service.startup_timeout,
        "log": str(log_path),
        "started_at": time.time(),
    }
    _write_record(settings, service.name, record)
    try:
        wait_ready(settings, service, proc, log_path)
        if service.after_start:
            service.after_start(settings)
    except BaseException:
        _stop_service(settings, service.name)
        raise
    log.info("%s ready at %s (pid %d)", service.name, service.url, proc.pid)
    return ServiceStatus(service.name, service.url, True, proc.pid, "started")


def stop_service(settings: Settings, name: str) -> bool:
    """Stop a service's whole process group; True if something was running. The watchdog does not
    restart it (its record says ``stopping`` until it is gone)."""
    with service_lock(settings, name):
        return _stop_service(settings, name)


def _stop_service(settings: Settings, name: str) -> bool:
    rec = _read_record(settings, name)
    if rec is None:
        return False
    if not rec.get("stopping"):
        rec["stopping"] = True
        _write_record(settings, name, rec)
    pid = rec.get("pid")
    was_running = record_alive(rec)
    if was_running and not stop_process_group(pid, started=rec.get("pid_started")):
        raise StackError(
            f"{name} (pid {pid}) did not stop after SIGKILL: {group_members(pid) or 'its group is gone now'}; "
            f"check it with `ps -p {pid}`"
        )
    _record_path(settings, name).unlink(missing_ok=True)
    return was_running


def process_identity(pid: int | None = None) -> dict:
    """``{"pid", "pid_started"}`` of process ``pid`` (default: this one): what every record of a process holds
    (a service's, a training runner's, a release runner's and its model's release lock), so that
    ``record_alive`` never takes another program the kernel later gives the pid for that process."""
    pid = pid or os.getpid()
    return {"pid": pid, "pid_started": process_started(pid)}


def record_alive(rec: dict) -> bool:
    """True while the process a record names (``process_identity``) runs: the same process, see ``pid_alive``
    (a record without a start time is judged by its pid alone)."""
    return pid_alive(rec.get("pid"), rec.get("pid_started"))


def write_whole(path: Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` so that no reader sees it half written: a temporary file of this process beside
    it, renamed over it (``mode``: its permissions, before the rename). The one way this machine's processes
    write the records others read (services, runners, releases, the release lock, the gateway's state)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_record(settings: Settings, name: str, record: dict) -> None:
    write_whole(_record_path(settings, name), json.dumps(record, indent=2))


def service_from_record(rec: dict) -> Service:
    """The declaration a recorded service was started from (what the watchdog restarts)."""
    return Service(
        name=rec["name"],
        port=rec["port"],
        command=list(rec["command"]),
        health_path=rec.get("health_path", "/"),
        group=rec.get("group", "core"),
        env=dict(rec.get("env") or {}),
        startup_timeout=float(rec.get("startup_timeout", 60.0)),
        restart=bool(rec.get("restart")),
    )


def restart_if_dead(settings: Settings, name: str, launch: Launcher | None = None) -> bool:
    """Restart a service that should run (``restart``, not being stopped) and whose process is gone; True
    if it was restarted. Its ``prepare`` is not run again: its config files are already in place.

    A restart that fails (the new process dies while starting, or is not ready in time) keeps the service's
    record, with ``restart_failures``, ``last_error`` and ``retry_at`` (back-off ``RESTART_BACKOFF`` s doubling
    to ``RESTART_BACKOFF_MAX`` s): the next call tries again once ``retry_at`` has passed, so a server killed
    again in its first second is restarted again, and one that cannot start is retried without a hot loop.
    The error is raised for the caller to log."""
    with service_lock(settings, name):
        rec = _read_record(settings, name)
        if not rec or not rec.get("restart") or rec.get("stopping") or record_alive(rec):
            return False
        if time.time() < rec.get("retry_at", 0.0):
            return False
        log.warning("%s (pid %s) died; restarting it", name, rec.get("pid"))
        _reap(rec.get("pid") or 0)
        try:
            _start_service(settings, service_from_record(rec), launch)
        except Exception as exc:
            failures = int(rec.get("restart_failures", 0)) + 1
            backoff = min(RESTART_BACKOFF * 2 ** (failures - 1), RESTART_BACKOFF_MAX)
            rec.update(restart_failures=failures, last_error=str(exc)[:2000], retry_at=time.time() + backoff)
            rec.pop("stopping", None)
            _write_record(settings, name, rec)  # kept (with the dead pid): the watchdog tries again
            raise StackError(f"restart {failures} of {name} failed, next try in {backoff:g} s: {exc}") from exc
        return True


def stop_process_group(pid: int, timeout: float = STOP_TIMEOUT, started: int | None = None) -> bool:
    """SIGTERM the process group led by ``pid``, SIGKILL it if any of it is still there after ``timeout`` s;
    True once the leader and every other member of the group are gone (a child can outlive its leader
    by a moment; zombies count as gone). ``started``: the leader's ``process_started``; once ``pid`` is another
    process, the group is gone (its id cannot be reused while any member lives) and nothing is signalled."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not group_alive(pid, started):
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while group_alive(pid, started) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
    return not group_alive(pid, started)


def group_alive(pgid: int, started: int | None = None) -> bool:
    """True while any process of the group ``pgid`` lives (zombies do not count). ``started``: the leader's
    ``process_started``; when ``pgid`` is now another process's pid, the group is gone: the kernel gives a
    group's id to a new process only once no member is left."""
    leader = _proc_stat(pgid)
    if leader is not None and started is not None and leader[2] != started:
        return False
    if pid_alive(pgid, started):
        return True
    return bool(group_members(pgid))


def group_members(pgid: int) -> str:
    """The live (not zombie) processes of group ``pgid``, as ``pid N (state S, command)``, for a message."""
    out = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                out.append(f"pid {proc.pid} ({proc.info['status']}, {' '.join(proc.cmdline())[:120]})")
        except (ProcessLookupError, psutil.Error):
            continue
    return ", ".join(out)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def up(
    settings: Settings,
    services: Iterable[Service],
    on_progress: Callable[[ServiceStatus], None] | None = None,
) -> list[ServiceStatus]:
    """Start services in order (each waits for readiness before the next starts)."""
    out = []
    for service in services:
        st = start_service(settings, service)
        out.append(st)
        if on_progress:
            on_progress(st)
    return out


def down(settings: Settings, names: Iterable[str] | None = None) -> list[str]:
    """Stop the named services, or every recorded one (last started first; the watchdog first of all, so
    that nothing is restarted behind ``down``). Returns what was stopped."""
    stopped_first = []
    if names is None and stop_service(settings, WATCHDOG):
        stopped_first.append(WATCHDOG)
    recs = records(settings)
    wanted = set(names) if names is not None else None
    recs = [r for r in recs if wanted is None or r["name"] in wanted]
    stopped = []
    for rec in sorted(recs, key=lambda r: r.get("started_at", 0), reverse=True):
        if stop_service(settings, rec["name"]):
            stopped.append(rec["name"])
    return stopped_first + stopped


def status(settings: Settings, services: Iterable[Service]) -> list[ServiceStatus]:
    """Status of every declared service plus any other recorded one (e.g. model servers)."""
    names = [s.name for s in services]
    names += [r["name"] for r in records(settings) if r["name"] not in names]
    return [service_status(settings, n) for n in names]
