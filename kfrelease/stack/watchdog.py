"""``python -m kfrelease.stack.watchdog --port P``: restarts the embedded stack's services that die.

Every ``INTERVAL`` seconds it looks at every recorded service whose declaration says ``restart`` (the
gateway, the model servers, the log sink, the feedback service, the web UI) and restarts the ones whose process is
gone, with the recorded command (``supervisor.restart_if_dead``; a service being stopped is left alone).
``kfrelease down`` stops the watchdog first, so nothing is restarted behind it. ``GET /healthz`` answers
``{"status": "ok", "restarts": {name: count}, "spare": "off" | "starting" | "ready", "runs": {action: count}}``.

A model server (group ``serving-models``) is restarted from a warm spare (``kfrelease.stack.spare``): a
process that has already imported KServe and the model-server code forks the recorded command, so a killed
server answers again in a second or two instead of the 10-20 s a fresh KServe process takes here. The spare
starts with the first model server the stack records, runs in the watchdog's process group (it stops with
the watchdog) and is started again if it dies; while it is not ready, a server is restarted the usual way.
A model server's first start (the gateway driver's, when a release puts a candidate in the staging or the
canary slot) is forked from the same spare when it is ready (``warm_launcher``).

Every ``RUNS_INTERVAL`` seconds it also looks for training runs of this machine whose runner died
(``kfrelease.training.execution.recover_runs``: a look at the runners' marker files, the object store only
when one died): what the runner left is stopped, its slot is free, and the run is started again or failed
with the cause. ``/healthz`` counts them in ``runs``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kfrelease.config import LOG_FORMAT, Settings
from kfrelease.stack import spare, supervisor
from kfrelease.stack.service import Service, python_service
from kfrelease.training.execution import gone_runners, recover_runs

log = logging.getLogger(__name__)

INTERVAL = 0.5
#: How often the watchdog looks for training runs whose runner died.
RUNS_INTERVAL = 5.0


def watchdog_service(settings: Settings) -> Service:
    env = {"KFRELEASE_HOME": str(settings.home), "KFRELEASE_PORT_OFFSET": str(settings.port_offset)}
    return python_service(
        settings, supervisor.WATCHDOG, "kfrelease.stack.watchdog", group="core", startup_timeout=30, env=env
    )


def spare_socket(settings: Settings) -> str:
    """The socket name of the stack's warm spare (one per ``KFRELEASE_HOME``)."""
    return "@kfrelease-spare-" + hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:16]


def warm_launcher(settings: Settings, service: Service) -> supervisor.Launcher | None:
    """A launcher that forks a model server from the stack's warm spare (a second or two instead of a fresh
    KServe process's 5-20 s), or None when the spare is not ready or ``service`` is not a ``python -m`` model
    server."""
    name = spare_socket(settings)
    return _spare_launcher(name, service.group, service.command, lambda: spare.is_ready(name))


def _spare_launcher(name: str, group: str | None, command, ready) -> supervisor.Launcher | None:
    """The supervisor launcher that forks ``command`` from the spare listening on ``name``, or None (not a
    model server, not a ``python -m`` command, or ``ready()`` is false). If the spare cannot fork it, the
    service is started the usual way (``supervisor.spawn``)."""
    if group != WarmSpare.GROUP or spare.forkable(list(command)) is None or not ready():
        return None

    def launch(svc: Service, env: dict, cwd, log_path):
        try:
            return spare.ask(name, svc.command, env, cwd, log_path)
        except (OSError, ValueError) as exc:
            log.warning("the warm spare could not start %s (%s); starting it the usual way", svc.name, exc)
            return supervisor.spawn(svc, env, cwd, log_path)

    return launch


class WarmSpare:
    """The watchdog's one warm spare for model servers (``kfrelease.stack.spare``)."""

    GROUP = "serving-models"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.name = spare_socket(settings)
        self.proc: subprocess.Popen | None = None

    def state(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            return "off"
        return "ready" if spare.is_ready(self.name) else "starting"

    def keep(self, records: list[dict]) -> None:
        """Start the spare once the stack has a model server, and again if it died."""
        if not any(r.get("group") == self.GROUP and r.get("restart") for r in records):
            return
        if self.proc is not None and self.proc.poll() is None:
            return
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.log_dir / "watchdog-spare.log", "ab") as log_fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kfrelease.stack.spare", "--socket", self.name],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def launcher(self, rec: dict):
        """The supervisor launcher that forks ``rec``'s command from the spare, or None (not ready, not a model
        server, not a ``python -m`` command)."""
        return _spare_launcher(self.name, rec.get("group"), rec["command"], lambda: self.state() == "ready")


def sweep(settings: Settings, restarts: dict[str, int], warm: WarmSpare | None = None) -> None:
    """One pass: restart every service that should run and does not."""
    recs = supervisor.records(settings)
    if warm is not None:
        warm.keep(recs)
    for rec in recs:
        name = rec["name"]
        if name == supervisor.WATCHDOG or not rec.get("restart") or rec.get("stopping"):
            continue
        if supervisor.record_alive(rec):
            continue
        launch = warm.launcher(rec) if warm is not None else None
        try:
            if supervisor.restart_if_dead(settings, name, launch):
                restarts[name] = restarts.get(name, 0) + 1
        except Exception as exc:  # noqa: BLE001 - keep watching the others; try again next pass
            log.error("could not restart %s: %s", name, exc)


def sweep_runs(settings: Settings, counts: dict[str, int]) -> None:
    """Start again (or fail) the training runs whose runner died; counts what was done by action."""
    if not gone_runners(settings):  # cheap: marker files and pids; nothing imported, the store not touched
        return
    try:
        for recovery in recover_runs(settings, everything=False):
            counts[recovery.action] = counts.get(recovery.action, 0) + 1
    except Exception as exc:  # noqa: BLE001 - the object store may be restarting; look again next time
        log.error("could not recover the training runs whose runner died: %s", exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kfrelease.stack.watchdog")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = Settings.from_env()
    restarts: dict[str, int] = {}
    runs: dict[str, int] = {}
    warm = WarmSpare(settings)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "restarts": restarts, "spare": warm.state(), "runs": runs}).encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            return None

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    runs_due = time.monotonic()
    while True:
        sweep(settings, restarts, warm)
        if time.monotonic() >= runs_due:
            sweep_runs(settings, runs)
            runs_due = time.monotonic() + RUNS_INTERVAL
        time.sleep(INTERVAL)


if __name__ == "__main__":
    raise SystemExit(main())
