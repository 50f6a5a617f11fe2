"""The declaration of one embedded service: how to prepare, start and probe it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from kfrelease.config import Settings


@dataclass(frozen=True)
class Service:
    """One process of the embedded stack.

    Adding a service is one declaration: a name, the port it listens on, the command that starts it
    and the HTTP path that answers when it is ready.

    Attributes:
        name: unique name; also the name of its log file, pid record and data folder.
        port: the port the readiness probe and ``status`` use (resolve it with ``Settings.port``).
        command: argv that starts the process in the foreground (it must not daemonise itself).
        health_path: HTTP path probed on ``127.0.0.1:port``; any answer below 500 means ready.
        prepare: writes config files before start (called every start; must be idempotent).
        after_start: one-time set-up once ready (e.g. create buckets); must be idempotent.
        ready: an extra readiness check beyond ``health_path`` (e.g. an authenticated S3 call).
        group: ``kfrelease up`` starts the ``core`` and ``monitoring`` groups; ``serving`` services are
            started by ``kfrelease serve``.
        executables: programs the command needs, mapped to the Debian package that provides them.
        env: extra environment variables for the process.
        startup_timeout: seconds to wait for readiness before giving up with the log's tail.
        restart: the stack's watchdog restarts the process when it dies (until ``down`` stops it).
    """

    name: str
    port: int
    command: list[str]
    health_path: str = "/"
    prepare: Callable[[Settings], None] | None = None
    after_start: Callable[[Settings], None] | None = None
    ready: Callable[[Settings], bool] | None = None
    group: str = "core"
    executables: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 60.0
    restart: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + self.health_path


def python_service(settings: Settings, name: str, module: str, *args: str, group: str, **fields) -> Service:
    """A service that is one of our Python modules listening on its stack port (``python -m MODULE --port N
    ARGS``), ready when ``/healthz`` answers; ``fields`` are any other ``Service`` attributes."""
    port = settings.port(name)
    return Service(
        name=name,
        port=port,
        command=[sys.executable, "-m", module, "--port", str(port), *args],
        health_path="/healthz",
        group=group,
        **fields,
    )
