"""``RolloutSpec``: shadow gate, canary steps with checks, rollback rule and serving settings.

Checked on load: steps strictly increasing within 1..100 and ending at 100, positive interval, ratios
above 0, a known metrics source. A bad spec raises ``RolloutSpecError`` before any traffic moves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError

METRICS_SOURCES = ("predictor", "prometheus")
DEPLOYMENT_MODES = ("Serverless", "RawDeployment")


class RolloutSpecError(ConfigError):
    """The rollout spec is malformed; nothing was changed."""


@dataclass(frozen=True)
class ShadowSpec:
    mirror_percent: float = 100.0
    min_labelled_samples: int = 30
    max_rmse_ratio: float = 1.0
    max_wait_seconds: float = 900.0


@dataclass(frozen=True)
class CanaryChecks:
    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 250.0
    max_rmse_ratio: float = 1.10
    min_labelled_samples: int = 10


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[int, ...] = (10, 25, 50, 100)
    interval_seconds: float = 30.0
    min_requests: int = 20
    checks: CanaryChecks = field(default_factory=CanaryChecks)
    failure_threshold: int = 1
    metrics_source: str = "predictor"


@dataclass(frozen=True)
class RollbackSpec:
    reject_candidate: bool = True


@dataclass(frozen=True)
class ServingSpec:
    namespace: str = "kfrelease-serving"
    deployment_mode: str = "Serverless"
    min_replicas: int = 1
    max_replicas: int = 4
    scale_target: int = 10
    cpu: str = "500m"
    memory: str = "512Mi"


@dataclass(frozen=True)
class RolloutSpec:
    model: str
    shadow: ShadowSpec = field(default_factory=ShadowSpec)
    canary: CanarySpec = field(default_factory=CanarySpec)
    rollback: RollbackSpec = field(default_factory=RollbackSpec)
    serving: ServingSpec = field(default_factory=ServingSpec)

    def with_changes(self, **sections) -> "RolloutSpec":
        """A copy with some fields of some sections replaced, e.g. ``canary={"interval_seconds": 2}``."""
        updates = {}
        for name, changes in sections.items():
            current = getattr(self, name)
            updates[name] = dataclasses.replace(current, **changes) if dataclasses.is_dataclass(current) else changes
        spec = dataclasses.replace(self, **updates)
        spec.check()
        return spec

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self, origin: str = "rollout spec") -> None:
        def bad(msg: str):
            raise RolloutSpecError(f"{origin}: {msg}; nothing was changed")

        steps = list(self.canary.steps)
        if not steps:
            bad("canary.steps is empty; give weights such as [10, 25, 50, 100]")
        for w in steps:
            if not isinstance(w, int) or isinstance(w, bool) or not 0 < w <= 100:
                bad(f"canary.steps has weight {w!r}; each step is a whole percent from 1 to 100")
        if any(b <= a for a, b in zip(steps, steps[1:])):
            bad(f"canary.steps {steps} are not strictly increasing")
        if steps[-1] != 100:
            bad(f"canary.steps {steps} must end at 100 (full promotion)")
        if not 0 <= self.shadow.mirror_percent <= 100:
            bad(f"shadow.mirror_percent {self.shadow.mirror_percent} is outside 0..100")
        if self.canary.interval_seconds <= 0:
            bad("canary.interval_seconds must be above 0")
        for name, value in (
            ("shadow.max_rmse_ratio", self.shadow.max_rmse_ratio),
            ("canary.checks.max_rmse_ratio", self.canary.checks.max_rmse_ratio),
            ("canary.checks.max_p99_latency_ms", self.canary.checks.max_p99_latency_ms),
        ):
            if not value > 0:
                bad(f"{name} must be above 0, got {value}")
        if not 0 <= self.canary.checks.max_error_rate <= 1:
            bad(f"canary.checks.max_error_rate {self.canary.checks.max_error_rate} is outside 0..1")
        if self.canary.metrics_source not in METRICS_SOURCES:
            bad(f"canary.metrics_source {self.canary.metrics_source!r} is unknown; use one of {', '.join(METRICS_SOURCES)}")
        if self.serving.deployment_mode not in DEPLOYMENT_MODES:
            bad(f"serving.deployment_mode {self.serving.deployment_mode!r}; use one of {', '.join(DEPLOYMENT_MODES)}")
        if self.canary.failure_threshold < 1 or self.shadow.min_labelled_samples < 1:
            bad("canary.failure_threshold and shadow.min_labelled_samples must be at least 1")


def _section(cls, doc, name: str, origin: str):
    doc = doc or {}
    if not isinstance(doc, dict):
        raise RolloutSpecError(f"{origin}: section {name!r} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(doc) - set(known)
    if unknown:
        raise RolloutSpecError(f"{origin}: unknown key(s) in {name!r}: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for key, value in doc.items():
        if key == "checks":
            kwargs[key] = _section(CanaryChecks, value, f"{name}.checks", origin)
        elif key == "steps":
            kwargs[key] = tuple(value or ())
        else:
            kwargs[key] = value
    return cls(**kwargs)


def parse_rollout_spec(text: str, origin: str = "rollout spec") -> RolloutSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RolloutSpecError(f"{origin}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not doc.get("model"):
        raise RolloutSpecError(f"{origin}: a rollout spec is a mapping with at least 'model'")
    unknown = set(doc) - {"model", "shadow", "canary", "rollback", "serving"}
    if unknown:
        raise RolloutSpecError(f"{origin}: unknown section(s) {sorted(unknown)}")
    try:
        spec = RolloutSpec(
            model=str(doc["model"]),
            shadow=_section(ShadowSpec, doc.get("shadow"), "shadow", origin),
            canary=_section(CanarySpec, doc.get("canary"), "canary", origin),
            rollback=_section(RollbackSpec, doc.get("rollback"), "rollback", origin),
            serving=_section(ServingSpec, doc.get("serving"), "serving", origin),
        )
    except TypeError as exc:
        raise RolloutSpecError(f"{origin}: {exc}") from None
    spec.check(origin)
    return spec


def load_rollout_spec(path: str | Path | None = None) -> RolloutSpec:
    """Load a rollout spec file, or the packaged default (``kfrelease/rollout/default.yaml``)."""
    if path is None:
        return parse_rollout_spec((resources.files("kfrelease.rollout") / "default.yaml").read_text(), "default rollout spec")
    path = Path(path)
    if not path.is_file():
        raise RolloutSpecError(f"rollout spec {path} does not exist")
    return parse_rollout_spec(path.read_text(), str(path))
