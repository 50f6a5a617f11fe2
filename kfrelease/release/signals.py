"""Canary health signals: request count, error rate and latency quantiles of one model server over a step.

Two sources (``canary.metrics_source`` of the rollout spec):

- ``predictor``: the model server's own Prometheus ``/metrics``, read at the start and at the end of a
  step. Attempts are KServe's ``request_preprocess_seconds_count`` (every request the server decoded,
  kserve/metrics.py), answers ``kfrelease_predictor_requests_total{outcome="ok"}``, client errors
  ``{outcome="invalid"}`` (4xx, not counted as errors); errors = attempts - ok - invalid (5xx).
  Latency: the ``kfrelease_predictor_request_seconds`` histogram, each quantile a declared series reads
  (``kfrelease.rollout.series.latency_quantiles``) interpolated within the bucket as PromQL's ``histogram_quantile``
  does.
- ``prometheus``: the same series queried from Prometheus over the step (``increase(...[Ns])``), selected by
  the labels the rendered predictor pod sets (``series_selectors``): model and version, never the stage, and only
  from the predictors' own scrape job (``kfrelease.monitoring.scrape``): nothing pushed to the Pushgateway counts.

A server that does not answer its metrics endpoint is a failed check, not a missing one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import httpx

from kfrelease import httpcalls
from kfrelease.errors import KfreleaseError
from kfrelease.k8s.render.inference import version_slug
from kfrelease.monitoring.scrape import PREDICTORS_JOB
from kfrelease.rollout.series import Series, latency_quantiles


class MetricSourceError(KfreleaseError):
    """The metric source of the rollout cannot be read; no traffic was moved."""


@dataclass
class Snapshot:
    attempts: float = 0.0
    ok: float = 0.0
    invalid: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


@dataclass
class StepHealth:
    requests: float
    errors: float
    error_rate: float | None
    latency_ms: dict[float, float | None] = field(default_factory=dict)  # quantile -> latency (None: no answers)

    def value(self, series: Series) -> float | None:
        """What a built-in series (``kfrelease.rollout.series``) measured over the step."""
        if series.measures == "latency":
            return self.latency_ms.get(series.quantile)
        return getattr(self, series.measures)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            **{f"p{100 * q:g}_ms": ms for q, ms in self.latency_ms.items()},
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` on cumulative buckets (le -> count); None without observations."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def parse_snapshot(text: str, model: str, version: str | None = None) -> Snapshot:
    from prometheus_client.parser import text_string_to_metric_families  # heavy: prometheus_client

    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "request_preprocess_seconds_count" and labels.get("model_name") == model:
                snap.attempts += s.value
            elif (
                s.name == "kfrelease_predictor_requests_total"
                and labels.get("model") == model
                and (version is None or labels.get("version") == version)
            ):
                if labels.get("outcome") == "ok":
                    snap.ok += s.value
                elif labels.get("outcome") == "invalid":
                    snap.invalid += s.value
            elif (
                s.name == "kfrelease_predictor_request_seconds_bucket"
                and labels.get("model") == model
                and (version is None or labels.get("version") == version)
            ):
                le = float(labels["le"])
                snap.buckets[le] = snap.buckets.get(le, 0.0) + s.value
    return snap


def health_between(before: Snapshot, after: Snapshot) -> StepHealth:
    """Deltas of two snapshots of one server; a restart in between (counters went down) counts from zero."""
    reset = after.attempts < before.attempts or after.ok < before.ok
    b = Snapshot() if reset else before
    attempts = after.attempts - b.attempts
    ok = after.ok - b.ok
    invalid = after.invalid - b.invalid
    errors = max(0.0, attempts - ok - invalid)
    requests = max(attempts, ok + invalid)
    buckets = {le: c - b.buckets.get(le, 0.0) for le, c in after.buckets.items()}
    latency = {q: _ms(histogram_quantile(q, buckets)) for q in latency_quantiles()}
    return StepHealth(requests, errors, errors / requests if requests else None, latency)


class PredictorMetrics:
    """Reads a model server's ``/metrics`` directly (``canary.metrics_source: predictor``)."""

    def __init__(self, url: str, model: str, version: str | None = None, timeout: float = 3.0):
        self.url, self.model, self.version, self.timeout = (
            url.rstrip("/"),
            model,
            version,
            timeout,
        )

    def snapshot(self) -> Snapshot:
        try:
            r = httpcalls.get(f"{self.url}/metrics", timeout=self.timeout)
            r.raise_for_status()
        except httpx.HTTPError as exc:
            raise MetricSourceError(f"metrics of {self.url} cannot be read ({exc})") from None
        return parse_snapshot(r.text, self.model, self.version)

    def start(self) -> Snapshot:
        return self.snapshot()

    def health(self, start: Snapshot, seconds: float) -> StepHealth:
        return health_between(start, self.snapshot())


