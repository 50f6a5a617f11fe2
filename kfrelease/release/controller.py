"""The rollout controller: a small state machine that interprets a ``RolloutSpec`` (like Flagger's canary
analysis) and moves traffic through a ``TrafficDriver`` (the local gateway, or the InferenceService on a
cluster).

    preflight -> [first model of its tag: production at once]
              -> shadow (mirror to the staging candidate until the shadow gate decides)
              -> canary step 1 .. n (each: wait ``interval_seconds``, then check error rate, p99 latency
                 and accuracy on labelled canary traffic against production: advance, hold or roll back)
              -> promote (registry ``production``, previous production ``archived``, all traffic)
              or roll back (canary 0 %, candidate ``rejected``, production untouched)

Every decision is appended to the candidate's registry history (``set_stage`` events, with the numbers in
``why`` and in ``evidence``), so ``kfrelease models history MODEL VERSION`` shows the whole release.
Bad input (a malformed spec, a candidate not in staging, an unreadable metric source) raises before any
traffic moves.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kfrelease.config import Settings
from kfrelease.errors import KfreleaseError
from kfrelease.metrics import InsufficientData, regression_metrics
from kfrelease.release.shadow import ShadowVerdict, evaluate_shadow, latest_truth
from kfrelease.release.signals import (
    MetricSourceError,
    PredictorMetrics,
    PrometheusMetrics,
    StepHealth,
)
from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficDriver, TrafficState

log = logging.getLogger(__name__)

WHO = "release-controller"
#: Intervals a step may be held for lack of canary requests before the release is rolled back.
MAX_HOLDS = 3
REPORT_PREFIX = "reports"


class ReleaseError(KfreleaseError):
    """A release cannot start (bad candidate, spec or metric source); no traffic was moved."""


@dataclass
class ReleaseOutcome:
    model: str
    candidate: str
    production_before: str | None
    result: str  # promoted | rejected | rolled_back | stopped
    decisions: list[dict] = field(default_factory=list)
    report_uri: str | None = None

    @property
    def production_after(self) -> str | None:
        return self.candidate if self.result == "promoted" else self.production_before


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def signals_for(settings: Settings, spec: RolloutSpec, candidate: str):
    """The canary's signal source as the spec names it."""
    if spec.canary.metrics_source == "prometheus":
        return PrometheusMetrics(settings.url("prometheus"), spec.model, candidate)
    from kfrelease.serving.services import predictor_port

    return PredictorMetrics(
        f"http://127.0.0.1:{predictor_port(settings, 'canary')}", spec.model, candidate
    )


def resume_step(current: TrafficState | None, candidate: str, steps: list[int]) -> int:
    """The canary step to start at: where the traffic already is when this release's step is re-run (its pod
    was evicted; the cluster driver reads the state back from the cluster), else the first."""
    if current and current.canary == candidate and current.canary_weight in steps:
        return steps.index(current.canary_weight)
    return 0


