"""The web UI as a service of the embedded stack (group ``core``: ``kfrelease up`` starts it; the watchdog
restarts it when it dies), ready when ``/healthz`` answers."""

from __future__ import annotations

from kfrelease.config import Settings
from kfrelease.stack.service import Service, python_service


def ui_service(settings: Settings) -> Service:
    return python_service(settings, "ui", "kfrelease.ui", group="core", restart=True)


def services(settings: Settings) -> list[Service]:
    return [ui_service(settings)]
