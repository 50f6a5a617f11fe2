"""One monitoring pass over a model: open the window in the embedded engine (``kfrelease.lake``: DuckDB over
the Parquet logs and labels), compute the windows there, record them in the object store, write an
Evidently drift report per window (on a sample), push the latest windows to the Pushgateway.

Records (``pipeline-root`` bucket, written by the ``pipeline`` role; the ``monitoring`` role only reads)::

    monitoring/<model>/runs/<YYYYmmddTHHMMSSZ>-<id>.json       every window of one pass (immutable)
    monitoring/<model>/reports/<run id>/<version>-<stage>-<start>.html   Evidently drift report per window

``load_history`` merges the runs (a later computation of the same window wins), which is what the HTML
page, the CLI table and the notebook show.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from kfrelease.config import Settings
from kfrelease.errors import KfreleaseError
from kfrelease.monitoring import sources
from kfrelease.monitoring.keys import key as monitoring_key
from kfrelease.monitoring.push import push_windows
from kfrelease.monitoring.window import (
    DEFAULT_MIN_LABELS,
    MonitorOutcome,
    WindowSpec,
    compute_windows_engine,
    latest_rank,
)
from kfrelease.storage import ObjectStore, store_for

log = logging.getLogger(__name__)

RESULT_BUCKET = "pipeline-root"


@dataclass
class MonitorRun:
    run_id: str
    outcome: MonitorOutcome
    record_key: str | None = None
    report_keys: list[str] = field(default_factory=list)
    push: object | None = None  # PushOutcome

    @property
    def windows(self):
        return self.outcome.windows


def run_monitoring(
    settings: Settings,
    model: str,
    *,
    window: WindowSpec | None = None,
    since=None,
    until=None,
    min_labels: int = DEFAULT_MIN_LABELS,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    reference: pd.DataFrame | None = None,
    baselines: dict[str, dict] | None = None,
    r2_floor: float | None = None,
    latest_only: bool = False,
    drift_for: str = "latest",  # latest | all | none
    reports: str = "latest",  # latest | all | none
    push: bool = True,
    read_store: ObjectStore | None = None,
    write_store: ObjectStore | None = None,
) -> MonitorRun:
    """Compute, record and push the windows of ``model``; problems in the data become warnings.
    ``features`` and ``categorical`` (the category features among them) default to the newest registered
    version's input schema."""
    window = window or WindowSpec()
    reader = read_store or store_for("monitoring", settings)
    writer = write_store or store_for("pipeline", settings)
    entries = sources.model_versions(reader, model)
    features = features or sources.features_of(entries)
    if not features:
        raise KfreleaseError(
            f"the input features of model {model!r} are unknown: no registry entry with an input_schema in "
            f"s3://models/registry/{model}/; register a version first or pass features"
        )
    if categorical is None:
        categorical = sources.categorical_of(entries)
    if baselines is None:
        baselines = sources.baselines_of(entries, r2_floor)
    if reference is None:
        reference = sources.reference_of(reader, entries)
    data = sources.open_window(
        reader, model, features, since=since, until=until, keys=window.kind == "count", categorical=categorical
    )
    outcome = compute_windows_engine(
        data,
        spec=window,
        min_labels=min_labels,
        reference=reference,
        baselines=baselines,
        latest_only=latest_only,
        drift_for="all" if reports == "all" and drift_for != "none" else drift_for,
        report_for=reports if drift_for != "none" else "none",
    )
    if reference is None:
        outcome.warnings.append(f"no training reference data for {model!r}; drift was not computed")
    run = MonitorRun(new_run_id(), outcome)
    run_id = run.run_id
    latest_keys = {w.key for w in outcome.latest()}
    report_windows = (
        {}
        if reports == "none"
        else {k: v for k, v in outcome.drift_reports.items() if reports == "all" or k in latest_keys}
    )
    for w in outcome.windows:
        dr = report_windows.get(w.key)
        if dr is None:
            continue
        key = monitoring_key(model, "reports", run_id, f"{w.version}-{w.stage}-{w.start}.html")
        writer.put_bytes(RESULT_BUCKET, key, dr.html().encode(), content_type="text/html")
        run.report_keys.append(key)
    record_and_push(settings, writer, run, window, min_labels, push=push)
    return run


def new_run_id() -> str:
    """A monitoring pass's id: its UTC time (records sort by it) and a random suffix."""
    return f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def record_and_push(
    settings: Settings, writer: ObjectStore, run: MonitorRun, window: WindowSpec, min_labels: int, push: bool = True
) -> None:
    """Record every window of ``run`` under ``monitoring/<model>/runs/`` (immutable) and push the latest
    window of each (version, stage) to the Pushgateway: the end of every monitoring pass, whichever engine
    computed it."""
    model = run.outcome.model
    doc = {
        "run_id": run.run_id,
        "model": model,
        "computed_at": datetime.now(UTC).isoformat(),
        "window": {"kind": window.kind, "size": window.size},
        "min_labels": min_labels,
        "windows": [w.as_dict() for w in run.outcome.windows],
        "warnings": run.outcome.warnings,
        "reports": run.report_keys,
    }
    run.record_key = monitoring_key(model, "runs", f"{run.run_id}.json")
    writer.put_json(RESULT_BUCKET, run.record_key, doc, if_none_match=True)
    if push:
        run.push = push_windows(settings, run.outcome.latest())


def load_history(store: ObjectStore, model: str, last_runs: int = 500) -> pd.DataFrame:
    """Every recorded window of ``model`` (the latest computation of each), oldest first."""
    keys = sorted(o.key for o in store.iter(RESULT_BUCKET, monitoring_key(model, "runs", prefix=True)))[-last_runs:]
    rows: dict[tuple, dict] = {}
    for key in keys:
        doc = store.get_json(RESULT_BUCKET, key)
        for w in doc.get("windows", []):
            w = {
                **w,
                "run_id": doc.get("run_id"),
                "computed_at": doc.get("computed_at"),
            }
            key = (w["version"], w["stage"], w["window"], w["start"])
            earlier = rows.get(key)
            if earlier is not None and w.get("drift_share") is None:  # keep drift computed by an earlier pass
                w["drift_share"], w["drifted"] = (
                    earlier.get("drift_share"),
                    earlier.get("drifted"),
                )
            rows[key] = w
    frame = pd.DataFrame(list(rows.values()))
    if len(frame):
        frame = frame.sort_values(["start", "version", "stage"]).reset_index(drop=True)
    return frame


def current_table(history: pd.DataFrame) -> pd.DataFrame:
    """The most recent complete window of each (version, stage), else its most recent one
    (``kfrelease.monitoring.window.is_complete``)."""
    if len(history) == 0:
        return history

    rank = [latest_rank(w, n, s) for w, n, s in zip(history["window"], history["labelled"], history["start"])]
    order = sorted(range(len(history)), key=rank.__getitem__)
    return history.iloc[order].groupby(["version", "stage"], as_index=False).tail(1).reset_index(drop=True)
