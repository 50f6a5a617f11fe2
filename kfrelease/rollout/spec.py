"""``RolloutSpec``: shadow gate, canary steps with checks, rollback rule and serving settings.

One declaration: each class below is at once the YAML a ``rollout.yaml`` holds (every key described, its
default named, unknown keys refused) and the frozen value the release uses. Its rules are checked when it
is built (steps strictly increasing within 1..100 and ending at 100, a positive interval, a well-formed
decision rule and checks), so a bad spec raises ``RolloutSpecError`` before any traffic moves, and a spec
changed in code (``with_changes``) is checked again. ``GateRule`` is the ``shadow`` section as the release's
sequential tests use it (a subclass: each key declared once), and a ``CheckSpec`` is one declared canary
check (the release's pure ``judge`` judges it). The release imports this package; this package imports
nothing of the release.
"""

from __future__ import annotations

import itertools
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from kfrelease.errors import ConfigError
from kfrelease.rollout.series import SERIES
from kfrelease.specs import Items, Number, Section, SpecDocument, at_least, at_most, one_line, parse, repeated

METRICS_SOURCES = ("auto", "predictor", "prometheus")
DEPLOYMENT_MODES = ("Serverless", "RawDeployment")
AT_LIMIT = ("keep_staging", "reject")
LOSSES = ("squared", "absolute")
BOUNDARIES = ("betting", "asymptotic", "bernstein")
SOURCES = ("traffic", "labels")
ON_SHORT = ("hold", "skip")
ON_INCONCLUSIVE = ("advance", "hold")
#: Keys of older specs and what replaced them (a spec that still has one gets an error saying so).
REPLACED = {
    "shadow.max_rmse_ratio": "shadow.margin and shadow.error_rate (a paired sequential test, issue 15)",
    "canary.min_requests": "min_samples of the canary's checks (e.g. the `requests` check)",
}


class RolloutSpecError(ConfigError):
    """The rollout spec is malformed; nothing was changed."""


class GateError(ConfigError):
    """The decision rule or its input is malformed (nothing was decided)."""


class CheckSpec(SpecDocument):
    """One canary check, judged at every step."""

    name: str = Field(min_length=1, description="The check's name, unique within `canary.checks`.")
    source: Literal[SOURCES] = Field(
        "traffic", description="`traffic`: the canary's metric source; `labels`: the paired accuracy test."
    )
    series: Literal[tuple(SERIES)] | None = Field(
        None, description="traffic: the built-in series read (`kfrelease/rollout/series.py`; or give `query`)."
    )
    query: str | None = Field(
        None,
        description="traffic, `metrics_source: prometheus`: a PromQL expression returning one number "
        "(placeholders {model} {version} {stage} {window}).",
    )
    max: Number | None = Field(None, description="traffic: the check fails above this value.")
    min: Number | None = Field(None, description="traffic: the check fails below this value.")
    min_samples: Annotated[int, at_least(0)] = Field(
        0, description="Step requests (traffic) or labelled pairs (labels) before it counts."
    )
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

    @model_validator(mode="after")
    def _shape(self):
        if self.source == "traffic" and (self.series is None) == (self.query is None):
            raise ValueError(f"give exactly one of series ({', '.join(SERIES)}) or query (PromQL)")
        if self.source == "labels" and (self.series or self.query or self.max is not None or self.min is not None):
            raise ValueError("a labels check takes no series, query, min or max: the paired test decides")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    @property
    def short_status(self) -> str:
        mode = self.on_short or ("hold" if self.source == "traffic" else "skip")
        return "held" if mode == "hold" else "skipped"


#: The default checks (what ``kfrelease/rollout/default.yaml`` declares).
DEFAULT_CHECKS = (
    CheckSpec(name="requests", series="requests", min_samples=20),
    CheckSpec(name="error_rate", series="error_rate", max=0.01, min_samples=20),
    CheckSpec(name="p99_latency_ms", series="p99_latency_ms", max=250.0, min_samples=20),
    CheckSpec(name="accuracy", source="labels", min_samples=10),
)


