"""The rollout controller: a small state machine that interprets a ``RolloutSpec`` (like Flagger's canary
analysis) and moves traffic through a ``TrafficDriver`` (the local gateway, or the InferenceService on a
cluster).

    preflight -> [first model of its tag: production at once]
              -> shadow (mirror to the staging candidate until the shadow gate decides)
              -> canary step 1 .. n (each: wait ``interval_seconds``, measure the declared checks
                 (requests, error rate, p99 latency, the paired accuracy test on labelled canary traffic),
                 ask the judge (``kfrelease.release.checks``): advance, hold or roll back)
              -> promote (registry ``production``, previous production ``archived``, all traffic)
              or roll back (canary 0 %, candidate ``rejected``, production untouched)

Every decision is appended to the candidate's registry history (``set_stage`` events, with the numbers in
``why`` and in ``evidence``), so ``kfrelease models history MODEL VERSION`` shows the whole release.
Bad input (a malformed spec, a candidate not in staging, an unreadable metric source) raises before any
traffic moves.

Over 500 lines on purpose: the module is one state machine (``ReleaseController``) whose phases share its
state and its registry writes; the pure parts it relies on live beside it (``plan``, ``checks``,
``decision``, ``signals``, ``shadow``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kfrelease.config import Settings, setting
from kfrelease.errors import KfreleaseError
from kfrelease.release.checks import CanaryAnalysis, Measurement, judge, render_query
from kfrelease.release.decision import PairSequence, decide
from kfrelease.release.shadow import ShadowVerdict, evaluate_shadow
from kfrelease.release.signals import (
    MetricSourceError,
    PredictorMetrics,
    PrometheusMetrics,
)
from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficDriver, TrafficState

log = logging.getLogger(__name__)

WHO = "release-controller"
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


class SystemClock:
    """Time as the controller sees it; tests pass a fake one (``monotonic``, ``sleep``)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


Clock = SystemClock


def _import_report_library() -> None:
    try:
        import evidently.presets  # noqa: F401 - the shadow gate's report renders with it
    except Exception as exc:  # noqa: BLE001 - the report, rendered later, says what failed
        log.debug("Evidently could not be imported ahead of the shadow report: %s", exc)


def on_cluster() -> bool:
    return setting("KFRELEASE_TARGET") == "cluster"


def metrics_source(spec: RolloutSpec) -> str:
    """``canary.metrics_source`` resolved: ``auto`` is the model servers' /metrics on the embedded stack
    and Prometheus on a cluster (``KFRELEASE_TARGET=cluster``)."""
    source = spec.canary.metrics_source
    if source == "auto":
        return "prometheus" if on_cluster() else "predictor"
    return source


def prometheus_url(settings: Settings, spec: RolloutSpec) -> str:
    """The canary's Prometheus: ``canary.prometheus_url``, else ``KFRELEASE_PROMETHEUS_URL``, else (embedded
    stack only) the stack's own. A pipeline pod on a cluster has no Prometheus on 127.0.0.1."""
    url = spec.canary.prometheus_url or (setting("KFRELEASE_PROMETHEUS_URL") or "")
    if url:
        return url
    if on_cluster():
        raise ReleaseError(
            "canary.metrics_source is prometheus but no Prometheus URL is configured for the cluster; set "
            "canary.prometheus_url in the rollout spec (or KFRELEASE_PROMETHEUS_URL), e.g. "
            "http://prometheus-operated.monitoring:9090; no traffic was moved"
        )
    return settings.url("prometheus")


def signals_for(settings: Settings, spec: RolloutSpec, candidate: str):
    """The canary's signal source as the spec names it."""
    if metrics_source(spec) == "prometheus":
        from kfrelease.k8s.render.inference import CANARY_SERIES_STAGE

        stage = CANARY_SERIES_STAGE if on_cluster() else "canary"
        return PrometheusMetrics(prometheus_url(settings, spec), spec.model, candidate, stage=stage)
    if on_cluster():
        raise ReleaseError(
            "canary.metrics_source predictor reads the model servers on 127.0.0.1 (the embedded stack); on a "
            "cluster use metrics_source: prometheus with canary.prometheus_url (queries on the predictors' or "
            "Istio's series as the canary checks declare them); no traffic was moved"
        )
    from kfrelease.serving.services import predictor_port

    return PredictorMetrics(f"http://127.0.0.1:{predictor_port(settings, 'canary')}", spec.model, candidate)


