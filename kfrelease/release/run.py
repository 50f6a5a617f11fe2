"""Run one release on the embedded stack: the serving services, the local gateway and the controller."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from kfrelease.config import Settings, setting
from kfrelease.errors import Conflict
from kfrelease.release.controller import ReleaseController, ReleaseOutcome
from kfrelease.rollout.spec import RolloutSpec, bind_model, load_rollout_spec

log = logging.getLogger(__name__)


def ensure_serving_services(settings: Settings) -> None:
    """The log sink and the feedback service (the gateway starts on the first traffic change)."""
    from kfrelease.stack import supervisor
    from kfrelease.stack.services import declared_services

    others = [s for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    supervisor.up(settings, others)


def lock_path(settings: Settings, model: str) -> Path:
    return settings.home / "releases" / f"{model}.lock"


class ReleaseLock:
    """One release per model at a time on this stack (a pid file created exclusively; a dead holder's is
    taken over)."""

    def __init__(self, settings: Settings, model: str, version: str):
        self.path, self.version = lock_path(settings, model), version

    def __enter__(self):
        from kfrelease.stack.supervisor import pid_alive

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                try:
                    pid, version = self.path.read_text().split()[:2]
                    alive = pid_alive(int(pid))
                except (OSError, ValueError):
                    alive, version = False, "?"
                if alive:
                    raise Conflict(
                        f"a release of {version} is running ({self.path}); wait for it (`kfrelease release status`)"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()} {self.version}\n")
            return self
        raise Conflict(f"could not take the release lock {self.path}")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def run_release(
    settings: Settings,
    model: str,
    version: str,
    spec: RolloutSpec | None = None,
    on_decision: Callable[[dict], None] | None = None,
) -> ReleaseOutcome:
    """Release ``version`` of ``model`` on the embedded stack (see ``kfrelease.release.controller``)."""
    from kfrelease.serving.gateway import LocalGatewayDriver, predictor_port

    spec = bind_model(spec or load_rollout_spec(), model)
    with ReleaseLock(settings, model, version):
        ensure_serving_services(settings)
        driver = LocalGatewayDriver(settings, spec)
        current = driver.current()
        preflight = (
            f"http://127.0.0.1:{predictor_port(settings, 'production')}" if current and current.primary else None
        )
        controller = ReleaseController(settings, spec, driver, preflight_url=preflight, on_decision=on_decision)
        return controller.run(version)


# --- the release pipeline's steps (each a KFP component; see pipelines/release_pipeline.py) --------------


def driver_for(settings: Settings, spec: RolloutSpec, version: str | None = None):
    """The traffic driver of the target: ``KFRELEASE_TARGET=cluster`` patches the InferenceService (images
    from the registry entries; the release of ``version`` holds the model's Lease; ``KFRELEASE_KSERVE_VERSION``
    names the cluster's KServe), else the local gateway."""
    if setting("KFRELEASE_TARGET") == "cluster":
        from kfrelease.k8s.driver import KServeTrafficDriver, KubernetesObjects
        from kfrelease.registry import ModelRegistry
        from kfrelease.storage import store_for

        uris = {}
        for mv in ModelRegistry(store_for("pipeline", settings)).list(spec.model):
            image = mv.entry.get("image")
            uris[mv.version] = (
                f"oci://{image['ref'].split('@')[0].split(':')[0]}@{image['digest']}"
                if image
                else f"s3://models/artifacts/{spec.model}/{mv.version}/"
            )
        return KServeTrafficDriver(
            spec, uris, KubernetesObjects(), holder=version, kserve_version=setting("KFRELEASE_KSERVE_VERSION")
        )
    from kfrelease.serving.gateway import LocalGatewayDriver

    ensure_serving_services(settings)
    return LocalGatewayDriver(settings, spec)


def _controller(settings: Settings, spec: RolloutSpec, version: str | None = None) -> ReleaseController:
    return ReleaseController(settings, spec, driver_for(settings, spec, version))


def preflight_step(settings: Settings, spec: RolloutSpec, version: str) -> str:
    """``first`` (promoted at once: no production model of its tag) or ``shadow`` (a champion to beat)."""
    controller = _controller(settings, spec, version)
    mv, production = controller.preflight(version)
    if production is None or production.tag != mv.tag:
        controller.first_of_tag(mv, production)
        return "first"
    return "shadow"


def shadow_step(settings: Settings, spec: RolloutSpec, version: str, report_path: str | None = None) -> str:
    """Shadow the candidate until the gate decides: ``pass``, or ``fail``/``insufficient`` (traffic back to
    production)."""
    controller = _controller(settings, spec, version)
    _, production = controller.preflight(version)
    verdict = controller.shadow(version, production.version)
    if report_path and verdict.html:
        Path(report_path).write_text(verdict.html)
    if verdict.decision != "pass":
        controller.outcome_after_shadow(version, production.version, verdict)
    return verdict.decision


def rollout_step(settings: Settings, spec: RolloutSpec, version: str) -> str:
    """The canary steps after a passed shadow gate: ``promoted`` or ``rolled_back``."""
    controller = _controller(settings, spec, version)
    _, production = controller.preflight(version)
    return controller.canary(version, production.version).result


def pipeline_spec(model: str, spec_yaml: str = "") -> RolloutSpec:
    """The rollout spec a pipeline step was given (YAML text; empty: the packaged default) for ``model``."""
    from kfrelease.rollout.spec import parse_rollout_spec

    spec = parse_rollout_spec(spec_yaml, "release pipeline spec_yaml") if spec_yaml.strip() else load_rollout_spec()
    return bind_model(spec, model, "release pipeline spec_yaml")
