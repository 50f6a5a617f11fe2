"""``RolloutSpec``: shadow gate, canary steps with checks, rollback rule and serving settings.

Checked on load: steps strictly increasing within 1..100 and ending at 100, positive interval, ratios
above 0, a known metrics source. A bad spec raises ``RolloutSpecError`` before any traffic moves.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from kfrelease.errors import ConfigError
from kfrelease.release.checks import (
    DEFAULT_CHECKS,
    ON_INCONCLUSIVE,
    ON_SHORT,
    SERIES,
    SOURCES,
    CheckSpec,
)
from kfrelease.specs import Number, SpecDocument, to_dataclass, validate, yaml_mapping

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

    def with_changes(self, **sections) -> RolloutSpec:
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
        if any(b <= a for a, b in itertools.pairwise(steps)):
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
            bad(
                f"canary.metrics_source {self.canary.metrics_source!r} is unknown; "
                f"use one of {', '.join(METRICS_SOURCES)}"
            )
        if self.serving.deployment_mode not in DEPLOYMENT_MODES:
            bad(f"serving.deployment_mode {self.serving.deployment_mode!r}; use one of {', '.join(DEPLOYMENT_MODES)}")
        if self.canary.failure_threshold < 1 or self.shadow.min_labelled_samples < 1:
            bad("canary.failure_threshold and shadow.min_labelled_samples must be at least 1")


# The documents a rollout.yaml holds (pydantic, for validation and the JSON Schema); defaults come from the
# dataclasses above, so each has one home.
def _default(cls, name: str):
    value = getattr(cls, name)
    return list(value) if isinstance(value, tuple) else value


def _from(cls, name: str, description: str):
    """A document key whose default is the runtime dataclass's."""
    return Field(_default(cls, name), description=description)


class CheckDocument(SpecDocument):
    """One canary check (``kfrelease.release.checks.CheckSpec``), judged at every step."""

    name: str = Field(min_length=1, description="The check's name, unique within `canary.checks`.")
    source: Literal[SOURCES] = Field(
        "traffic", description="`traffic`: the canary's metric source; `labels`: the paired accuracy test."
    )
    series: Literal[SERIES] | None = Field(None, description="traffic: the built-in series read (or give `query`).")
    query: str | None = Field(
        None,
        description="traffic, `metrics_source: prometheus`: a PromQL expression returning one number "
        "(placeholders {model} {version} {stage} {window}).",
    )
    max: Number | None = Field(None, description="traffic: the check fails above this value.")
    min: Number | None = Field(None, description="traffic: the check fails below this value.")
    min_samples: int = Field(0, description="Step requests (traffic) or labelled pairs (labels) before it counts.")
    on_short: Literal[ON_SHORT] | None = Field(
        None,
        description="Below `min_samples`: `hold` the step or `skip` the check (null: hold for traffic, "
        "skip for labels).",
    )
    margin: Number | None = Field(None, description="labels: the non-inferiority margin (null: the shadow gate's).")
    error_rate: Number | None = Field(None, description="labels: the declared error rate (null: the shadow gate's).")
    on_inconclusive: Literal[ON_INCONCLUSIVE] = Field(
        "advance", description="labels: an undecided test lets the step `advance`, or `hold`s it."
    )


class ShadowDocument(SpecDocument):
    """The shadow gate: a paired, anytime-valid sequential test on the same labelled requests."""

    mirror_percent: Number = _from(
        ShadowSpec, "mirror_percent", "Share of production requests mirrored to the candidate, 0..100."
    )
    min_labelled_samples: int = _from(
        ShadowSpec, "min_labelled_samples", "Do not even look before this many labelled pairs (>= 1)."
    )
    margin: Number = _from(
        ShadowSpec, "margin", "Pass: candidate loss <= (1 + margin) x production's on the same requests."
    )
    error_rate: Number = _from(ShadowSpec, "error_rate", "Declared rate of each wrong decision, above 0 and below 0.5.")
    loss: Literal["squared", "absolute"] = _from(ShadowSpec, "loss", "`squared` (MSE) or `absolute` (MAE).")
    fail_above: Literal["zero", "margin"] = _from(
        ShadowSpec, "fail_above", "Fail when surely worse (`zero`) or surely worse by more than the margin (`margin`)."
    )
    clip: Number = _from(
        ShadowSpec, "clip", "Errors clipped at this many times production's held-out RMSE (heavy tails)."
    )
    boundary: Literal["asymptotic", "bernstein"] = _from(
        ShadowSpec, "boundary", "`asymptotic` or `bernstein` (exact, needs more pairs)."
    )
    max_samples: int | None = _from(
        ShadowSpec, "max_samples", "Undecided at this many pairs: insufficient evidence (null: no limit)."
    )
    max_wait_seconds: Number = _from(
        ShadowSpec, "max_wait_seconds", "Undecided after this long: insufficient evidence."
    )
    at_limit: Literal[AT_LIMIT] = _from(
        ShadowSpec, "at_limit", "Insufficient evidence: `keep_staging` or `reject`; production is unchanged either way."
    )


