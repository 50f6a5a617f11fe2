"""Canary checks as data, judged by pure functions (like Flagger's ``analysis.metrics`` and Argo Rollouts'
``AnalysisTemplate`` metrics with ``successCondition``/``failureLimit``, whose ``assessMetricStatus`` is a
pure function: argoproj/argo-rollouts ``analysis/analysis.go``).

A check (``kfrelease.rollout.spec.CheckSpec``, a list under ``canary.checks`` of the rollout spec) names its ``source`` and what it
reads: ``traffic`` checks read the canary's metric source (``canary.metrics_source``) through a built-in
``series`` (declared in ``kfrelease.rollout.series``: ``requests``, ``error_rate``, ``p99_latency_ms``) or, with Prometheus, a declared PromQL
``query`` (placeholders ``{model}``, ``{version}``, ``{stage}``, ``{window}``); ``labels`` checks run the
paired sequential accuracy test (``kfrelease.release.decision``) on the canary's labelled requests against
production's answers on the same requests. ``judge`` turns one measurement into a status; ``CanaryAnalysis``
turns one step's statuses into an action (advance, hold, roll back, promote) with ``failure_threshold``
and ``max_holds``. The controller only measures, asks, and records; nothing here reads a clock or sleeps.

Statuses: ``passed``; ``failed`` (counts toward ``failure_threshold``); ``held`` (too few requests for
the check to count: the step is measured again, at most ``max_holds`` times in a row); ``skipped`` (the
check does not count at this step: too few labelled pairs yet, or an inconclusive accuracy test).

Judge the model, not the machine (issue 23): the ``error_rate`` and ``p99_latency_ms`` series are compared
with production's over the same interval (``Measurement.baseline``, read from production's model server at
the same moments): an error rate fails only when it is above production's by more than ``max``; a p99 fails
only when it is above ``max`` *and* above ``LATENCY_TOLERANCE`` times production's p99 (a loaded machine
slows both). A percentile is judged only on enough requests for it (``MIN_TAIL_REQUESTS / (1 - q)``, 500
for a p99; the p99 of 60 requests is their maximum): with fewer the check is skipped. A failed traffic check
rolls back but leaves the candidate releasable (``staging``); only a failed accuracy (``labels``) check
rejects it for good (``ReleaseController.roll_back``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from kfrelease.errors import ConfigError
from kfrelease.rollout.series import SERIES
from kfrelease.rollout.spec import CheckSpec

ACTIONS = ("advance", "hold", "rollback", "promote")
#: The tail requests a latency quantile needs to be judged (``MIN_TAIL_REQUESTS / (1 - q)`` requests in all).
MIN_TAIL_REQUESTS = 5
#: A canary's p99 may be this many times production's over the same interval before it counts as slower.
LATENCY_TOLERANCE = 1.5


@dataclass
class Measurement:
    """What was measured for one check over one step: a value (traffic) or a decision (labels)."""

    value: float | None = None
    samples: float = 0.0  # requests of the step (traffic) or labelled pairs so far (labels)
    decision: dict | None = None  # labels: ``Decision.as_dict()``
    error: str | None = None  # the source could not be read
    baseline: float | None = None  # traffic: production's value over the same interval (None: not read)


@dataclass
class CheckResult:
    name: str
    status: str  # passed | failed | held | skipped
    value: float | None = None
    n: float = 0.0
    max: float | None = None
    min: float | None = None
    detail: str = ""
    interval: list | None = None  # labels: the confidence sequence on the loss ratio
    baseline: float | None = None  # traffic: production's value over the same interval

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.status == "failed" and self.value is None:
            return f"{self.name} failed ({self.detail})"
        if self.interval is not None:
            lo, hi = self.interval
            return f"{self.name} {_fmt(self.value)} [{_fmt(lo)}, {_fmt(hi)}] n={self.n:.0f} {self.status}" + (
                f" ({self.detail})" if self.detail else ""
            )
        bound = ", ".join(f"{k} {v:g}" for k, v in (("max", self.max), ("min", self.min)) if v is not None)
        return (
            f"{self.name} {_fmt(self.value)}"
            + (f" vs production {_fmt(self.baseline)}" if self.baseline is not None else "")
            + (f" ({bound})" if bound else "")
            + f" n={self.n:.0f} {self.status}"
            + (f" ({self.detail})" if self.detail else "")
        )


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.4g}"


def traffic_measurement(check: CheckSpec, health, baseline=None) -> Measurement:
    """The measurement of a check on a built-in series: its value in the canary's step health (``StepHealth`` of
    ``kfrelease.release.signals``) and, but for ``requests``, production's over the same interval (``baseline``,
    None when not read)."""
    series = SERIES[check.series]
    reference = baseline.value(series) if baseline is not None and series.measures != "requests" else None
    return Measurement(health.value(series), health.requests, baseline=reference)


def judge(check: CheckSpec, m: Measurement) -> CheckResult:
    """The status of one check on one measurement (pure)."""
    r = CheckResult(check.name, "passed", m.value, m.samples, check.max, check.min, baseline=m.baseline)
    if m.error:
        r.status, r.detail = "failed", m.error  # an unreadable source is a failed check, not a missing one
        return r
    if m.samples < check.min_samples:
        r.status, r.detail = check.short_status, f"{m.samples:.0f} of {check.min_samples} samples"
        return r
    if check.source == "labels":
        d = m.decision or {}
        r.value, r.interval = d.get("ratio"), d.get("ratio_interval")
        outcome = d.get("decision")
        if outcome == "fail":
            r.status, r.detail = "failed", d.get("reason", "")
        elif outcome == "pass":
            r.status = "passed"
        else:
            r.status = "held" if check.on_inconclusive == "hold" else "skipped"
            r.detail = "inconclusive: " + d.get("reason", "no decision")
        return r
    if m.value is None:
        r.status, r.detail = "skipped", "no observations"
        return r
    series = SERIES[check.series] if check.series else None
    q = series.quantile if series else None
    if q is not None and m.samples < (needed := math.ceil(MIN_TAIL_REQUESTS / (1 - q))):
        r.status = "skipped"
        r.detail = f"{m.samples:.0f} requests; a p{100 * q:g} needs {needed} (of fewer it is about their maximum)"
        return r
    if series and series.measures == "error_rate" and m.baseline is not None:
        if check.max is not None and m.value - m.baseline > check.max:
            r.status, r.detail = "failed", f"above production's {m.baseline:.4g} by more than {check.max:g}"
        return r
    if q is not None and m.baseline is not None and check.max is not None and m.value > check.max:
        if m.value > LATENCY_TOLERANCE * m.baseline:
            r.status = "failed"
            r.detail = f"above {check.max:g} and above {LATENCY_TOLERANCE:g} x production's {m.baseline:.4g}"
        else:
            r.detail = f"above {check.max:g}, as production's {m.baseline:.4g} over the same interval: the machine"
        return r
    if check.max is not None and m.value > check.max:
        r.status, r.detail = "failed", f"above {check.max:g}"
    elif check.min is not None and m.value < check.min:
        r.status, r.detail = "failed", f"below {check.min:g}"
    return r


@dataclass
class CanaryAnalysis:
    """The canary's state machine over its steps (pure: each ``next`` takes one step's check results).

    A failed check counts toward ``failure_threshold`` (over the whole canary, as Flagger's ``threshold``):
    below it the step is held and measured again, at it the release rolls back. A held check (too few
    requests) holds the step; more than ``max_holds`` holds in a row roll back. Otherwise the step
    advances, and after the last one the candidate is promoted."""

    steps: tuple[int, ...]
    failure_threshold: int = 1
    max_holds: int = 3
    index: int = 0
    failures: int = 0
    holds: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def weight(self) -> int:
        return self.steps[self.index]

    @property
    def done(self) -> bool:
        return bool(self.history) and self.history[-1] in ("rollback", "promote")

    def next(self, results: list[CheckResult]) -> tuple[str, str]:
        """(action, why) after one step's results; moves to the next step on ``advance``."""
        statuses = [r.status for r in results]
        if "failed" in statuses:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                return self._act(
                    "rollback", f"{self.failures} failed check(s), failure_threshold {self.failure_threshold}"
                )
            return self._act("hold", f"{self.failures} failed check(s) of {self.failure_threshold} tolerated")
        if "held" in statuses:
            self.holds += 1
            if self.holds > self.max_holds:
                return self._act("rollback", f"held {self.holds} intervals in a row (max_holds {self.max_holds})")
            return self._act(
                "hold",
                f"hold {self.holds} of {self.max_holds}: "
                + ", ".join(r.name for r in results if r.status == "held")
                + " not counted yet",
            )
        self.holds = 0
        if self.index + 1 < len(self.steps):
            self.index += 1
            return self._act("advance", f"advance to {self.steps[self.index]}%")
        return self._act("promote", "last step passed")

    def _act(self, action: str, why: str) -> tuple[str, str]:
        self.history.append(action)
        return action, why


def render_query(query: str, model: str, version: str, stage: str, window_seconds: float) -> str:
    """A declared PromQL expression with the step's placeholders filled in."""
    window = f"{max(1, math.ceil(window_seconds))}s"
    try:
        return query.format(model=model, version=version, stage=stage, window=window)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"canary check query {query!r}: {exc}; the placeholders are {{model}}, {{version}}, {{stage}}, "
            "{window} (write literal braces of PromQL selectors as {{ and }})"
        ) from None
