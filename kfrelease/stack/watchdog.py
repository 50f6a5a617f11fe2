"""``python -m kfrelease.stack.watchdog --port P``: restarts the embedded stack's services that die.

Every ``INTERVAL`` seconds it looks at every recorded service whose declaration says ``restart`` (the
gateway, the model servers, the log sink, the feedback service) and restarts the ones whose process is
gone, with the recorded command (``supervisor.restart_if_dead``; a service being stopped is left alone).
``kfrelease down`` stops the watchdog first, so nothing is restarted behind it. ``GET /healthz`` answers
``{"status": "ok", "restarts": {name: count}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kfrelease.config import Settings
from kfrelease.stack import supervisor
from kfrelease.stack.service import Service

log = logging.getLogger(__name__)

INTERVAL = 0.5


def watchdog_service(settings: Settings) -> Service:
    from kfrelease.stack.service import python_service

    env = {"KFRELEASE_HOME": str(settings.home), "KFRELEASE_PORT_OFFSET": str(settings.port_offset)}
    return python_service(settings, supervisor.WATCHDOG, "kfrelease.stack.watchdog", group="core",
                          startup_timeout=30, env=env)


def sweep(settings: Settings, restarts: dict[str, int]) -> None:
    """One pass: restart every service that should run and does not."""
    for rec in supervisor.records(settings):
        name = rec["name"]
        if name == supervisor.WATCHDOG or not rec.get("restart") or rec.get("stopping"):
            continue
        if supervisor.pid_alive(rec.get("pid")):
            continue
        try:
            if supervisor.restart_if_dead(settings, name):
                restarts[name] = restarts.get(name, 0) + 1
        except Exception as exc:  # noqa: BLE001 - keep watching the others; try again next pass
            log.error("could not restart %s: %s", name, exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kfrelease.stack.watchdog")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    restarts: dict[str, int] = {}

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "restarts": restarts}).encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            return None

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while True:
        sweep(settings, restarts)
        time.sleep(INTERVAL)


if __name__ == "__main__":
    raise SystemExit(main())