class ShadowSpec(SpecDocument):
    """The shadow gate: a paired, anytime-valid sequential test on the same labelled requests."""

    mirror_percent: Annotated[Number, at_least(0), at_most(100)] = Field(
        100.0, description="Share of production requests mirrored to the candidate, 0..100."
    )
    min_labelled_samples: int = Field(30, description="Do not even look before this many labelled pairs (>= 2).")
    margin: Number = Field(
        0.02, description="Pass: candidate loss <= (1 + margin) x production's on the same requests."
    )
    error_rate: Number = Field(0.05, description="Declared rate of each wrong decision, above 0 and below 0.5.")
    loss: Literal[LOSSES] = Field("squared", description="`squared` (MSE) or `absolute` (MAE).")
    fail_above: Literal["zero", "margin"] = Field(
        "zero", description="Fail when surely worse (`zero`) or surely worse by more than the margin (`margin`)."
    )
    clip: Number = Field(4.0, description="Errors clipped at this many times production's held-out RMSE (heavy tails).")
    boundary: Literal[BOUNDARIES] = Field(
        "betting",
        description="`betting` (exact at every sample count), `asymptotic` (the gate before issue 23: blind to rare "
        "failures at small n) or `bernstein` (exact, needs more pairs).",
    )
    min_exposure: Number = Field(
        0.002,
        description="Tail check: the candidate's rate of errors above `tail` reference RMSEs must be shown below "
        "production's plus this (0: no tail check); no pass before about log(1/error_rate) / (0.8 min_exposure) "
        "labelled pairs.",
    )
    tail: Number | None = Field(
        None, description="Errors above this many reference RMSEs are gross errors (null: `clip`)."
    )
    slices: Items[str] = Field(
        (),
        description="Declared slices: features whose slices are each tested (a categorical feature: its declared "
        "categories; a numeric one: `slice_bins` quantile bins); a slice fails the candidate when its loss is surely "
        "above (1 + slice_margin) x production's there.",
    )
    worst_slice: bool = Field(
        True, description="Search every feature's slices for the worst one (multiplicity: Bonferroni)."
    )
    slice_margin: Number = Field(0.1, description="A slice fails above (1 + slice_margin) x production's.")
    slice_bins: int = Field(4, description="Quantile bins of a numeric feature's slices (2..20).")
    max_samples: int | None = Field(
        None, description="Undecided at this many pairs: insufficient evidence (null: no limit)."
    )
    max_wait_seconds: Annotated[Number, at_least(0, above=True)] = Field(
        900.0, description="Undecided after this long: insufficient evidence."
    )
    at_limit: Literal[AT_LIMIT] = Field(
        "keep_staging",
        description="Insufficient evidence: `keep_staging` or `reject`; production is unchanged either way.",
    )

    @model_validator(mode="after")
    def _rule(self):
        """The rules between the decision's keys (each key's own type is checked by its declaration)."""
        if not 0 < self.error_rate < 0.5:
            raise ValueError(f"error_rate {self.error_rate} must be above 0 and below 0.5 (e.g. 0.05)")
        if not (0 <= self.margin and math.isfinite(self.margin)):
            raise ValueError(f"margin {self.margin} must be at least 0 (a share of production's loss, e.g. 0.02)")
        if not self.clip > 0:
            raise ValueError(f"clip {self.clip} must be above 0 (e.g. 4 reference RMSEs)")
        if self.min_labelled_samples < 2:
            raise ValueError(f"min_labelled_samples {self.min_labelled_samples} must be at least 2")
        if self.max_samples is not None and self.max_samples < self.min_labelled_samples:
            raise ValueError(
                f"max_samples {self.max_samples} is below min_labelled_samples {self.min_labelled_samples}"
            )
        if not 0 <= self.min_exposure < 0.5:
            raise ValueError(
                f"min_exposure {self.min_exposure} must be from 0 (no tail check) to below 0.5 (e.g. 0.002)"
            )
        if self.tail is not None and not self.tail > 0:
            raise ValueError(f"tail {self.tail} must be above 0 (reference RMSEs, e.g. 4)")
        if not (self.slice_margin >= 0 and math.isfinite(self.slice_margin)):
            raise ValueError(f"slice_margin {self.slice_margin} must be at least 0 (e.g. 0.1)")
        if not 2 <= self.slice_bins <= 20:
            raise ValueError(f"slice_bins {self.slice_bins} must be from 2 to 20")
        return self

    def rule(self) -> GateRule:
        """The decision rule this section declares (the shadow gate's; a canary's accuracy check changes some
        keys of it with ``with_changes``)."""
        return GateRule(**self.model_dump())


