"""The predictor's Prometheus metrics (served on KServe's ``/metrics`` beside KServe's own).

Each model version gets its labelled children once (``ModelMetrics``), so a request only increments.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "kfrelease_predictor_requests",
    "Prediction requests answered, by protocol and outcome (ok; invalid: 4xx; error: the model failed, 500).",
    ["model", "version", "stage", "protocol", "outcome"],
)
INSTANCES = Counter(
    "kfrelease_predictor_instances",
    "Instances predicted.",
    ["model", "version", "stage"],
)
LATENCY = Histogram(
    "kfrelease_predictor_request_seconds",
    "Time from a decoded request to its answer (validation, cache, model), seconds.",
    ["model", "version", "stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FAST_LANE = Counter(
    "kfrelease_predictor_fast_lane_answers",
    "Requests answered by the fast lane (kfrelease.serving.fastlane) instead of KServe's routes.",
    ["model"],
)
PROTOCOLS = ("v1", "v2")


class ModelMetrics:
    """The metric children of one (model, version, stage)."""

    def __init__(self, model: str, version: str, stage: str):
        self.ok = {p: REQUESTS.labels(model, version, stage, p, "ok") for p in PROTOCOLS}
        self.invalid = {p: REQUESTS.labels(model, version, stage, p, "invalid") for p in PROTOCOLS}
        self.error = {p: REQUESTS.labels(model, version, stage, p, "error") for p in PROTOCOLS}
        self.instances = INSTANCES.labels(model, version, stage)
        self.latency = LATENCY.labels(model, version, stage)

    def answered(self, protocol: str, instances: int, seconds: float) -> None:
        self.ok[protocol].inc()
        self.instances.inc(instances)
        self.latency.observe(seconds)
