"""Push window results to the Prometheus Pushgateway as gauges labelled model, version and stage.

One Pushgateway group per (model, version, stage) (grouping key; job ``kfrelease-monitor``), replaced as a
whole on every push (HTTP PUT, ``prometheus_client.push_to_gateway``): a window that became insufficient
therefore drops its quality gauges instead of leaving stale ones behind, and
``kfrelease_model_window_insufficient`` says so. Prometheus scrapes the Pushgateway with
``honor_labels: true`` so these labels are kept (Pushgateway README, "About the job and instance labels"), and
keeps only these gauges (``kfrelease.monitoring.scrape``). Every push carries the monitoring steps' basic-auth
credentials (``kfrelease.monitoring.pushauth``); the Pushgateway answers any other 401. Where to:
``KFRELEASE_PUSHGATEWAY_URL`` (a cluster's Service), else the embedded stack's.

Per input feature the latest window's drift verdict and score (label ``feature``), and per category feature the
share of its categories in the reference and in the window (labels ``feature``, ``category``, ``side``). The
category label's values are bounded: at most ``MAX_EXPORTED_CATEGORIES`` per feature (the most frequent on
either side, the order of ``kfrelease.quality.drift.category_frequencies``), the others summed as ``(other)``; how many
window categories the reference never holds is its own gauge. So one (model, version, stage) exports at most
``2 x (MAX_EXPORTED_CATEGORIES + 1)`` category series per category feature, whatever text clients send; the
monitoring record keeps up to ``kfrelease.quality.drift.MAX_RECORDED_CATEGORIES`` of them.

A Pushgateway that cannot be reached loses nothing: every payload is first written to a spool
(``kfrelease.lake.spool.Spool`` in ``$KFRELEASE_HOME/monitoring/pending-push/``), then pushed, oldest
first; what could not be pushed is pushed first on the next call to ``push_windows``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pandas as pd

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError
from kfrelease.lake.spool import Spool
from kfrelease.monitoring.pushauth import push_credentials
from kfrelease.quality.drift import OTHER

log = logging.getLogger(__name__)

JOB = "kfrelease-monitor"

#: gauge name -> (WindowResult field, help)
GAUGES = {
    "kfrelease_model_mse": ("mse", "Mean squared error of the latest window"),
    "kfrelease_model_rmse": ("rmse", "Root mean squared error of the latest window"),
    "kfrelease_model_mae": ("mae", "Mean absolute error of the latest window"),
    "kfrelease_model_r2": (
        "r2",
        "R2 (coefficient of determination) of the latest window",
    ),
    "kfrelease_model_drift_share": (
        "drift_share",
        "Share of input features drifted against the training data",
    ),
    "kfrelease_model_baseline_rmse": (
        "baseline_rmse",
        "RMSE measured at evaluation (registry entry)",
    ),
    "kfrelease_model_r2_floor": ("r2_floor", "Lowest acceptable R2 of the model"),
    "kfrelease_model_window_predictions": (
        "predictions",
        "Predictions in the latest window",
    ),
    "kfrelease_model_window_labelled": (
        "labelled",
        "Labelled predictions in the latest window",
    ),
}


#: gauge name -> (labels besides model/version/stage, help): one series per feature (and category, side)
LABELLED_GAUGES = {
    "kfrelease_model_feature_drifted": (
        ("feature",),
        "1 when the input feature drifted against the training data in the latest window, else 0",
    ),
    "kfrelease_model_feature_drift_score": (
        ("feature",),
        "The feature's drift test value in the latest window (PSI, or Evidently's chosen test on small windows)",
    ),
    "kfrelease_model_category_share": (
        ("feature", "category", "side"),
        "Share of a category feature's values in the reference (training data) or the current window",
    ),
    "kfrelease_model_feature_unseen_categories": (
        ("feature",),
        "Categories of the latest window that the training data never holds (each counts as drift)",
    ),
}
#: Categories exported per category feature (the rest summed as ``(other)``): bounds the label cardinality.
MAX_EXPORTED_CATEGORIES = 10


def feature_series(feature_drift: dict, most: int = MAX_EXPORTED_CATEGORIES) -> list[list]:
    """``[gauge name, {labels}, value]`` of every feature's drift and every exported category share."""
    out: list[list] = []
    for feature, col in (feature_drift or {}).items():
        if col.get("score") is not None:
            out.append(["kfrelease_model_feature_drift_score", {"feature": feature}, float(col["score"])])
        out.append(["kfrelease_model_feature_drifted", {"feature": feature}, 1.0 if col.get("drifted") else 0.0])
        freq = col.get("frequencies")
        if freq is None:
            continue
        out.append(
            ["kfrelease_model_feature_unseen_categories", {"feature": feature}, float(col.get("unseen_count", 0))]
        )
        named = [k for k in freq if k != OTHER]
        rest = named[most:] + ([OTHER] if OTHER in freq else [])
        shown = {k: freq[k] for k in named[:most]}
        if rest:
            shown[OTHER] = {s: sum(freq[k][s] for k in rest) for s in ("reference", "current")}
        for category, shares in shown.items():
            for side in ("reference", "current"):
                labels = {"feature": feature, "category": category, "side": side}
                out.append(["kfrelease_model_category_share", labels, float(shares[side])])
    return out