class CanaryDocument(SpecDocument):
    """The gradual rollout: traffic steps, the checks at each step, when to roll back."""

    steps: list[int] = _from(
        CanarySpec, "steps", "Canary weight at each step, percent, strictly increasing, ending at 100."
    )
    interval_seconds: Number = _from(
        CanarySpec, "interval_seconds", "Time at each step before its checks decide (> 0)."
    )
    checks: list[CheckDocument] = Field(
        [CheckDocument(**asdict(c)) for c in DEFAULT_CHECKS], description="The checks judged at every step."
    )
    failure_threshold: int = _from(
        CanarySpec, "failure_threshold", "Failed checks tolerated before rollback (Flagger's `threshold`)."
    )
    max_holds: int = _from(
        CanarySpec, "max_holds", "Intervals in a row a step may be held (too few requests) before rollback."
    )
    metrics_source: Literal[METRICS_SOURCES] = _from(
        CanarySpec,
        "metrics_source",
        "`predictor` (the model servers' /metrics, embedded stack), `prometheus`, or `auto`.",
    )
    prometheus_url: str = _from(
        CanarySpec,
        "prometheus_url",
        "metrics_source prometheus: empty takes KFRELEASE_PROMETHEUS_URL, else the embedded stack's.",
    )

    @field_validator("checks", mode="before")
    @classmethod
    def _list(cls, value):
        if isinstance(value, dict):
            raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as this key's problem
                "is a list of checks (name, source, series or query, max/min, min_samples), not a "
                "mapping of limits; see kfrelease/rollout/default.yaml"
            )
        return value


class RollbackDocument(SpecDocument):
    """What a rollback does besides restoring production's traffic."""

    reject_candidate: bool = _from(
        RollbackSpec, "reject_candidate", "Mark a rolled-back candidate `rejected` in the registry."
    )


class ServingDocument(SpecDocument):
    """How the model is served (KServe InferenceService settings; the embedded stack reads the namespace only)."""

    namespace: str = _from(ServingSpec, "namespace", "Kubernetes namespace of the serving.")
    deployment_mode: Literal[DEPLOYMENT_MODES] = _from(
        ServingSpec, "deployment_mode", "`Serverless` (canaryTrafficPercent) or `RawDeployment` (spec.canary list)."
    )
    min_replicas: int = _from(ServingSpec, "min_replicas", "Fewest predictor replicas.")
    max_replicas: int = _from(ServingSpec, "max_replicas", "Most predictor replicas.")
    scale_target: int = _from(ServingSpec, "scale_target", "Concurrent requests per replica (Knative autoscaling).")
    cpu: str = _from(ServingSpec, "cpu", "CPU request of a predictor replica.")
    memory: str = _from(ServingSpec, "memory", "Memory request of a predictor replica.")


class RolloutDocument(SpecDocument):
    """A rollout spec (`rollout.yaml`): how a candidate goes from staging (shadow) to production."""

    model: str = Field(
        "",
        description="The model (its registry name) this spec is for; usually left out: the spec in a model "
        "project is bound to that project's model, and a spec naming another model is refused.",
    )
    shadow: ShadowDocument | None = Field(None, description="The shadow gate.")
    canary: CanaryDocument | None = Field(None, description="The canary steps and their checks.")
    rollback: RollbackDocument | None = Field(None, description="The rollback rule.")
    serving: ServingDocument | None = Field(None, description="Serving settings.")


def _replaced(doc: dict, origin: str) -> None:
    for path, replacement in REPLACED.items():
        section, _, key = path.partition(".")
        if isinstance(doc.get(section), dict) and key in doc[section]:
            raise RolloutSpecError(
                f"{origin}: {path} is no longer a setting; it was replaced by {replacement}; "
                "see kfrelease/rollout/default.yaml; nothing was changed"
            )


def parse_rollout_spec(text: str, origin: str = "rollout spec") -> RolloutSpec:
    shape = "a rollout spec is a mapping of sections (shadow, canary, rollback, serving)"
    doc = yaml_mapping(text, origin, shape, RolloutSpecError, empty_ok=True)
    _replaced(doc, origin)
    d = validate(RolloutDocument, doc, origin, RolloutSpecError, "; nothing was changed")
    spec = to_dataclass(RolloutSpec, d)
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
