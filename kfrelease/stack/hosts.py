"""The model servers of the embedded stack as stack services: one per slot (``kfrelease.stack.slots``),
each hosting the models its manifest lists (``kfrelease.serving.host``).

``put`` and ``remove`` change one model's entry in one slot: the manifest is rewritten atomically, then a
running server is told to sync (in place, no restart), a stopped one is started (it loads its manifest),
and a server left with no model is stopped. A version that fails to load puts the previous manifest back
and raises; every other model on that server is untouched. The supervisor's watchdog restarts a server
that dies; it reloads its manifest.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from kfrelease import httpcalls
from kfrelease.config import Settings
from kfrelease.errors import StackError
from kfrelease.registry.artifact import model_servers_refuse_pickles
from kfrelease.serving.host import (
    CONTROL_PATH,
    SYNC_PATH,
    read_manifest,
    write_manifest,
)
from kfrelease.stack import supervisor
from kfrelease.stack.service import Service
from kfrelease.stack.slots import ServerSlot, all_slots
from kfrelease.stack.watchdog import warm_launcher

log = logging.getLogger(__name__)

#: The shadow's model server runs at a lower CPU priority: on one machine its mirrored work must yield to
#: the primary's (on a cluster it has its own pods).
SHADOW_NICE = ["nice", "-n", "10"]
SYNC_TIMEOUT = 120.0

#: ``(slot, manifest, port) -> argv`` of a model server; tests give a recording one.
HostCommand = Callable[[ServerSlot, Path, int], list[str]]


class ModelServerError(StackError):
    """A model server could not load a version; what it served before is unchanged."""


def stack_env(settings: Settings) -> dict[str, str]:
    """What a model server needs to find its stack (recorded, so a restart by the watchdog finds it too). Started
    by a release step, which refuses pickles itself, a local model server does not inherit that refusal: on one
    machine a pickle serves as the fallback (``artifact.PICKLE_REFUSING_TARGETS`` says why; a cluster's refuse)."""
    refuse = model_servers_refuse_pickles("embedded")
    return {
        "KFRELEASE_HOME": str(settings.home),
        "KFRELEASE_PORT_OFFSET": str(settings.port_offset),
        "KFRELEASE_REFUSE_PICKLE": "1" if refuse else "0",
    }


def manifest_path(settings: Settings, slot: ServerSlot) -> Path:
    return settings.service_dir(slot.name) / "manifest.json"


def host_argv(
    slot: ServerSlot, manifest: Path, port: int, *extra: str, module: str = "kfrelease.serving.host"
) -> list[str]:
    """The command line of the model server of ``slot``: ``python -m module`` (the stack's host, or a test's
    stand-in taking the same arguments) with ``extra`` arguments after the common ones."""
    common = ["--slot", slot.name, "--stage", slot.stage, "--manifest", str(manifest), "--http-port", str(port)]
    return [sys.executable, "-m", module, *common, *extra]


def default_host_command(settings: Settings) -> HostCommand:
    def command(slot: ServerSlot, manifest: Path, port: int) -> list[str]:
        return host_argv(slot, manifest, port, "--logger-url", settings.url("logsink", "/"))

    return command


def host_service(
    settings: Settings, slot: ServerSlot, command: HostCommand, env: dict[str, str] | None = None
) -> Service:
    argv = command(slot, manifest_path(settings, slot), slot.port(settings))
    return Service(
        name=slot.name,
        port=slot.port(settings),
        command=(SHADOW_NICE if slot.stage == "staging" else []) + argv,
        health_path=CONTROL_PATH,
        group="serving-models",  # started by the gateway driver when a model needs the slot
        env={**stack_env(settings), **(env or {})},
        startup_timeout=120,
        restart=True,
    )


def hosted(settings: Settings) -> dict[str, dict[str, str]]:
    """What each slot's manifest lists: ``{slot name: {model: version}}`` (slots with no model left out)."""
    out = {}
    for slot in all_slots():
        models = read_manifest(manifest_path(settings, slot))
        if models:
            out[slot.name] = {name: entry["version"] for name, entry in sorted(models.items())}
    return out


class ModelServers:
    """Puts model versions into slots and takes them out (see the module docstring)."""

    def __init__(self, settings: Settings, command: HostCommand | None = None, env: dict[str, str] | None = None):
        self.settings = settings
        self.command = command or default_host_command(settings)
        self.env = env or {}

    def status(self, slot: ServerSlot) -> dict | None:
        try:
            r = httpcalls.get(f"http://127.0.0.1:{slot.port(self.settings)}{CONTROL_PATH}", timeout=5.0)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def put(self, slot: ServerSlot, model: str, version: str, model_dir: Path) -> None:
        path = manifest_path(self.settings, slot)
        before = read_manifest(path)
        if before.get(model, {}).get("version") == version and self._serves(slot, model, version):
            return
        write_manifest(path, {**before, model: {"version": version, "dir": str(model_dir)}})
        try:
            self._sync(slot)
            if not self._serves(slot, model, version):
                raise ModelServerError(
                    f"{slot.name} did not load {model} {version}; see {self.settings.log_dir / (slot.name + '.log')}"
                )
        except BaseException:
            write_manifest(path, before)
            if before:
                self._sync(slot, check=False)
            else:
                supervisor.stop_service(self.settings, slot.name)
            raise

    def remove(self, slot: ServerSlot, model: str) -> None:
        path = manifest_path(self.settings, slot)
        models = read_manifest(path)
        if model not in models:
            return
        models.pop(model)
        write_manifest(path, models)
        if not models:
            supervisor.stop_service(self.settings, slot.name)
            path.unlink(missing_ok=True)
        else:
            self._sync(slot, check=False)

    def stop_all(self) -> list[str]:
        stopped = []
        for slot in all_slots():
            if supervisor.stop_service(self.settings, slot.name):
                stopped.append(slot.name)
            manifest_path(self.settings, slot).unlink(missing_ok=True)
        return stopped

    # internals -------------------------------------------------------------------------------------
    def _serves(self, slot: ServerSlot, model: str, version: str) -> bool:
        st = self.status(slot)
        return bool(st) and st.get("models", {}).get(model) == version

    def _sync(self, slot: ServerSlot, check: bool = True) -> None:
        service = host_service(self.settings, slot, self.command, self.env)
        if not supervisor.service_status(self.settings, slot.name).healthy:
            # a new server loads its manifest on start; forked from the warm spare when it is ready
            supervisor.start_service(self.settings, service, warm_launcher(self.settings, service))
            return
        try:
            r = httpcalls.post(f"http://127.0.0.1:{slot.port(self.settings)}{SYNC_PATH}", timeout=SYNC_TIMEOUT)
        except httpx.HTTPError as exc:
            raise ModelServerError(f"{slot.name} did not answer its sync call: {exc}") from None
        if check and r.status_code != 200:
            try:
                failed = r.json().get("failed")
            except ValueError:
                failed = r.text[:300]
            raise ModelServerError(f"{slot.name} could not load a model: {failed}")
