"""The built-in canary series: what a traffic check's ``series`` (under ``canary.checks`` of the rollout spec) reads.

Each series is one entry of ``SERIES``. From it the rollout spec takes the names a check may give, both metric
sources (the model server's own ``/metrics`` and Prometheus, ``kfrelease.release.signals``) measure every latency
quantile declared here over each canary step, and the judge (``kfrelease.release.checks.judge``) holds the value
against production's over the same interval as its kind says. Adding a series is one entry plus a check that uses
it (README, "Adding a canary series is one declaration plus its use").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Series:
    """What a built-in series measures over one canary step, on the canary's model server.

    ``requests``: the step's requests (never compared with production's). ``error_rate``: 5xx answers per
    request; it fails when above production's by more than the check's ``max``. ``latency``: the ``quantile`` of
    the answers' latency in milliseconds, interpolated in the server's latency histogram as PromQL's
    ``histogram_quantile`` does; judged only on enough requests for the quantile, and above ``max`` it fails only
    when also above ``LATENCY_TOLERANCE`` times production's (``kfrelease.release.checks``)."""

    measures: Literal["requests", "error_rate", "latency"]
    quantile: float | None = None

    def __post_init__(self):
        if (self.measures == "latency") != (self.quantile is not None and 0 < self.quantile < 1):
            raise ValueError(f"{self}: a latency series, and only one, has a quantile strictly between 0 and 1")


SERIES: dict[str, Series] = {
    "requests": Series("requests"),
    "error_rate": Series("error_rate"),
    "p99_latency_ms": Series("latency", quantile=0.99),
}


def latency_quantiles() -> tuple[float, ...]:
    """The latency quantiles the declared series read, each once (what the metric sources measure)."""
    return tuple(sorted({s.quantile for s in SERIES.values() if s.measures == "latency"}))