class GateRule(ShadowSpec):
    """What the release's sequential tests decide with: the ``shadow`` section's keys (declared once, above)
    plus ``burn_in``, which only code sets. Built from a spec (``ShadowSpec.rule()``) or in code
    (``GateRule(margin=0.05, min_exposure=0)``); changed with ``with_changes`` (validated again). A rule that
    breaks a key's rule raises ``GateError`` in one line."""

    error: ClassVar[type[ConfigError]] = GateError
    burn_in: Annotated[int, at_least(2)] = Field(
        30, description="Without a reference RMSE: pairs used to fix the clip (left out of the test)."
    )

    def __init__(self, /, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise GateError(f"decision rule: {one_line(type(self), exc)}") from None

    @property
    def tail_at(self) -> float:
        """Errors above this many reference RMSEs are gross (``tail``, else ``clip``)."""
        return self.tail if self.tail is not None else self.clip


class CanarySpec(SpecDocument):
    """The gradual rollout: traffic steps, the checks at each step, when to roll back."""

    steps: Items[int] = Field(
        (10, 25, 50, 100), description="Canary weight at each step, percent, strictly increasing, ending at 100."
    )
    interval_seconds: Annotated[Number, at_least(0, above=True)] = Field(
        30.0, description="Time at each step before its checks decide (> 0)."
    )
    checks: Items[CheckSpec] = Field(DEFAULT_CHECKS, description="The checks judged at every step.")
    failure_threshold: Annotated[int, at_least(1)] = Field(
        1, description="Failed checks tolerated before rollback (Flagger's `threshold`)."
    )
    max_holds: Annotated[int, at_least(0)] = Field(
        3, description="Intervals in a row a step may be held (too few requests) before rollback."
    )
    metrics_source: Literal[METRICS_SOURCES] = Field(
        "auto", description="`predictor` (the model servers' /metrics, embedded stack), `prometheus`, or `auto`."
    )
    prometheus_url: str = Field(
        "",
        description="metrics_source prometheus on the embedded stack: empty takes KFRELEASE_PROMETHEUS_URL, else the "
        "stack's own. On a cluster the platform's KFRELEASE_PROMETHEUS_URL only (another URL is refused).",
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps):
        if not steps:
            raise ValueError("is empty; give weights such as [10, 25, 50, 100]")
        wrong = [w for w in steps if not 0 < w <= 100]
        if wrong:
            raise ValueError(f"lists weight {wrong[0]!r}; each step is a whole percent from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"is not strictly increasing: {list(steps)}")
        if steps[-1] != 100:
            raise ValueError(f"must end at 100 (full promotion), not {list(steps)}")
        return steps

    @field_validator("checks", mode="before")
    @classmethod
    def _list(cls, value):
        if isinstance(value, dict):
            raise ValueError(  # noqa: TRY004 - pydantic reports a ValueError as this key's problem
                "is a list of checks (name, source, series or query, max/min, min_samples), not a "
                "mapping of limits; see kfrelease/rollout/default.yaml"
            )
        return value

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks):
        twice = repeated(c.name for c in checks)
        if twice:
            raise ValueError(f"lists the name(s) {', '.join(twice)} twice; give each check its own name")
        return checks

    @model_validator(mode="after")
    def _queries(self):
        queried = [c.name for c in self.checks if c.query]
        if queried and self.metrics_source != "prometheus":
            raise ValueError(f"check {queried[0]!r} has a query; queries need canary.metrics_source: prometheus")
        return self

    def check_named(self, name: str) -> CheckSpec | None:
        return next((c for c in self.checks if c.name == name), None)


class RollbackSpec(SpecDocument):
    """What a rollback does besides restoring production's traffic."""

    reject_candidate: bool = Field(True, description="Mark a rolled-back candidate `rejected` in the registry.")


class ServingSpec(SpecDocument):
    """How the model is served (KServe InferenceService settings; the embedded stack reads the namespace only)."""

    namespace: str = Field("kfrelease-serving", description="Kubernetes namespace of the serving.")
    deployment_mode: Literal[DEPLOYMENT_MODES] = Field(
        "Serverless", description="`Serverless` (canaryTrafficPercent) or `RawDeployment` (spec.canary list)."
    )
    min_replicas: int = Field(1, description="Fewest predictor replicas.")
    max_replicas: int = Field(4, description="Most predictor replicas.")
    scale_target: int = Field(10, description="Concurrent requests per replica (Knative autoscaling).")
    cpu: str = Field("500m", description="CPU request of a predictor replica.")
    memory: str = Field("512Mi", description="Memory request of a predictor replica.")


class RolloutSpec(SpecDocument):
    """A rollout spec (`rollout.yaml`): how a candidate goes from staging (shadow) to production."""

    error: ClassVar[type[ConfigError]] = RolloutSpecError
    error_suffix: ClassVar[str] = "; nothing was changed"
    model: str = Field(
        "",
        description="The model (its registry name) this spec is for; usually left out: the spec in a model "
        "project is bound to that project's model, and a spec naming another model is refused.",
    )
    shadow: Section[ShadowSpec] = Field(None, description="The shadow gate.")
    canary: Section[CanarySpec] = Field(None, description="The canary steps and their checks.")
    rollback: Section[RollbackSpec] = Field(None, description="The rollback rule.")
    serving: Section[ServingSpec] = Field(None, description="Serving settings.")

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        for path, replacement in REPLACED.items():
            section, _, key = path.partition(".")
            if isinstance(data, dict) and isinstance(data.get(section), dict) and key in data[section]:
                raise ValueError(
                    f"{path} is no longer a setting; it was replaced by {replacement}; "
                    "see kfrelease/rollout/default.yaml"
                )
        return data


def parse_rollout_spec(text: str, origin: str = "rollout spec") -> RolloutSpec:
    shape = "a rollout spec is a mapping of sections (shadow, canary, rollback, serving)"
    return parse(RolloutSpec, text, origin, shape, empty_ok=True)


def bind_model(spec: RolloutSpec, model: str | None, origin: str = "rollout spec") -> RolloutSpec:
    """``spec`` for ``model``: a spec that names no model takes it; one that names another model is refused."""
    if not model or spec.model == model:
        return spec
    if spec.model:
        raise RolloutSpecError(
            f"{origin} is for model {spec.model!r}, not {model!r}; remove its `model:` line or give that "
            "model's own rollout.yaml; nothing was changed"
        )
    return spec.with_changes(model=model)


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