class ReleaseController:
    def __init__(
        self,
        settings: Settings,
        spec: RolloutSpec,
        driver: TrafficDriver,
        *,
        store=None,
        signals: Callable[[str], object] | None = None,
        preflight_url: str | None = None,
        who: str = WHO,
        poll_seconds: float = 1.0,
        on_decision: Callable[[dict], None] | None = None,
        report: bool = True,
    ):
        from kfrelease.registry import ModelRegistry
        from kfrelease.storage import store_for

        spec.check()
        self.settings, self.spec, self.driver, self.who = settings, spec, driver, who
        self.store = store or store_for("pipeline", settings)
        self.registry = ModelRegistry(self.store)
        self.signals = signals or (lambda version: signals_for(settings, spec, version))
        self.preflight_url = preflight_url
        self.poll_seconds = poll_seconds
        self.on_decision = on_decision
        self.report = report
        self.decisions: list[dict] = []

    # --- recording --------------------------------------------------------------------------------
    def _record(
        self, version: str, stage: str, phase: str, why: str, evidence: dict
    ) -> dict:
        evidence = {"phase": phase, **evidence}
        event = self.registry.set_stage(
            self.spec.model, version, stage, self.who, why, evidence
        )
        self.decisions.append(event)
        log.info("%s %s: %s", self.spec.model, version, why)
        if self.on_decision:
            self.on_decision(event)
        return event

    # --- preflight --------------------------------------------------------------------------------
    def preflight(self, candidate: str):
        """Check everything that can be checked before traffic moves; returns (candidate, production)."""
        model = self.spec.model
        mv = self.registry.get(model, candidate)
        if mv.stage != "staging":
            raise ReleaseError(
                f"{model} {candidate} is {mv.stage or 'not staged'}, not in staging; only a validated staging "
                "candidate can be released (train it on a merge to main first); no traffic was moved"
            )
        production = self.registry.current(model, "production")
        if production is not None and production.version == candidate:
            raise ReleaseError(
                f"{model} {candidate} is already in production; no traffic was moved"
            )
        if self.spec.canary.metrics_source == "prometheus" or self.preflight_url:
            source = (
                PrometheusMetrics(self.settings.url("prometheus"), model, candidate)
                if self.spec.canary.metrics_source == "prometheus"
                else PredictorMetrics(self.preflight_url, model)
            )
            try:
                source.start()
            except MetricSourceError as exc:
                raise ReleaseError(
                    f"metric source {self.spec.canary.metrics_source!r}: {exc}; start it "
                    "(`kfrelease up` / `kfrelease serve`) or change canary.metrics_source; "
                    "no traffic was moved"
                ) from None
        return mv, production

    # --- the whole release ------------------------------------------------------------------------
    def run(self, candidate: str) -> ReleaseOutcome:
        mv, production = self.preflight(candidate)
        if production is None or production.tag != mv.tag:
            return self.first_of_tag(mv, production)
        verdict = self.shadow(candidate, production.version)
        if verdict.decision != "pass":
            return self.outcome_after_shadow(candidate, production.version, verdict)
        return self.canary(candidate, production.version)

    def first_of_tag(self, mv, production) -> ReleaseOutcome:
        """No champion of the same tag: production at once (there is nothing to compare against)."""
        current = self.driver.current()
        if current is not None and current.primary and current.primary != mv.version:
            # the model server that answers clients cannot be swapped in place: move all traffic through
            # the canary first, then make it the primary (no request is dropped)
            self.driver.apply(
                TrafficState(
                    primary=current.primary, canary=mv.version, canary_weight=100
                )
            )
        self.driver.apply(TrafficState(primary=mv.version))
        why = (
            f"first model of tag {mv.tag}: no production model to compare against; promoted directly"
            + (
                f" (replaces {production.version} of tag {production.tag})"
                if production
                else ""
            )
        )
        self._record(
            mv.version,
            "production",
            "promote",
            why,
            {
                "metrics": mv.metrics,
                "replaces": production.version if production else None,
            },
        )
        return ReleaseOutcome(
            self.spec.model,
            mv.version,
            production.version if production else None,
            "promoted",
            list(self.decisions),
        )

    # --- shadow -----------------------------------------------------------------------------------
    def shadow(self, candidate: str, production: str) -> ShadowVerdict:
        """Mirror traffic to the candidate until the shadow gate decides (or ``max_wait_seconds`` pass)."""
        s = self.spec.shadow
        self.driver.apply(
            TrafficState(
                primary=production, shadow=candidate, mirror_percent=s.mirror_percent
            )
        )
        since = _now()
        deadline = time.monotonic() + s.max_wait_seconds
        while True:
            last = time.monotonic() >= deadline
            verdict = evaluate_shadow(
                self.store,
                self.spec.model,
                candidate,
                production,
                since,
                min_samples=s.min_labelled_samples,
                max_rmse_ratio=s.max_rmse_ratio,
                report=self.report,
            )
            if verdict.decision != "wait" or last:
                break
            time.sleep(self.poll_seconds)
        report_uri = None
        if verdict.html:
            key = f"{REPORT_PREFIX}/{self.spec.model}/{candidate}/shadow-gate.html"
            self.store.put_bytes(
                "models", key, verdict.html.encode(), content_type="text/html"
            )
            report_uri = self.store.uri("models", key)
        self.shadow_report_uri = report_uri
        evidence = {**verdict.as_dict(), "report": report_uri}
        if verdict.decision == "pass":
            self._record(candidate, "staging", "shadow", verdict.summary(), evidence)
        elif verdict.decision == "wait":
            verdict.reasons.append(
                f"no verdict within shadow.max_wait_seconds={s.max_wait_seconds:g}"
            )
            evidence = {**verdict.as_dict(), "report": report_uri}
        return verdict

    def outcome_after_shadow(
        self, candidate: str, production: str, verdict: ShadowVerdict
    ) -> ReleaseOutcome:
        self.driver.apply(TrafficState(primary=production))
        evidence = {
            **verdict.as_dict(),
            "report": getattr(self, "shadow_report_uri", None),
        }
        if verdict.decision == "fail":
            stage = "rejected" if self.spec.rollback.reject_candidate else "staging"
            self._record(
                candidate,
                stage,
                "shadow",
                verdict.summary() + "; shadow stopped, production unchanged",
                evidence,
            )
            result = "rejected"
        else:
            self._record(
                candidate,
                "staging",
                "shadow",
                f"shadow gate: insufficient evidence ({'; '.join(verdict.reasons)}); shadow stopped, "
                "candidate stays in staging",
                evidence,
            )
            result = "stopped"
        return ReleaseOutcome(
            self.spec.model,
            candidate,
            production,
            result,
            list(self.decisions),
            getattr(self, "shadow_report_uri", None),
        )

    # --- canary -----------------------------------------------------------------------------------
    def _champion(self, production: str):
        """The production model itself (from the registry, once): it scores the canary's logged inputs."""
        if getattr(self, "_champion_cache", (None,))[0] != production:
            mv = self.registry.get(self.spec.model, production)
            self._champion_cache = (
                production,
                self.registry.load_model(self.spec.model, production),
                mv.features,
            )
        return self._champion_cache[1], self._champion_cache[2]

    def accuracy(
        self, candidate: str, production: str, step_since, canary_since
    ) -> dict:
        """Canary RMSE on its labelled requests of this step against production's RMSE on the *same*
        requests: the production model scores the inputs the canary logged (a paired comparison, as in
        the shadow gate; two disjoint request samples would differ by chance far more than the models do)."""
        import numpy as np

        from kfrelease.serving.feedback import read_feedback
        from kfrelease.serving.logs import read_predictions

        c = self.spec.canary.checks
        preds = read_predictions(self.store, self.spec.model, since=step_since)
        truth = latest_truth(
            read_feedback(self.store, self.spec.model, since=canary_since)
        )
        labelled = preds.merge(truth, on=["request_id", "instance"])
        cand = labelled[
            (labelled["model_version"] == candidate) & (labelled["stage"] != "staging")
        ]
        out = {
            "canary_n": len(cand),
            "min_labelled_samples": c.min_labelled_samples,
            "max_rmse_ratio": c.max_rmse_ratio,
            "compared_on": "the same labelled canary requests",
        }
        if len(cand) < c.min_labelled_samples:
            out["status"] = "skipped"
            return out
        model, features = self._champion(production)
        missing = [f for f in features if f not in cand.columns]
        if missing:
            out.update(status="skipped", detail=f"logged inputs lack {missing}")
            return out
        champion = np.asarray(
            model.predict(cand[features].astype("float64")), dtype="float64"
        ).ravel()
        try:
            cm = regression_metrics(
                cand["truth"], cand["prediction"], min_samples=c.min_labelled_samples
            )
            pm = regression_metrics(
                cand["truth"], champion, min_samples=c.min_labelled_samples
            )
        except InsufficientData:
            out["status"] = "skipped"
            return out
        ratio = cm["rmse"] / pm["rmse"] if pm["rmse"] > 0 else float("inf")
        out.update(
            canary=cm,
            production=pm,
            rmse_ratio=ratio,
            status="passed" if ratio <= c.max_rmse_ratio else "failed",
        )
        return out

    def checks(self, health: StepHealth, accuracy: dict) -> tuple[list[dict], bool]:
        """(checks with their numbers, enough traffic?)."""
        c = self.spec.canary.checks
        enough = health.requests >= self.spec.canary.min_requests
        checks = [
            {
                "name": "requests",
                "value": health.requests,
                "limit": self.spec.canary.min_requests,
                "status": "passed" if enough else "held",
            },
            _at_most("error_rate", health.error_rate, c.max_error_rate),
            _at_most("p99_latency_ms", health.p99_ms, c.max_p99_latency_ms),
            {
                "name": "rmse_ratio",
                "value": accuracy.get("rmse_ratio"),
                "limit": c.max_rmse_ratio,
                "status": accuracy["status"],
                "n": accuracy["canary_n"],
            },
        ]
        return checks, enough

    @staticmethod
    def _describe(weight: int, checks: list[dict]) -> str:
        parts = []
        for ch in checks:
            if ch["name"] == "requests":
                parts.append(f"{ch['value']:.0f} requests (min {ch['limit']})")
            elif ch["name"] == "error_rate":
                parts.append(
                    f"error rate {_fmt(ch['value'], 4)} (max {ch['limit']:g}) {ch['status']}"
                )
            elif ch["name"] == "p99_latency_ms":
                parts.append(
                    f"p99 {_fmt(ch['value'], 1)} ms (max {ch['limit']:g}) {ch['status']}"
                )
            else:
                parts.append(
                    f"rmse ratio {_fmt(ch['value'])} (max {ch['limit']:g}, n={ch['n']}) {ch['status']}"
                )
        return f"canary {weight}%: " + ", ".join(parts)

    def canary(self, candidate: str, production: str) -> ReleaseOutcome:
        """Walk the canary steps; promote after the last one passes, roll back on a failed check."""
        cs = self.spec.canary
        canary_since = _now()
        failures = 0
        steps = list(cs.steps)
        try:
            i = resume_step(self.driver.current(), candidate, steps)
            holds = 0
            while i < len(steps):
                weight = steps[i]
                self.driver.apply(
                    TrafficState(
                        primary=production, canary=candidate, canary_weight=weight
                    )
                )
                step_since = _now()
                signals = self.signals(candidate)
                try:
                    start = signals.start()
                except MetricSourceError:
                    start = None
                time.sleep(cs.interval_seconds)
                try:
                    health = (
                        signals.health(start, cs.interval_seconds)
                        if start is not None or isinstance(signals, PrometheusMetrics)
                        else None
                    )
                except MetricSourceError as exc:
                    health, unreadable = None, str(exc)
                else:
                    unreadable = "the canary's metrics could not be read at the start of the step"
                if health is None:
                    checks = [
                        {"name": "metrics", "status": "failed", "detail": unreadable}
                    ]
                    failed, enough = True, True
                    why = f"canary {weight}%: {unreadable}"
                else:
                    acc = self.accuracy(candidate, production, step_since, canary_since)
                    checks, enough = self.checks(health, acc)
                    failed = any(ch["status"] == "failed" for ch in checks)
                    why = self._describe(weight, checks)
                evidence = {
                    "step": i + 1,
                    "weight": weight,
                    "checks": checks,
                    "window": {
                        "since": step_since.isoformat(),
                        "until": _now().isoformat(),
                    },
                }
                if failed:
                    failures += 1
                    if failures >= cs.failure_threshold:
                        return self.roll_back(candidate, production, why, evidence)
                    self._record(
                        candidate,
                        "staging",
                        "canary",
                        f"{why}; hold ({failures} failed "
                        f"check(s) of {cs.failure_threshold} tolerated)",
                        {**evidence, "action": "hold"},
                    )
                    continue
                if not enough:
                    holds += 1
                    if holds > MAX_HOLDS:
                        return self.roll_back(
                            candidate,
                            production,
                            f"{why}; too little canary traffic after {MAX_HOLDS} extra intervals",
                            evidence,
                        )
                    self._record(
                        candidate,
                        "staging",
                        "canary",
                        f"{why}; hold (too few requests)",
                        {**evidence, "action": "hold"},
                    )
                    continue
                holds = 0
                if i + 1 < len(steps):
                    self._record(
                        candidate,
                        "staging",
                        "canary",
                        f"{why}; advance to {steps[i + 1]}%",
                        {**evidence, "action": "advance"},
                    )
                else:
                    return self.promote(candidate, production, why, evidence)
                i += 1
        except BaseException:
            log.exception(
                "release of %s interrupted; moving all traffic back to %s",
                candidate,
                production,
            )
            try:
                self.driver.apply(TrafficState(primary=production))
            except Exception:
                log.exception("could not move traffic back to %s", production)
            raise

    def promote(
        self, candidate: str, production: str, why: str, evidence: dict
    ) -> ReleaseOutcome:
        self.driver.apply(TrafficState(primary=candidate))
        self._record(
            candidate,
            "production",
            "promote",
            f"{why}; promoted: all traffic to {candidate}, {production} archived",
            {**evidence, "action": "promote", "replaces": production},
        )
        return ReleaseOutcome(
            self.spec.model,
            candidate,
            production,
            "promoted",
            list(self.decisions),
            getattr(self, "shadow_report_uri", None),
        )

    def roll_back(
        self, candidate: str, production: str, why: str, evidence: dict
    ) -> ReleaseOutcome:
        self.driver.apply(TrafficState(primary=production))
        stage = "rejected" if self.spec.rollback.reject_candidate else "staging"
        self._record(
            candidate,
            stage,
            "rollback",
            f"{why}; rolled back: canary 0%, {production} unchanged",
            {**evidence, "action": "rollback"},
        )
        return ReleaseOutcome(
            self.spec.model,
            candidate,
            production,
            "rolled_back",
            list(self.decisions),
            getattr(self, "shadow_report_uri", None),
        )


def _at_most(name: str, value: float | None, limit: float) -> dict:
    """A check that ``value`` is at most ``limit``; ``skipped`` when there is no value to judge."""
    status = "skipped" if value is None else "passed" if value <= limit else "failed"
    return {"name": name, "value": value, "limit": limit, "status": status}