#: instances per request when the canary's logged inputs are replayed to production's model server
REPLAY_BATCH = 1000


def production_predictor_url(settings: Settings, spec: RolloutSpec) -> str:
    """Production's model server, asked directly (not through the gateway, whose canary split would send some
    requests to the candidate): the embedded stack's production server, or on a cluster the production
    InferenceService's predictor Service (``<isvc>-predictor``, kserve/kserve ``pkg/constants/constants.go``
    ``PredictorServiceName``, via ``kfrelease.k8s.render.inference.predictor_service``)."""
    if on_cluster():
        from kfrelease.k8s.render.inference import predictor_service, production_name

        return f"http://{predictor_service(production_name(spec), None)}.{spec.serving.namespace}.svc.cluster.local"
    from kfrelease.serving.services import predictor_port

    return f"http://127.0.0.1:{predictor_port(settings, 'production')}"


class ModelServerScorer:
    """Asks a model server for its answers (KServe v1 ``:predict``, instances in the input schema's order)."""

    def __init__(self, url: str, model: str, timeout: float = 30.0):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout

    def __call__(self, version: str, instances: list, request_id: str) -> list:
        import httpx

        try:
            r = httpx.post(
                f"{self.url}/v1/models/{self.model}:predict",
                json={"instances": instances},
                headers={"x-request-id": request_id},
                timeout=self.timeout,
            )
            r.raise_for_status()
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricSourceError(f"production's model server at {self.url} did not answer ({exc})") from None
        served = r.headers.get("x-model-version") or body.get("model_version")
        if served and served != version:
            raise MetricSourceError(f"production's model server answers as {served}, not {version}")
        return body["predictions"]


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
        production_scorer: Callable[[str, list, str], list] | None = None,
        preflight_url: str | None = None,
        who: str = WHO,
        poll_seconds: float = 1.0,
        on_decision: Callable[[dict], None] | None = None,
        report: bool = True,
        clock: Clock | None = None,
    ):
        from kfrelease.registry import ModelRegistry
        from kfrelease.storage import store_for

        self.settings, self.spec, self.driver, self.who = settings, spec, driver, who
        self.store = store or store_for("pipeline", settings)
        self.registry = ModelRegistry(self.store)
        self.signals = signals or (lambda version: signals_for(settings, spec, version))
        self.production_scorer = production_scorer or ModelServerScorer(
            production_predictor_url(settings, spec), spec.model
        )
        self.preflight_url = preflight_url
        self.poll_seconds = poll_seconds
        self.on_decision = on_decision
        self.report = report
        self.clock = clock or SystemClock()
        self.decisions: list[dict] = []

    # --- recording --------------------------------------------------------------------------------
    def _record(self, version: str, stage: str, phase: str, why: str, evidence: dict) -> dict:
        evidence = {"phase": phase, **evidence}
        event = self.registry.set_stage(self.spec.model, version, stage, self.who, why, evidence)
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
            raise ReleaseError(f"{model} {candidate} is already in production; no traffic was moved")
        kind = metrics_source(self.spec)
        if kind == "prometheus" or self.preflight_url or on_cluster():
            source = (
                PredictorMetrics(self.preflight_url, model)
                if self.preflight_url and kind != "prometheus"
                else signals_for(self.settings, self.spec, candidate)
            )
            try:
                source.start()
            except MetricSourceError as exc:
                raise ReleaseError(
                    f"metric source {kind!r}: {exc}; start it "
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
            self.driver.apply(TrafficState(primary=current.primary, canary=mv.version, canary_weight=100))
        self.driver.apply(TrafficState(primary=mv.version))
        why = f"first model of tag {mv.tag}: no production model to compare against; promoted directly" + (
            f" (replaces {production.version} of tag {production.tag})" if production else ""
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
        if self.report:  # import Evidently (seconds) while the evidence arrives, not after the decision
            threading.Thread(target=_import_report_library, name="import-evidently", daemon=True).start()
        self.driver.apply(TrafficState(primary=production, shadow=candidate, mirror_percent=s.mirror_percent))
        since = _now()
        rule, scale, order = s.rule(), self.reference_rmse(production), PairSequence()
        deadline = self.clock.monotonic() + s.max_wait_seconds
        while True:
            last = self.clock.monotonic() >= deadline
            verdict = evaluate_shadow(
                self.store,
                self.spec.model,
                candidate,
                production,
                since,
                rule=rule,
                scale=scale,
                order=order,
                at_limit=last,
                report=self.report,
            )
            if verdict.decided:
                break
            self.clock.sleep(self.poll_seconds)
        report_uri = None
        if verdict.html:
            key = f"{REPORT_PREFIX}/{self.spec.model}/{candidate}/shadow-gate.html"
            self.store.put_bytes("models", key, verdict.html.encode(), content_type="text/html")
            report_uri = self.store.uri("models", key)
        self.shadow_report_uri = report_uri
        evidence = {**verdict.as_dict(), "report": report_uri}
        if verdict.decision == "pass":
            self._record(candidate, "staging", "shadow", verdict.summary(), evidence)
        elif verdict.decision == "insufficient":
            verdict.reasons.append(f"shadow.max_wait_seconds={s.max_wait_seconds:g} or shadow.max_samples reached")
        return verdict

    def reference_rmse(self, production: str) -> float | None:
        """Production's held-out RMSE from its registry entry: fixes the gate's clip before the first pair."""
        rmse = (self.registry.get(self.spec.model, production).metrics or {}).get("rmse")
        return float(rmse) if rmse else None

    def outcome_after_shadow(self, candidate: str, production: str, verdict: ShadowVerdict) -> ReleaseOutcome:
        self.driver.apply(TrafficState(primary=production))
        evidence = {
            **verdict.as_dict(),
            "report": getattr(self, "shadow_report_uri", None),
        }
        reject = verdict.decision == "fail" or self.spec.shadow.at_limit == "reject"
        if reject:
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
                f"{verdict.summary()}; insufficient evidence: shadow stopped, production unchanged, "
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
    def production_answers(self, production: str, frame) -> np.ndarray:
        """Production's answers to the canary's logged inputs (``frame``: one row per labelled canary request),
        asked of production's own model server, where production's model code runs as the serving identity:
        the release driver never loads a model file (no pickle runs here). Answers are kept per (request,
        instance), so each logged input is sent once. The requests carry ids of their own (``replay-<id>``):
        production logs them as its predictions without labels, never as the canary's request."""
        features = self.registry.get(self.spec.model, production).features
        cache = self.__dict__.setdefault("_production_answers", {}).setdefault(production, {})
        keys = list(zip(frame["request_id"].astype(str), frame["instance"].astype(int)))
        todo = [i for i, k in enumerate(keys) if k not in cache]
        for start in range(0, len(todo), REPLAY_BATCH):
            rows = todo[start : start + REPLAY_BATCH]
            instances = frame.iloc[rows][features].astype("float64").to_numpy().tolist()
            rid = f"replay-{keys[rows[0]][0]}-{len(cache)}"
            for i, answer in zip(rows, self.production_scorer(production, instances, rid), strict=True):
                cache[keys[i]] = float(answer)
        return np.asarray([cache[k] for k in keys], dtype="float64")

    def canary_pairs(self, candidate: str, production: str, canary_since, order: PairSequence):
        """The canary's labelled requests since the canary started, in arrival order: truth, the canary's
        answer, and the production model's answer to the *same* logged inputs (the production model scores
        them: a paired comparison as in the shadow gate; two disjoint request samples would differ by
        chance far more than the models do). The pairs come only from the canary's share of traffic, so
        they accumulate over the steps (the test is anytime-valid) at about share x labelled rate."""
        import pandas as pd

        from kfrelease import lake

        labelled = lake.join_truth(
            lake.read_predictions(self.store, self.spec.model, since=canary_since),
            lake.read_labels(self.store, self.spec.model, since=canary_since),
            how="inner",
        )
        cand = labelled[(labelled["model_version"] == candidate) & (labelled["stage"] != "staging")].drop_duplicates(
            ["request_id", "instance"]
        )
        features = self.registry.get(self.spec.model, production).features
        missing = [f for f in features if f not in cand.columns]
        if cand.empty or missing:
            return pd.DataFrame(columns=["request_id", "instance", "truth", "candidate", "production"])
        champion = self.production_answers(production, cand)
        pairs = pd.DataFrame(
            {
                "request_id": cand["request_id"].to_numpy(),
                "instance": cand["instance"].to_numpy(),
                "truth": cand["truth"].to_numpy(dtype="float64"),
                "candidate": cand["prediction"].to_numpy(dtype="float64"),
                "production": champion,
            }
        )
        return order.extend(pairs)

    def measure(
        self, source, start, seconds: float, candidate: str, production: str, canary_since, order
    ) -> dict[str, Measurement]:
        """One measurement per declared check (nothing judged here)."""
        out: dict[str, Measurement] = {}
        health, unreadable = None, None
        if start is None and not isinstance(source, PrometheusMetrics):
            unreadable = "the canary's metrics could not be read at the start of the step"
        else:
            try:
                health = source.health(start, seconds)
            except MetricSourceError as exc:
                unreadable = str(exc)
        pairs = None
        for check in self.spec.canary.checks:
            if check.source == "labels":
                if pairs is None:
                    pairs = self.canary_pairs(candidate, production, canary_since, order)
                rule = dataclasses.replace(
                    self.spec.shadow.rule(),
                    min_samples=max(2, check.min_samples),
                    max_samples=None,
                    **{k: getattr(check, k) for k in ("margin", "error_rate") if getattr(check, k) is not None},
                )
                d = decide(
                    pairs["truth"], pairs["candidate"], pairs["production"], rule, self.reference_rmse(production)
                )
                out[check.name] = Measurement(d.ratio, len(pairs), d.as_dict())
            elif unreadable:
                out[check.name] = Measurement(error=unreadable)
            elif check.query:
                try:
                    value = source.query(render_query(check.query, self.spec.model, candidate, source.stage, seconds))
                except MetricSourceError as exc:
                    out[check.name] = Measurement(error=str(exc))
                    continue
                out[check.name] = Measurement(value, health.requests)
            else:
                value = {"requests": health.requests, "error_rate": health.error_rate, "p99_latency_ms": health.p99_ms}[
                    check.series
                ]
                out[check.name] = Measurement(value, health.requests)
        return out

    def canary(self, candidate: str, production: str) -> ReleaseOutcome:
        """Walk the canary steps: each interval measure every declared check, ask the judge
        (``kfrelease.release.checks``), record; promote after the last step, roll back when it says so."""
        cs = self.spec.canary
        analysis = CanaryAnalysis(tuple(cs.steps), cs.failure_threshold, cs.max_holds)
        # a re-run of this release's step (its pod was evicted) resumes where the traffic already is
        analysis.index = resume_step(self.driver.current(), candidate, list(cs.steps))
        canary_since, order = _now(), PairSequence()
        try:
            while True:
                weight, step = analysis.weight, analysis.index + 1
                self.driver.apply(TrafficState(primary=production, canary=candidate, canary_weight=weight))
                step_since = _now()
                source = self.signals(candidate)
                try:
                    start = source.start()
                except MetricSourceError:
                    start = None
                self.clock.sleep(cs.interval_seconds)
                measured = self.measure(source, start, cs.interval_seconds, candidate, production, canary_since, order)
                results = [judge(check, measured[check.name]) for check in cs.checks]
                action, reason = analysis.next(results)
                why = f"canary {weight}%: " + ", ".join(r.describe() for r in results) + f"; {action}: {reason}"
                evidence = {
                    "step": step,
                    "weight": weight,
                    "checks": [r.as_dict() for r in results],
                    "action": action,
                    "failures": analysis.failures,
                    "holds": analysis.holds,
                    "window": {"since": step_since.isoformat(), "until": _now().isoformat()},
                }
                if action == "rollback":
                    return self.roll_back(candidate, production, why, evidence)
                if action == "promote":
                    return self.promote(candidate, production, why, evidence)
                self._record(candidate, "staging", "canary", why, evidence)
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

    def promote(self, candidate: str, production: str, why: str, evidence: dict) -> ReleaseOutcome:
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

    def roll_back(self, candidate: str, production: str, why: str, evidence: dict) -> ReleaseOutcome:
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
