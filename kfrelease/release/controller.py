"""The rollout controller: a small state machine that interprets a ``RolloutSpec`` (like Flagger's canary
analysis) and moves traffic through a ``TrafficDriver`` (the local gateway, or the InferenceService on a
cluster).

    preflight (refuses a model spec without an absolute threshold)
              -> [no production model at all (``first_model``): nothing to split against or compare with;
                  the candidate serves all traffic as provisional until the one-sample test of its spec's
                  thresholds on its own labelled requests and its traffic checks pass (production), or
                  fail (withdrawn: no production model, the gateway answers 503 naming why)]
              -> shadow (mirror to the staging candidate until the shadow gate decides; a tag bump only
                 when its inputs are production's, ``release_path``)
              -> canary step 1 .. n (each: wait ``interval_seconds``, measure the declared checks
                 (requests, error rate and p99 latency against production's over the same interval, the
                 paired accuracy test on labelled canary traffic; for a tag bump also the one-sample test
                 of the spec's absolute thresholds, ``thresholds``, which must pass before promotion),
                 ask the judge (``kfrelease.release.checks``): advance, hold or roll back)
              -> promote (registry ``production``, previous production ``archived``, all traffic)
              or roll back (canary 0 %, production untouched; the candidate ``rejected`` only when an
                 accuracy check failed, else left in ``staging``, releasable again: latency, errors and
                 unreadable signals are the machine's, not the model's)

Every decision is appended to the candidate's registry history (``set_stage`` events, with the numbers in
``why`` and in ``evidence``), so ``kfrelease models history MODEL VERSION`` shows the whole release.
Bad input (a malformed spec, a candidate not in staging, an unreadable metric source) raises before any
traffic moves.

Over 500 lines on purpose: the module is one state machine (``ReleaseController``) whose phases share its
state and its registry writes; the pure parts it relies on live beside it (``plan``, ``checks``,
``decision``, ``signals``, ``shadow``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from kfrelease import httpcalls, lake
from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.k8s.environments import ServingLimits
from kfrelease.k8s.render.inference import (
    CANARY_SERIES_STAGE,
    DEFAULT_DOMAIN,
    REPLAY_HEADER,
    REPLAY_VALUE,
    client_hosts,
)
from kfrelease.k8s.render.platform import INGRESS_GATEWAY_URL
from kfrelease.registry import ModelRegistry
from kfrelease.registry.artifact import declared_categories, refuse_pickle_serving
from kfrelease.release.checks import CanaryAnalysis, Measurement, judge, render_query, traffic_measurement
from kfrelease.release.decision import PairSequence, decide, threshold_decide, threshold_limit
from kfrelease.release.shadow import ShadowVerdict, evaluate_shadow
from kfrelease.release.signals import (
    MetricSourceError,
    PredictorMetrics,
    PrometheusMetrics,
)
from kfrelease.rollout.spec import CheckSpec, RolloutSpec, ServingSpec
from kfrelease.rollout.traffic import TrafficDriver, TrafficState
from kfrelease.storage import store_for
from kfrelease.training.resources import cpu_cores, memory_bytes
from kfrelease.training.spec import parse_spec

log = logging.getLogger(__name__)

WHO = "release-controller"
REPORT_PREFIX = "reports"
#: The derived canary check of a tag bump: the one-sample test of the model spec's absolute thresholds.
THRESHOLDS_CHECK = "thresholds"
THRESHOLD_KEYS = ("max_mse", "max_rmse", "max_mae", "min_r2")


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


def _step_start(source):
    """A metric source's reading at the start of a step, or None when it cannot be read (the step then
    measures what it can: an unreadable start is judged by the checks, never raised)."""
    try:
        return source.start()
    except MetricSourceError:
        return None


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
        # heavy: evidently (seconds): loaded here, ahead of the shadow gate's report that renders with it
        import evidently.presets  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - the report, rendered later, says what failed
        log.debug("Evidently could not be imported ahead of the shadow report: %s", exc)


def on_cluster() -> bool:
    return setting("KFRELEASE_TARGET") == "cluster"


def serving_limit_problems(serving: ServingSpec, limits: ServingLimits) -> list[str]:
    """What of a rollout spec's ``serving`` goes beyond the platform's ``limits`` (empty: within them)."""
    problems = []
    for key in ("min_replicas", "max_replicas"):
        if getattr(serving, key) > limits.max_replicas:
            problems.append(f"serving.{key} {getattr(serving, key)} > {limits.max_replicas}")
    if cpu_cores(serving.cpu) > cpu_cores(limits.cpu):
        problems.append(f"serving.cpu {serving.cpu} > {limits.cpu}")
    if memory_bytes(serving.memory) > memory_bytes(limits.memory):
        problems.append(f"serving.memory {serving.memory} > {limits.memory}")
    return problems


def serving_limits() -> ServingLimits:
    """The platform's ceiling the release steps were given (``KFRELEASE_SERVING_LIMITS``), else the defaults."""
    text = setting("KFRELEASE_SERVING_LIMITS")
    if not text:
        return ServingLimits()
    try:
        return ServingLimits(**json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ReleaseError(
            f"KFRELEASE_SERVING_LIMITS {text!r} is not the JSON of max_replicas, cpu and memory ({exc}); "
            "re-render and re-apply the release PodDefault (kfrelease manifests render); no traffic was moved"
        ) from None


def metrics_source(spec: RolloutSpec) -> str:
    """``canary.metrics_source`` resolved: ``auto`` is the model servers' /metrics on the embedded stack
    and Prometheus on a cluster (``KFRELEASE_TARGET=cluster``)."""
    source = spec.canary.metrics_source
    if source == "auto":
        return "prometheus" if on_cluster() else "predictor"
    return source


def prometheus_url(settings: Settings, spec: RolloutSpec) -> str:
    """The canary's Prometheus. On a cluster the platform's, ``KFRELEASE_PROMETHEUS_URL`` (the release steps'
    PodDefault pins it): the merge's rollout.yaml does not choose where its canary's traffic evidence is read from,
    so a ``canary.prometheus_url`` naming another server is refused (review eks5 L2). On the embedded stack
    ``canary.prometheus_url``, else ``KFRELEASE_PROMETHEUS_URL``, else the stack's own."""
    platform = setting("KFRELEASE_PROMETHEUS_URL") or ""
    asked = spec.canary.prometheus_url
    if not on_cluster():
        return asked or platform or settings.url("prometheus")
    if not platform:
        raise ReleaseError(
            "canary.metrics_source is prometheus but no Prometheus URL is configured for the cluster; set "
            "KFRELEASE_PROMETHEUS_URL in the release steps' environment (the PodDefault kfrelease-release-driver-step "
            "sets it), e.g. http://prometheus-operated.monitoring.svc:9090; no traffic was moved"
        )
    if asked and asked.rstrip("/") != platform.rstrip("/"):
        raise ReleaseError(
            f"canary.prometheus_url {asked} is not the platform's Prometheus ({platform}, KFRELEASE_PROMETHEUS_URL): "
            "on a cluster the canary's traffic evidence is read from the platform's only; remove "
            "canary.prometheus_url from rollout.yaml; no traffic was moved"
        )
    return platform


def signals_for(settings: Settings, spec: RolloutSpec, candidate: str, stage: str = "canary"):
    """The signal source of ``candidate`` serving as ``stage`` (the canary, or ``production`` for the same
    interval's baseline), as the spec names it."""
    if metrics_source(spec) == "prometheus":
        namespace = None  # the embedded stack's model servers are in no namespace
        if on_cluster():  # the canary's and production's pods both say stage="production" there
            stage, namespace = CANARY_SERIES_STAGE, spec.serving.namespace
        return PrometheusMetrics(
            prometheus_url(settings, spec), spec.model, candidate, stage=stage, namespace=namespace
        )
    if on_cluster():
        raise ReleaseError(
            "canary.metrics_source predictor reads the model servers on 127.0.0.1 (the embedded stack); on a "
            "cluster use metrics_source: prometheus, the platform's Prometheus (queries on the predictors' or "
            "Istio's series as the canary checks declare them); no traffic was moved"
        )
    from kfrelease.stack.serving import predictor_port  # heavy: jinja2

    return PredictorMetrics(f"http://127.0.0.1:{predictor_port(settings, stage)}", spec.model, candidate)


def spec_thresholds(mv) -> dict[str, float]:
    """The absolute thresholds of a version's model spec (``validation.max_rmse`` ...), from its registry entry."""
    text = (mv.entry.get("spec") or {}).get("text")
    if text:
        return parse_spec(text).thresholds()
    checks = (mv.entry.get("verdict") or {}).get("checks") or []
    return {
        c["name"].split(":", 1)[1]: float(c["limit"])
        for c in checks
        if str(c.get("name", "")).startswith("threshold:") and c.get("limit") is not None
    }


def release_path(mv, production) -> str:
    """``first`` (no production model at all), ``shadow`` (a champion whose inputs are the candidate's:
    the same tag, or a tag bump with the same input schema) or ``canary`` (a tag bump whose inputs differ:
    canary steps judged on the spec's absolute thresholds)."""
    if production is None:
        return "first"
    if production.tag == mv.tag or sorted(production.features) == sorted(mv.features):
        return "shadow"
    return "canary"


#: instances per request when the canary's logged inputs are replayed to production's model server
REPLAY_BATCH = 1000


def production_model_server(settings: Settings, spec: RolloutSpec) -> ModelServerScorer:
    """Production's model server, asked for its answers so that only production answers (never the gateway's
    canary split, which would send some requests to the candidate):

    - on the embedded stack, production's own server (``predictor_port(settings, 'production')``);
    - on a cluster, the ingress gateway (``KFRELEASE_INGRESS_GATEWAY_URL``) with the model's public release
      host, the replay header and the release step's projected token (``KFRELEASE_REPLAY_TOKEN_PATH``): the
      release VirtualService's ``replay`` route sends it to production's predictor alone
      (``kfrelease.k8s.render.inference.replay_destination``), and the gateway admits it for the release
      driver only (``kfrelease.k8s.render.mesh.replay_gateway_policy``). A predictor Service cannot be called
      directly: KFP runs the step without a sidecar (kubeflow/pipelines#14468), so in RawDeployment the
      predictors' ALLOW policy under Kubeflow's ``global-deny-all`` refuses it (and KServe 0.20's named
      predictors have ``<isvc>-<predictor>-predictor``); in Serverless ``<isvc>-predictor`` passes through
      Knative's local gateway but splits between the two revisions during the canary, silently."""
    if on_cluster():
        token = setting("KFRELEASE_REPLAY_TOKEN_PATH")
        if not token:
            raise ReleaseError(
                "KFRELEASE_REPLAY_TOKEN_PATH is not set: the release step has no token to ask production's "
                "predictor through the ingress gateway; run it with the label kfrelease.io/step-identity="
                "release-driver (its PodDefault mounts the token); no traffic was moved"
            )
        return ModelServerScorer(
            setting("KFRELEASE_INGRESS_GATEWAY_URL") or INGRESS_GATEWAY_URL,
            spec.model,
            host=client_hosts(spec, setting("KFRELEASE_SERVING_DOMAIN") or DEFAULT_DOMAIN)[0],
            headers={REPLAY_HEADER: REPLAY_VALUE},
            token_path=str(token),
        )
    from kfrelease.stack.serving import predictor_port  # heavy: jinja2

    return ModelServerScorer(f"http://127.0.0.1:{predictor_port(settings, 'production')}", spec.model)


def _instances(frame, features: list[str]) -> list[list]:
    """Logged inputs as a request's instances, in input-schema order: numbers as floats, category values (text,
    as logged) as they are."""
    cols = [
        frame[f].astype("float64") if pd.api.types.is_numeric_dtype(frame[f]) else frame[f].astype(object)
        for f in features
    ]
    return [[v if isinstance(v, str) else float(v) for v in row] for row in zip(*cols, strict=True)]


class ModelServerScorer:
    """Asks a model server for its answers (KServe v1 ``:predict``, instances in the input schema's order);
    ``host``, ``headers`` and ``token_path`` (a bearer token read on every call: the kubelet renews projected
    tokens) for a gateway in between."""

    def __init__(
        self,
        url: str,
        model: str,
        timeout: float = 30.0,
        *,
        host: str | None = None,
        headers: dict[str, str] | None = None,
        token_path: str | None = None,
    ):
        self.url, self.model, self.timeout = url.rstrip("/"), model, timeout
        self.host, self.headers, self.token_path = host, dict(headers or {}), token_path

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {**self.headers, "x-request-id": request_id}
        if self.host:
            headers["host"] = self.host
        if self.token_path:
            try:
                token = Path(self.token_path).read_text().strip()
            except OSError as exc:
                raise MetricSourceError(
                    f"cannot read the release step's token {self.token_path} ({exc.strerror}); its PodDefault "
                    "(kfrelease.io/step-identity=release-driver) mounts it"
                ) from None
            headers["authorization"] = f"Bearer {token}"
        return headers

    def __call__(self, version: str, instances: list, request_id: str) -> list:
        where = f"{self.url} (host {self.host})" if self.host else self.url
        try:
            r = httpcalls.post(
                f"{self.url}/v1/models/{self.model}:predict",
                json={"instances": instances},
                headers=self._headers(request_id),
                timeout=self.timeout,
            )
            r.raise_for_status()
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricSourceError(f"production's model server at {where} did not answer ({exc})") from None
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
        baseline_signals: Callable[[str], object] | None = None,
    ):
        from kfrelease.collectors.feedback import declared_label_sources  # heavy: prometheus_client

        self.settings, self.spec, self.driver, self.who = settings, spec, driver, who
        #: whose labels the gates count (``kfrelease.collectors.feedback.declared_label_sources``)
        self.label_sources = declared_label_sources(settings)
        self.store = store or store_for("pipeline", settings)
        self.registry = ModelRegistry(self.store)
        self.signals = signals or (lambda version: signals_for(settings, spec, version))
        self.production_scorer = production_scorer or production_model_server(settings, spec)
        # production's signals over each canary step (tests pass theirs; None: from the spec, if it can be read)
        self._baseline_signals = baseline_signals if signals is None or baseline_signals else (lambda _v: None)
        self._live_thresholds, self._comparable, self._threshold_order = False, True, PairSequence()
        self.preflight_url = preflight_url
        self.poll_seconds = poll_seconds
        self.on_decision = on_decision
        self.report = report
        self.clock = clock or SystemClock()
        self.decisions: list[dict] = []

    def _wait(self, seconds: float) -> None:
        """The time between two measurements. A cluster driver renews the model's release Lease meanwhile
        (``KServeTrafficDriver.wait``), so the Lease can be short and a release killed mid-wait is found
        abandoned within minutes."""
        wait = getattr(self.driver, "wait", None)
        if wait is None:
            self.clock.sleep(seconds)
        else:
            wait(seconds, self.clock.sleep)

    # --- recording --------------------------------------------------------------------------------
    def _record(self, version: str, stage: str, phase: str, why: str, evidence: dict) -> dict:
        evidence = {"phase": phase, **evidence}
        event = self.registry.set_stage(self.spec.model, version, stage, self.who, why, evidence)
        self.decisions.append(event)
        log.info("%s %s: %s", self.spec.model, version, why)
        if self.on_decision:
            self.on_decision(event)
        return event

    def _outcome(self, candidate: str, production: str, result: str) -> ReleaseOutcome:
        """How a release past its shadow ended: the decisions recorded so far and the shadow's report (if any)."""
        return ReleaseOutcome(
            self.spec.model,
            candidate,
            production,
            result,
            list(self.decisions),
            getattr(self, "shadow_report_uri", None),
        )

    # --- preflight --------------------------------------------------------------------------------
    def preflight(self, candidate: str):
        """Check everything that can be checked before traffic moves; returns (candidate, production)."""
        model = self.spec.model
        if on_cluster():  # one model's predictors must leave the shared serving nodes to the others (eks5 S4)
            try:
                problems = serving_limit_problems(self.spec.serving, serving_limits())
            except (ConfigError, ValueError) as exc:  # a quantity that is not one (float('2x'))
                raise ReleaseError(f"{model} {candidate}: {exc}; no traffic was moved") from None
            if problems:
                raise ReleaseError(
                    f"{model} {candidate}: its rollout spec asks more of the serving nodes than the platform allows "
                    f"one model ({'; '.join(problems)}); lower serving: in rollout.yaml and merge again, or ask the "
                    "platform team to raise serving_limits in environments.yaml; no traffic was moved"
                )
        mv = self.registry.get(model, candidate)
        if mv.stage != "staging":
            raise ReleaseError(
                f"{model} {candidate} is {mv.stage or 'not staged'}, not in staging; only a validated staging "
                "candidate can be released (train it on a merge to main first); no traffic was moved"
            )
        if not spec_thresholds(mv):
            raise ReleaseError(
                f"{model} {candidate}: its model spec sets no absolute threshold, so nothing could say it is good "
                "enough on its own; set at least one of validation.max_rmse, validation.max_mse, "
                "validation.max_mae or validation.min_r2 in model.yaml and merge again; no traffic was moved"
            )
        try:  # on a cluster no predictor reads a pickle, and the evidence is only as good as that (review eks4 R2)
            refuse_pickle_serving(mv.entry, f"{model} {candidate}", "no traffic was moved")
        except ConfigError as exc:
            raise ReleaseError(str(exc)) from None
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
        path = release_path(mv, production)
        if path == "first":
            return self.first_model(mv)
        if path == "shadow":
            verdict = self.shadow(candidate, production.version)
            if verdict.decision != "pass":
                return self.outcome_after_shadow(candidate, production.version, verdict)
        return self.canary(candidate, production.version)

    def first_model(self, mv) -> ReleaseOutcome:
        """No production model at all: there is nothing to split against or compare with, so the candidate
        serves all traffic as *provisional* (a canary at 100 % with no primary; the registry keeps it in
        staging, no model is production) and becomes production only once its evidence on its own traffic says
        so. Each ``canary.interval_seconds`` the declared traffic checks (requests, error rate, p99 against
        their absolute limits: there is no production to compare with) and the ``thresholds`` check (the
        one-sample sequential test of the spec's absolute thresholds on its labelled requests,
        ``decision.threshold_decide``) are judged as at a canary's last step:

        - all pass: production (all traffic to it as the primary; the decision names the thresholds check
          with its interval);
        - a threshold fails: withdrawn (no production model again: the gateway answers 503 naming why) and
          rejected (``rollback.reject_candidate``);
        - a traffic check fails or the signals cannot be read: withdrawn, left in staging (releasable again:
          the machine's fault, not shown to be the model's);
        - still undecided after ``shadow.max_wait_seconds`` (too few labelled requests): withdrawn, left in
          staging (``shadow.at_limit: reject`` rejects it). The conservative choice: nothing unproven keeps
          answering clients on its own, as a shadow that does not decide leaves production unchanged.

        Interrupted (SIGTERM, an error), it is withdrawn too: the release is re-run from the start."""
        cs, candidate, model = self.spec.canary, mv.version, self.spec.model
        self._live_thresholds, self._comparable, self._threshold_order = True, False, PairSequence()
        thresholds = ", ".join(f"{k} {v:g}" for k, v in spec_thresholds(mv).items())
        max_holds = max(cs.max_holds, math.ceil(self.spec.shadow.max_wait_seconds / cs.interval_seconds))
        analysis = CanaryAnalysis((100,), cs.failure_threshold, max_holds)
        head = f"first model of {model} (tag {mv.tag})"
        self.driver.apply(TrafficState(primary=None, canary=candidate, canary_weight=100))
        self._record(
            candidate,
            "staging",
            "provisional",
            f"{head}: no production model, nothing to split against or compare with: {candidate} serves all traffic "
            f"as provisional; production once its spec's thresholds ({thresholds}) pass on its own labelled "
            "requests (one-sample sequential test) and its traffic checks pass",
            {"action": "provisional", "weight": 100, "thresholds": spec_thresholds(mv), "replaces": None},
        )
        since = _now()
        try:
            while True:
                step_since = _now()
                source = self.signals(candidate)
                start = _step_start(source)
                self._wait(cs.interval_seconds)
                measured = self.measure(source, start, cs.interval_seconds, candidate, None, since, None)
                checks = self.checks_for(candidate, None, last_step=True)
                results = [judge(check, measured[check.name]) for check in checks]
                action, reason = analysis.next(results)
                why = f"{head}, provisional: " + ", ".join(r.describe() for r in results) + f"; {action}: {reason}"
                evidence = {
                    "step": 1,
                    "weight": 100,
                    "checks": [r.as_dict() for r in results],
                    "action": action,
                    "failures": analysis.failures,
                    "holds": analysis.holds,
                    "window": {"since": step_since.isoformat(), "until": _now().isoformat()},
                    "replaces": None,
                }
                shown = (measured[THRESHOLDS_CHECK].decision or {}).get("reason")
                if shown:  # which threshold decided, with its interval and the tail check
                    why += f"; {THRESHOLDS_CHECK}: {shown}"
                    evidence["test"] = measured[THRESHOLDS_CHECK].decision
                if action == "promote":
                    self.driver.apply(TrafficState(primary=candidate))
                    self._record(
                        candidate,
                        "production",
                        "promote",
                        f"{why}; promoted: {candidate} is production (provisional -> production on its live evidence)",
                        {**evidence, "action": "promote"},
                    )
                    return ReleaseOutcome(model, candidate, None, "promoted", list(self.decisions))
                if action == "rollback":
                    failed = [c for c, r in zip(checks, results, strict=True) if r.status == "failed"]
                    # an accuracy decision, not a threshold that could not be computed (that is no evidence)
                    accuracy = any(c.source == "labels" and not measured[c.name].error for c in failed)
                    undecided = not failed
                    return self.withdraw(mv, why, evidence, accuracy=accuracy, undecided=undecided)
                self._record(candidate, "staging", "provisional", why, evidence)
        except BaseException:
            log.exception("release of %s interrupted; withdrawing it (no production model)", candidate)
            try:
                self.driver.apply(
                    TrafficState(
                        primary=None,
                        unavailable=f"{model} has no production model: the release of its first model {candidate} "
                        "was interrupted; run it again (`kfrelease release run`)",
                    )
                )
            except Exception:
                log.exception("could not withdraw %s", candidate)
            raise

    def withdraw(self, mv, why: str, evidence: dict, *, accuracy: bool, undecided: bool) -> ReleaseOutcome:
        """A provisional first model rolled back: no version serves (the gateway answers 503 naming why), no
        production model. Rejected only when its accuracy failed (or, undecided, when ``shadow.at_limit:
        reject``); else left in staging, releasable again."""
        candidate, model = mv.version, self.spec.model
        if undecided:
            reject = self.spec.shadow.at_limit == "reject"
            cause = "insufficient evidence by shadow.max_wait_seconds (too few labelled requests)"
        else:
            reject = accuracy and self.spec.rollback.reject_candidate
            cause = "its spec's thresholds failed on live requests" if accuracy else "a traffic check failed"
        after = "rejected" if reject else "left in staging (releasable again: `kfrelease release run`)"
        self.driver.apply(
            TrafficState(
                primary=None,
                unavailable=f"{model} has no production model: its first model {candidate} was rolled back "
                f"({cause}); {'it was rejected' if reject else 'release it again'}; see "
                f"`kfrelease models history {model} {candidate}`",
            )
        )
        self._record(
            candidate,
            "rejected" if reject else "staging",
            "rollback",
            f"{why}; rolled back: {cause}; no production model (clients get 503 naming why); {candidate} {after}",
            {**evidence, "action": "rollback", "rejected": reject, "undecided": undecided},
        )
        return ReleaseOutcome(model, candidate, None, "rejected" if reject else "rolled_back", list(self.decisions))

    # --- shadow -----------------------------------------------------------------------------------
    def shadow(self, candidate: str, production: str) -> ShadowVerdict:
        """Mirror traffic to the candidate until the shadow gate decides (or ``max_wait_seconds`` pass)."""
        s = self.spec.shadow
        if self.report:  # import Evidently (seconds) while the evidence arrives, not after the decision
            threading.Thread(target=_import_report_library, name="import-evidently", daemon=True).start()
        self.driver.apply(TrafficState(primary=production, shadow=candidate, mirror_percent=s.mirror_percent))
        since = _now()
        rule, scale, order = s.rule(), self.reference_rmse(production), PairSequence()
        categories = declared_categories(self.registry.get(self.spec.model, candidate).input_schema)
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
                declared=self.label_sources.declares,
                scale=scale,
                order=order,
                categories=categories,
                at_limit=last,
                report=self.report,
            )
            if verdict.decided:
                break
            self._wait(self.poll_seconds)
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
        return self._outcome(candidate, production, result)

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
            instances = _instances(frame.iloc[rows], features)
            rid = f"replay-{keys[rows[0]][0]}-{len(cache)}"
            for i, answer in zip(rows, self.production_scorer(production, instances, rid), strict=True):
                cache[keys[i]] = float(answer)
        return np.asarray([cache[k] for k in keys], dtype="float64")

    def canary_labelled(self, candidate: str, canary_since):
        """The canary's own labelled requests since the canary started (``truth``, ``prediction`` and the
        logged features), one row per (request id, instance); only declared label sources' labels count."""
        labelled = lake.join_truth(
            lake.read_predictions(self.store, self.spec.model, since=canary_since),
            lake.read_labels(self.store, self.spec.model, since=canary_since, declared=self.label_sources.declares),
            how="inner",
        )
        return labelled[(labelled["model_version"] == candidate) & (labelled["stage"] != "staging")].drop_duplicates(
            ["request_id", "instance"]
        )

    def canary_pairs(self, candidate: str, production: str, canary_since, order: PairSequence):
        """The canary's labelled requests since the canary started, in arrival order: truth, the canary's
        answer, and the production model's answer to the *same* logged inputs (the production model scores
        them: a paired comparison as in the shadow gate; two disjoint request samples would differ by
        chance far more than the models do), and the logged features (slices). The pairs come only from the
        canary's share of traffic, so they accumulate over the steps (the test is anytime-valid) at about
        share x labelled rate."""
        cand = self.canary_labelled(candidate, canary_since)
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
                **{f: cand[f].to_numpy() for f in features},
            }
        )
        return order.extend(pairs)

    def threshold_measurement(self, candidate: str, canary_since, order: PairSequence, check) -> Measurement:
        """The one-sample test of each absolute threshold of the candidate's spec on its own labelled canary
        requests (``decision.threshold_decide``): failed when any fails, passed when all pass."""
        mv = self.registry.get(self.spec.model, candidate)
        rows = order.extend(
            self.canary_labelled(candidate, canary_since)[["request_id", "instance", "truth", "prediction"]]
        )
        rule = self.spec.shadow.rule().with_changes(min_labelled_samples=max(2, check.min_samples), max_samples=None)
        metrics = mv.metrics or {}
        variance = metrics["mse"] / (1 - metrics["r2"]) if metrics.get("mse") and metrics.get("r2", 1) < 1 else None
        decisions = []
        for key, value in spec_thresholds(mv).items():
            limit = threshold_limit(key, value, variance) if key != "min_r2" or variance else None
            if limit is None:
                continue
            decisions.append(threshold_decide(rows["truth"], rows["prediction"], key, limit, rule))
        if not decisions:
            return Measurement(error="no threshold of the candidate's spec can be checked live")
        failed = [d for d in decisions if d.decision == "fail"]
        open_ = [d for d in decisions if d.decision != "pass"]
        d = failed[0] if failed else (open_[0] if open_ else decisions[-1])
        out = d.as_dict()
        out["reason"] = "; ".join(x.reason for x in decisions)
        return Measurement(d.ratio, len(rows), out)

    def measure(
        self, source, start, seconds: float, candidate: str, production: str, canary_since, order, baseline=None
    ) -> dict[str, Measurement]:
        """One measurement per check (nothing judged here); ``baseline``: production's signal source and its
        start, read over the same interval for the traffic checks."""
        out: dict[str, Measurement] = {}
        health, unreadable, base = None, None, None
        if start is None and not isinstance(source, PrometheusMetrics):
            unreadable = "the canary's metrics could not be read at the start of the step"
        else:
            try:
                health = source.health(start, seconds)
            except MetricSourceError as exc:
                unreadable = str(exc)
        if baseline is not None and baseline[1] is not None:
            try:
                base = baseline[0].health(baseline[1], seconds)
            except MetricSourceError as exc:
                log.warning("production's metrics over the step could not be read (%s); absolute limits only", exc)
        pairs = None
        for check in self.checks_for(candidate, production):
            if check.name == THRESHOLDS_CHECK and check.source == "labels" and self._live_thresholds:
                out[check.name] = self.threshold_measurement(candidate, canary_since, self._threshold_order, check)
            elif check.source == "labels":
                if pairs is None:
                    pairs = self.canary_pairs(candidate, production, canary_since, order)
                rule = self.spec.shadow.rule().with_changes(
                    min_labelled_samples=max(2, check.min_samples),
                    max_samples=None,
                    **{k: getattr(check, k) for k in ("margin", "error_rate") if getattr(check, k) is not None},
                )
                features = [
                    c for c in pairs.columns if c not in ("request_id", "instance", "truth", "candidate", "production")
                ]
                d = decide(
                    pairs["truth"],
                    pairs["candidate"],
                    pairs["production"],
                    rule,
                    self.reference_rmse(production),
                    features=pairs[features] if features and len(pairs) else None,
                    categories=declared_categories(self.registry.get(self.spec.model, candidate).input_schema),
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
                out[check.name] = traffic_measurement(check, health, base)
        return out

    def checks_for(self, candidate: str, production: str, last_step: bool = False):
        """The declared checks; for a tag bump and a first model also ``thresholds`` (the spec's absolute
        thresholds on the candidate's own labelled requests: it holds the last step until it passes), and the
        paired ``labels`` checks only when production's inputs are the candidate's (a first model: never)."""
        checks = list(self.spec.canary.checks)
        if not self._live_thresholds:
            return checks
        if not self._comparable:
            checks = [c for c in checks if c.source != "labels"]
        labels = next((c for c in self.spec.canary.checks if c.source == "labels"), None)
        derived = CheckSpec(
            name=THRESHOLDS_CHECK,
            source="labels",
            min_samples=labels.min_samples if labels else 10,
            on_short="hold" if last_step else "skip",
            on_inconclusive="hold" if last_step else "advance",
        )
        return [*checks, derived]

    def canary(self, candidate: str, production: str) -> ReleaseOutcome:
        """Walk the canary steps: each interval measure every check, ask the judge
        (``kfrelease.release.checks``), record; promote after the last step, roll back when it says so."""
        cs = self.spec.canary
        mv = self.registry.get(self.spec.model, candidate)
        prod = self.registry.get(self.spec.model, production)
        tag_bump = self._live_thresholds = prod.tag != mv.tag
        self._comparable = sorted(prod.features) == sorted(mv.features)
        self._threshold_order = PairSequence()
        max_holds = cs.max_holds
        if tag_bump:  # the last step waits (up to shadow.max_wait_seconds) for the thresholds' evidence
            max_holds = max(max_holds, math.ceil(self.spec.shadow.max_wait_seconds / cs.interval_seconds))
        analysis = CanaryAnalysis(tuple(cs.steps), cs.failure_threshold, max_holds)
        # a re-run of this release's step (its pod was evicted) resumes where the traffic already is
        analysis.index = resume_step(self.driver.current(), candidate, list(cs.steps))
        canary_since, order = _now(), PairSequence()
        baseline_source = self.signals_baseline(production)
        try:
            while True:
                weight, step = analysis.weight, analysis.index + 1
                self.driver.apply(TrafficState(primary=production, canary=candidate, canary_weight=weight))
                step_since = _now()
                source = self.signals(candidate)
                start = _step_start(source)
                baseline = None
                if baseline_source is not None:
                    try:
                        baseline = (baseline_source, baseline_source.start())
                    except MetricSourceError:
                        baseline = None
                self._wait(cs.interval_seconds)
                measured = self.measure(
                    source, start, cs.interval_seconds, candidate, production, canary_since, order, baseline
                )
                checks = self.checks_for(candidate, production, last_step=analysis.index == len(cs.steps) - 1)
                results = [judge(check, measured[check.name]) for check in checks]
                action, reason = analysis.next(results)
                why = f"canary {weight}%: " + ", ".join(r.describe() for r in results) + f"; {action}: {reason}"
                evidence = {
                    "step": step,
                    "weight": weight,
                    "checks": [r.as_dict() for r in results],
                    "action": action,
                    "failures": analysis.failures,
                    "holds": analysis.holds,
                    "tag_bump": tag_bump,
                    "window": {"since": step_since.isoformat(), "until": _now().isoformat()},
                }
                if action == "rollback":
                    accuracy = any(
                        r.status == "failed" and c.source == "labels" for c, r in zip(checks, results, strict=True)
                    )
                    return self.roll_back(candidate, production, why, evidence, accuracy=accuracy)
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

    def signals_baseline(self, production: str):
        """Production's signal source (its model server or series), read over each canary step's interval."""
        if self._baseline_signals is not None:
            return self._baseline_signals(production)
        try:
            return signals_for(self.settings, self.spec, production, stage="production")
        except ReleaseError:
            return None

    def promote(self, candidate: str, production: str, why: str, evidence: dict) -> ReleaseOutcome:
        self.driver.apply(TrafficState(primary=candidate))
        self._record(
            candidate,
            "production",
            "promote",
            f"{why}; promoted: all traffic to {candidate}, {production} archived",
            {**evidence, "action": "promote", "replaces": production},
        )
        return self._outcome(candidate, production, "promoted")

    def roll_back(
        self, candidate: str, production: str, why: str, evidence: dict, *, accuracy: bool = True
    ) -> ReleaseOutcome:
        """Canary 0 %. ``accuracy``: an accuracy check failed, the only cause that rejects the candidate for
        good (``rollback.reject_candidate``); latency, errors and unreadable signals leave it in ``staging``,
        releasable again."""
        self.driver.apply(TrafficState(primary=production))
        reject = accuracy and self.spec.rollback.reject_candidate
        stage = "rejected" if reject else "staging"
        after = "rejected" if reject else "left in staging (releasable again: no accuracy check failed)"
        self._record(
            candidate,
            stage,
            "rollback",
            f"{why}; rolled back: canary 0%, {production} unchanged; {candidate} {after}",
            {**evidence, "action": "rollback", "rejected": reject},
        )
        return self._outcome(candidate, production, "rolled_back")
