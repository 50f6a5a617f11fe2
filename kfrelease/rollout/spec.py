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
from kfrelease.release.checks import DEFAULT_CHECKS, CheckSpec

METRICS_SOURCES = ("auto", "predictor", "prometheus")
DEPLOYMENT_MODES = ("Serverless", "RawDeployment")


class RolloutSpecError(ConfigError):
    """The rollout spec is malformed; nothing was changed."""


AT_LIMIT = ("keep_staging", "reject")
#: Keys of older specs and what replaced them (a spec that still has one gets an error saying so).
REPLACED = {
    "shadow.max_rmse_ratio": "shadow.margin and shadow.error_rate (a paired sequential test, issue 15)",
    "canary.min_requests": "min_samples of the canary's checks (e.g. the `requests` check)",
}


@dataclass(frozen=True)
class ShadowSpec:
    """The shadow gate: a paired anytime-valid sequential test (``kfrelease.release.decision``)."""

    mirror_percent: float = 100.0
    min_labelled_samples: int = 30  # do not even look before this many labelled pairs
    margin: float = 0.02  # pass: candidate loss <= (1 + margin) x production's, on the same requests
    error_rate: float = 0.05  # declared rate of each wrong decision (worse passed, at-least-as-good failed)
    loss: str = "squared"  # squared | absolute
    fail_above: str = "zero"  # zero: fail when surely worse; margin: when surely worse by more than margin
    clip: float = 4.0  # errors clipped at clip x production's held-out RMSE (heavy tails)
    boundary: str = "asymptotic"  # asymptotic | bernstein
    max_samples: int | None = None  # undecided at this many pairs: insufficient evidence
    max_wait_seconds: float = 900.0  # undecided after this long: insufficient evidence
    at_limit: str = "keep_staging"  # insufficient evidence: keep_staging | reject (production unchanged)

    def rule(self):
        from kfrelease.release.decision import GateRule

        return GateRule(
            margin=self.margin,
            error_rate=self.error_rate,
            loss=self.loss,
            fail_above=self.fail_above,
            clip=self.clip,
            min_samples=self.min_labelled_samples,
            max_samples=self.max_samples,
            boundary=self.boundary,
        )


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[int, ...] = (10, 25, 50, 100)
    interval_seconds: float = 30.0
    checks: tuple[CheckSpec, ...] = DEFAULT_CHECKS  # judged by kfrelease.release.checks.judge
    failure_threshold: int = 1
    max_holds: int = 3  # intervals in a row a step may be held (too few requests) before rolling back
    metrics_source: str = "auto"  # auto: predictor on the embedded stack, prometheus on a cluster
    # where the canary's metrics come from with metrics_source prometheus: empty takes KFRELEASE_PROMETHEUS_URL,
    # else (embedded stack only) the stack's Prometheus; on a cluster, e.g. http://prometheus-operated.monitoring:9090
    prometheus_url: str = ""

    def check_named(self, name: str) -> CheckSpec | None:
        return next((c for c in self.checks if c.name == name), None)


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
    model: str = ""  # empty: not yet bound to a model; ``load_rollout_spec(..., model=M)`` binds it
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
        """Plain YAML-able data (lists, not tuples)."""

        def plain(x):
            if isinstance(x, dict):
                return {k: plain(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [plain(v) for v in x]
            return x

        return plain(dataclasses.asdict(self))

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
        from kfrelease.release.decision import GateError

        try:
            self.shadow.rule().check("shadow")
        except GateError as exc:
            bad(str(exc))
        if self.shadow.at_limit not in AT_LIMIT:
            bad(f"shadow.at_limit {self.shadow.at_limit!r} is unknown; use one of {', '.join(AT_LIMIT)}")
        if not self.shadow.max_wait_seconds > 0:
            bad("shadow.max_wait_seconds must be above 0")
        names = [c.name for c in self.canary.checks]
        if len(set(names)) != len(names):
            bad(f"canary.checks names {names} are not unique")
        for c in self.canary.checks:
            for problem in c.problems():
                bad(f"canary check {c.name!r}: {problem}")
            if c.query and self.canary.metrics_source != "prometheus":
                bad(f"canary check {c.name!r} has a query; queries need canary.metrics_source: prometheus")
        if self.canary.max_holds < 0:
            bad("canary.max_holds must be at least 0")
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
    for key in sorted(unknown):
        if f"{name}.{key}" in REPLACED:
            raise RolloutSpecError(
                f"{origin}: {name}.{key} is no longer a setting; it was replaced by {REPLACED[f'{name}.{key}']}; "
                "see kfrelease/rollout/default.yaml; nothing was changed"
            )
    if unknown:
        raise RolloutSpecError(f"{origin}: unknown key(s) in {name!r}: {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for key, value in doc.items():
        if key == "checks":
            kwargs[key] = _checks(value, origin)
        elif key == "steps":
            kwargs[key] = tuple(value or ())
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _checks(value, origin: str) -> tuple[CheckSpec, ...]:
    if isinstance(value, dict):
        raise RolloutSpecError(
            f"{origin}: canary.checks is a list of checks (name, source, series or query, max/min, "
            "min_samples), not a mapping of limits; see kfrelease/rollout/default.yaml; nothing was changed"
        )
    if not isinstance(value, list):
        raise RolloutSpecError(f"{origin}: canary.checks must be a list of checks")
    known = {f.name for f in dataclasses.fields(CheckSpec)}
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise RolloutSpecError(f"{origin}: canary.checks[{i}] must be a mapping with at least 'name'")
        unknown = set(entry) - known
        if unknown:
            raise RolloutSpecError(f"{origin}: unknown key(s) in canary.checks[{i}]: {sorted(unknown)}; known: {sorted(known)}")
        try:
            out.append(CheckSpec(**entry))
        except TypeError as exc:
            raise RolloutSpecError(f"{origin}: canary.checks[{i}]: {exc}") from None
    return tuple(out)


def parse_rollout_spec(text: str, origin: str = "rollout spec") -> RolloutSpec:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RolloutSpecError(f"{origin}: not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise RolloutSpecError(f"{origin}: a rollout spec is a mapping of sections (shadow, canary, rollback, serving)")
    unknown = set(doc) - {"model", "shadow", "canary", "rollback", "serving"}
    if unknown:
        raise RolloutSpecError(f"{origin}: unknown section(s) {sorted(unknown)}")
    try:
        spec = RolloutSpec(
            model=str(doc.get("model") or ""),
            shadow=_section(ShadowSpec, doc.get("shadow"), "shadow", origin),
            canary=_section(CanarySpec, doc.get("canary"), "canary", origin),
            rollback=_section(RollbackSpec, doc.get("rollback"), "rollback", origin),
            serving=_section(ServingSpec, doc.get("serving"), "serving", origin),
        )
    except TypeError as exc:
        raise RolloutSpecError(f"{origin}: {exc}") from None
    spec.check(origin)
    return spec


def bind_model(spec: RolloutSpec, model: str | None, origin: str = "rollout spec") -> RolloutSpec:
    """``spec`` for ``model``: a spec that names no model takes it; one that names another model is refused."""
    if not model or spec.model == model:
        return spec
    if spec.model:
        raise RolloutSpecError(
            f"{origin} is for model {spec.model!r}, not {model!r}; remove its `model:` line or give that "
            "model's own rollout.yaml; nothing was changed"
        )
    return dataclasses.replace(spec, model=model)


def load_rollout_spec(path: str | Path | None = None, model: str | None = None) -> RolloutSpec:
    """Load a rollout spec file, or the packaged default (``kfrelease/rollout/default.yaml``, which names no
    model), bound to ``model`` when given (see ``bind_model``)."""
    if path is None:
        origin = "default rollout spec"
        spec = parse_rollout_spec((resources.files("kfrelease.rollout") / "default.yaml").read_text(), origin)
    else:
        path = Path(path)
        if not path.is_file():
            raise RolloutSpecError(f"rollout spec {path} does not exist")
        origin = str(path)
        spec = parse_rollout_spec(path.read_text(), origin)
    return bind_model(spec, model, origin)