def prometheus_query(url: str, expr: str, timeout: float = 5.0) -> float | None:
    """The first sample of an instant query (None when the result is empty or NaN); raises
    ``MetricSourceError`` when Prometheus at ``url`` cannot be queried."""
    try:
        r = httpcalls.get(f"{url.rstrip('/')}/api/v1/query", params={"query": expr}, timeout=timeout)
        r.raise_for_status()
        result = r.json()["data"]["result"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise MetricSourceError(f"Prometheus at {url} cannot be queried ({exc})") from None
    if not result:
        return None
    value = float(result[0]["value"][1])
    return None if math.isnan(value) else value


def series_selectors(model: str, version: str, namespace: str | None = None) -> dict[str, str]:
    """PromQL label matchers of one model version's series, exactly as the rendered predictor pod sets them:

    - the predictor's own series (``kfrelease_predictor_*``) carry ``model`` (its ``--name``, the model's name
      on every predictor, ``kfrelease.k8s.render.inference.render_serving_runtime``) and ``version`` (the
      loaded model's); their ``stage`` is the pod's ``--stage``, which is ``production`` for a cluster canary
      (it is rendered with the production spec), so the stage never selects the canary: the version does;
    - KServe's ``request_preprocess_seconds`` carries only ``model_name``; the PodMonitor copies the pod's
      ``kfrelease.io/version`` label onto it as ``kfrelease_io_version`` (``podTargetLabels``);
    - both come from the predictors' scrape only: ``job`` is the PodMonitor's (``kfrelease.monitoring.scrape.
      PREDICTORS_JOB``, set by Prometheus, never by what a target exposes or a push carries) and, when given,
      ``namespace`` the serving namespace the PodMonitor's targets are in (a cluster's; the embedded stack's model
      servers are in none). A series pushed to the Pushgateway with the same model and version adds nothing.
    """
    target = f'job="{PREDICTORS_JOB}"' + (f',namespace="{namespace}"' if namespace else "")
    return {
        "predictor": f'{target},model="{model}",version="{version}"',
        "kserve": f'{target},model_name="{model}",kfrelease_io_version="{version_slug(version)}"',
    }


class PrometheusMetrics:
    """Queries Prometheus (``canary.metrics_source: prometheus``) for the candidate's series over a step.

    ``stage`` is the ``stage`` label the candidate's series carry on this target (``{stage}`` of declared
    queries): ``production`` on a cluster (``CANARY_SERIES_STAGE``), ``canary`` on the embedded stack.
    ``namespace``: the serving namespace the predictors' series must come from (a cluster's; ``series_selectors``)."""

    def __init__(
        self,
        url: str,
        model: str,
        version: str,
        stage: str = "canary",
        timeout: float = 5.0,
        namespace: str | None = None,
    ):
        self.url, self.model, self.version, self.stage, self.timeout = (
            url.rstrip("/"),
            model,
            version,
            stage,
            timeout,
        )
        self.namespace = namespace

    def query(self, expr: str) -> float | None:
        return prometheus_query(self.url, expr, self.timeout)

    def start(self) -> None:
        self.query("vector(1)")  # reachable?

    def queries(self, seconds: float) -> dict[str, str]:
        """The PromQL the step sends (``attempts``, ``ok``, ``invalid``, ``error``, and ``p99`` for the quantile 0.99
        and so on for each latency quantile of ``kfrelease.rollout.series``) for a window."""
        w = f"{max(1, math.ceil(seconds))}s"
        sel = series_selectors(self.model, self.version, self.namespace)
        mine = sel["predictor"]
        return {
            "attempts": f"sum(increase(request_preprocess_seconds_count{{{sel['kserve']}}}[{w}]))",
            **{
                outcome: f'sum(increase(kfrelease_predictor_requests_total{{{mine},outcome="{outcome}"}}[{w}]))'
                for outcome in ("ok", "invalid", "error")
            },
            **{
                f"p{100 * q:g}": f"histogram_quantile({q:g}, sum by (le) "
                f"(increase(kfrelease_predictor_request_seconds_bucket{{{mine}}}[{w}])))"
                for q in latency_quantiles()
            },
        }

    def health(self, _start, seconds: float) -> StepHealth:
        q = self.queries(seconds)
        ok = self.query(q["ok"]) or 0.0
        invalid = self.query(q["invalid"]) or 0.0
        failed = self.query(q["error"]) or 0.0
        attempts = self.query(q["attempts"]) or 0.0
        latency = {quantile: _ms(self.query(q[f"p{100 * quantile:g}"])) for quantile in latency_quantiles()}
        # 5xx: what KServe decoded but the predictor never answered, or what it answered with an error
        errors = max(0.0, attempts - ok - invalid, failed)
        requests = max(attempts, ok + invalid + failed)
        return StepHealth(requests, errors, errors / requests if requests else None, latency)