@dataclass
class PushOutcome:
    pushed: int = 0
    pending: int = 0
    message: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.pending == 0


def spool_dir(settings: Settings) -> Path:
    return settings.home / "monitoring" / "pending-push"


def _ts(iso: str | None) -> float | None:
    if not iso:
        return None

    return pd.Timestamp(iso).timestamp()


def payload(window) -> dict:
    """The gauges of one window result (a dict or ``WindowResult``) as a JSON-able payload."""
    w = window if isinstance(window, dict) else window.as_dict()
    values = {}
    for name, (attr, _help) in GAUGES.items():
        v = w.get(attr)
        if v is not None:
            values[name] = float(v)
    intervals = w.get("intervals") or {}
    for metric in ("mse", "rmse", "mae", "r2"):  # the window's 95% bounds: the quality alerts fire on them
        bounds = intervals.get(metric) if w["status"] == "ok" else None
        if bounds:
            values[f"kfrelease_model_{metric}_lower"], values[f"kfrelease_model_{metric}_upper"] = map(float, bounds)
    values["kfrelease_model_window_insufficient"] = 0.0 if w["status"] == "ok" else 1.0
    for name, attr in (
        ("kfrelease_model_last_prediction_timestamp_seconds", "last_prediction_time"),
        ("kfrelease_model_last_truth_timestamp_seconds", "last_truth_time"),
    ):
        ts = _ts(w.get(attr))
        if ts is not None:
            values[name] = ts
    values["kfrelease_model_window_pushed_timestamp_seconds"] = time.time()
    return {
        "labels": {"model": w["model"], "version": w["version"], "stage": w["stage"]},
        "values": values,
        "series": feature_series(w.get("feature_drift") or {}),
    }


def _push_one(url: str, item: dict, timeout: float, credentials: tuple[str, str]) -> None:
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway  # heavy: prometheus_client
    from prometheus_client.exposition import basic_auth_handler  # heavy: prometheus_client

    def handler(url, method, timeout, headers, data):
        return basic_auth_handler(url, method, timeout, headers, data, *credentials)

    registry = CollectorRegistry()
    for name, value in item["values"].items():
        helptext = GAUGES.get(name, (None, name.replace("_", " ")))[1]
        Gauge(name, helptext, registry=registry).set(value)
    gauges: dict[str, Gauge] = {}
    for name, labels, value in item.get("series", []):  # a payload spooled before series existed has none
        if name not in gauges:
            names, helptext = LABELLED_GAUGES[name]
            gauges[name] = Gauge(name, helptext, labelnames=names, registry=registry)
        gauges[name].labels(**labels).set(value)
    push_to_gateway(url, job=JOB, registry=registry, grouping_key=item["labels"], timeout=timeout, handler=handler)


def push_windows(settings: Settings, windows, url: str | None = None, timeout: float = 3.0) -> PushOutcome:
    """Push the latest window of each (version, stage), after what an earlier call could not push; what
    cannot be pushed stays spooled."""
    url = url or setting("KFRELEASE_PUSHGATEWAY_URL") or settings.url("pushgateway")
    try:
        credentials, refused = push_credentials(settings), ""
    except ConfigError as exc:  # kept like an unreachable gateway's: the stack's are written when it first starts
        credentials, refused = None, str(exc)
    spool = Spool(spool_dir(settings))
    if windows:  # spooled first: a crash mid-push loses nothing
        spool.append([orjson.dumps(payload(w)) + b"\n" for w in windows])
    spool.rotate()
    out = PushOutcome()

    def push(segment: Path, lines: list[bytes]) -> int:
        if credentials is None:
            out.errors.append(refused)
            return 0
        for i, line in enumerate(lines):
            try:
                _push_one(url, orjson.loads(line), timeout, credentials)
            except orjson.JSONDecodeError as exc:
                log.error("%s: skipping an unreadable result (%s)", segment, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - URLError, connection refused, HTTP errors
                out.errors.append(f"{type(exc).__name__}: {exc}")
                return i
            out.pushed += 1
        return len(lines)

    spool.drain(push)
    out.pending = len(spool.lines())
    if out.pending:
        if refused:
            reason = f"cannot be pushed to: {refused}"
        elif out.errors:
            reason = f"is not reachable ({out.errors[-1]})"
        else:
            reason = "was busy with another run's push"
        out.message = (
            f"Pushgateway at {url} {reason}; {out.pending} result(s) kept in {spool.dir} and pushed on the next "
            "run (`kfrelease up` starts it)"
        )
        log.warning(out.message)
    else:
        out.message = f"pushed {out.pushed} result(s) to {url}"
    return out
