"""Windowed model quality per model version and stage, from prediction logs joined with ground truth.

A window is either a span of time (tumbling, aligned to the epoch: ``WindowSpec("time", 3600)``) or a count
of labelled predictions (``WindowSpec("count", 500)``: consecutive labelled predictions in time order).
Each window reports MSE, RMSE, MAE and R² from ``kfrelease.quality.metrics.regression_metrics`` (the one metric
definition of the project), input drift against the training reference (``kfrelease.quality.drift.data_drift``),
and counts. A window with fewer than ``min_labels`` labelled predictions is reported with status
``insufficient`` and no quality numbers (never NaN); predictions without any ground truth give
``no-ground-truth``.

Reading is bounded: the one reader (``kfrelease.lake``) reads only the hour partitions between ``since``
and ``until``; the join and the "latest label wins" rule are the lake's.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, field

import pandas as pd

from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.lake import windows as LW
from kfrelease.lake.drift import psi_drift, stats_aggregates
from kfrelease.quality.drift import MAX_DRIFT_ROWS, data_drift
from kfrelease.quality.metrics import InsufficientData

log = logging.getLogger(__name__)

#: Labelled predictions a window needs before its quality numbers count (below: ``insufficient``).
DEFAULT_MIN_LABELS = 30
#: Default R² floor when the model's registry entry declares none (alert: R² below it).
DEFAULT_R2_FLOOR = 0.2


@dataclass(frozen=True)
class WindowSpec:
    """``kind`` "time" (``size`` seconds) or "count" (``size`` labelled predictions)."""

    kind: str = "time"
    size: int = 3600

    def __post_init__(self):
        if self.kind not in ("time", "count"):
            raise ConfigError(f"window kind {self.kind!r} is unknown; use 'time' (seconds) or 'count' (labels)")
        if int(self.size) <= 0:
            raise ConfigError(f"window size must be positive, got {self.size}")

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        """``"1h"``, ``"15m"``, ``"90s"``, ``"2d"`` (time) or ``"500"`` / ``"500n"`` (count)."""
        t = text.strip().lower()
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        try:
            if t.endswith("n"):
                return cls("count", int(t[:-1]))
            if t and t[-1] in units:
                return cls("time", int(float(t[:-1]) * units[t[-1]]))
            return cls("count", int(t))
        except ValueError:
            raise ConfigError(
                f"window {text!r} is not understood; use a duration like 1h, 15m, 90s or a label count like 500"
            ) from None

    @property
    def label(self) -> str:
        return f"{self.size}s" if self.kind == "time" else f"{self.size}n"


@dataclass
class WindowResult:
    """One window of one model version at one stage."""

    model: str
    version: str
    stage: str
    window: str
    start: str
    end: str
    predictions: int
    labelled: int
    status: str  # ok | insufficient | no-ground-truth
    mse: float | None = None
    rmse: float | None = None
    mae: float | None = None
    r2: float | None = None
    drift_share: float | None = None
    drifted: list[str] = field(default_factory=list)
    baseline_rmse: float | None = None
    r2_floor: float | None = None
    last_prediction_time: str | None = None
    last_truth_time: str | None = None
    message: str = ""
    intervals: dict = field(default_factory=dict)  # 95% intervals of mse/rmse/mae/r2 (kfrelease.quality.metrics)
    #: Per input feature: the drift test's score, method, threshold and verdict; a category feature also its
    #: per-category ``frequencies`` (reference vs current shares) and the ``unseen`` categories.
    feature_drift: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> tuple:
        return (self.version, self.stage, self.window, self.start)


@dataclass
class MonitorOutcome:
    """Every window computed, and the problems met on the way (reported, not raised)."""

    model: str
    windows: list[WindowResult]
    warnings: list[str] = field(default_factory=list)
    drift_reports: dict[tuple, object] = field(default_factory=dict, repr=False)  # key -> DriftResult

    def latest(self) -> list[WindowResult]:
        """The most recent complete window of each (version, stage) (see ``is_complete``), else its most
        recent window: what is pushed to Prometheus and what the alerts look at."""
        last: dict[tuple, WindowResult] = {}
        for w in sorted(self.windows, key=lambda w: latest_rank(w.window, w.labelled, w.start)):
            last[(w.version, w.stage)] = w
        return sorted(last.values(), key=lambda w: (w.version, w.stage))


def is_complete(window: str, labelled: int) -> bool:
    """A time window (label ``3600s``) counts as it is; a count window (label ``500n``) is complete once it
    holds its 500 labelled predictions. The trailing count window is still filling: reporting it as the
    latest would replace a full window's numbers with a handful of labels (or none: ``insufficient``)."""
    if window.endswith("n"):
        return int(labelled) >= int(window[:-1])
    return True


def latest_rank(window: str, labelled: int, start: str) -> tuple[bool, str]:
    """Sort key of the 'latest' window: complete ones first, then by start."""
    return is_complete(window, labelled), str(start)


def window_bounds(spec: WindowSpec, w: int, first_time, last_time) -> tuple[str | None, str | None]:
    """Where window ``w`` starts and ends (UTC ISO): a time window's aligned bounds, a count window's first and
    last prediction."""
    if spec.kind == "time":
        first_time, last_time = (pd.Timestamp(t * spec.size, unit="s", tz="UTC") for t in (w, w + 1))
    return LW.iso_utc(first_time), LW.iso_utc(last_time)


def settle(res: WindowResult, metrics) -> None:
    """A window's status, one rule for every engine: without a label ``no-ground-truth``; with fewer labels than a
    verdict needs (``metrics()`` raises InsufficientData) ``insufficient``, saying why; else ``ok`` with the numbers
    and intervals ``metrics()`` returns."""
    if res.labelled == 0:
        res.status, res.message = "no-ground-truth", f"{res.predictions} predictions have no ground truth yet"
        return
    try:
        m = metrics()
    except InsufficientData as exc:
        res.status, res.message = "insufficient", str(exc)
        return
    res.status = "ok"
    res.mse, res.rmse, res.mae, res.r2 = m["mse"], m["rmse"], m["mae"], m.get("r2")
    res.intervals = m.get("intervals") or {}


def _drift(reference, frame, features, method=None, categorical=(), current_counts=None):
    return data_drift(reference, frame, features, method=method, categorical=categorical, current_counts=current_counts)


def _orphan_labels(model: str, orphans: int, features: list[str]) -> str:
    return (
        f"{orphans} ground-truth label(s) of {model!r} match no logged prediction in the period: their "
        f"predictions were logged outside it, or in batches skipped for not matching the input schema "
        f"({len(features)} features); the labels are kept and count once their predictions are read"
    )


def compute_windows_engine(
    data,
    *,
    spec: WindowSpec = WindowSpec(),
    min_labels: int = DEFAULT_MIN_LABELS,
    reference: pd.DataFrame | None = None,
    baselines: dict[str, dict] | None = None,
    latest_only: bool = False,
    drift_for: str = "latest",
    report_for: str = "latest",
) -> MonitorOutcome:
    """``compute_windows`` inside the engine, on a ``kfrelease.lake.engine.WindowData``: the sums come
    from one SQL scan (``kfrelease.lake.windows``), the drift of a window is Evidently's PSI on all its rows
    (``kfrelease.lake.drift``); Evidently itself runs only for the windows that get a report
    (``report_for``: latest | all | none), on a seeded sample of their rows, with the same PSI test."""
    if drift_for not in ("latest", "all", "none"):
        raise ConfigError(f"drift_for={drift_for!r}; use latest, all or none")
    model, features, con = data.model, data.features, data.con
    categorical = list(getattr(data, "categorical", ()) or ())
    outcome = MonitorOutcome(model, [], warnings=list(data.warnings))

    # the drift's per-feature count, minimum and maximum come from the window scan itself
    stats = stats_aggregates(features, categorical) if reference is not None and drift_for != "none" else []
    shift, most_truths = _truth_shift(con)
    sums = con.execute(LW.window_sums_sql("joined", spec.kind, spec.size, shift=shift, aggregates=stats)).df()
    if len(sums) == 0:
        outcome.warnings.append(f"no predictions of model {model!r} were logged in the period")
        return outcome
    labelled = int(sums["labelled"].sum())
    if most_truths == 0 or 0 < labelled >= most_truths:  # no label, or none can be an orphan: not counted
        n_truth = min(most_truths, labelled)
    else:
        n_truth = con.execute("SELECT count(*) FROM truth").fetchone()[0]
    if n_truth == 0:
        outcome.warnings.append(
            f"no ground truth for model {model!r} in the period; quality is unknown (status no-ground-truth)"
        )
    else:
        orphans = n_truth - labelled
        if orphans > 0:
            outcome.warnings.append(_orphan_labels(model, orphans, features))
    baselines = baselines or {}
    for (version, stage), group in sums.groupby(["model_version", "stage"], sort=True):
        complete = [int(r.w) for r in group.itertuples() if is_complete(spec.label, int(r.labelled))]
        last = int(max(complete, default=int(group["w"].max())))
        if latest_only:
            group = group[group["w"] == last]
        base = baselines.get(version, {})
        for r in group.itertuples():
            w = int(r.w)
            start, end = window_bounds(spec, w, r.first_time, r.last_time)
            res = WindowResult(
                model=model,
                version=str(version),
                stage=str(stage),
                window=spec.label,
                start=start,
                end=end,
                predictions=int(r.predictions),
                labelled=int(r.labelled),
                status="ok",
                baseline_rmse=base.get("rmse"),
                r2_floor=base.get("r2_floor", DEFAULT_R2_FLOOR),
                last_prediction_time=LW.iso_utc(r.last_time),
                last_truth_time=LW.iso_utc(r.last_truth_time) if int(r.labelled) else None,
            )
            sums = [float(v) for v in (r.sse, r.sae, r.sst, r.se4, r.st4, r.sest)] if int(r.labelled) else []
            settle(res, functools.partial(LW.window_metrics, int(r.labelled), *sums, min_labels))
            with_drift = drift_for == "all" or (drift_for == "latest" and w == last)
            if with_drift and reference is not None and int(r.predictions) >= min_labels:
                _engine_drift(
                    con,
                    res,
                    outcome,
                    spec,
                    w,
                    reference,
                    features,
                    report_for == "all" or (report_for == "latest" and w == last),
                    categorical,
                    r if stats else None,
                )
            outcome.windows.append(res)
    return outcome


def _truth_shift(con) -> tuple[float, int]:
    """A value near the truth's mean for the one-scan sums (``kfrelease.lake.windows.window_sums_sql``): the
    mean of the window's labels, a plain scan of one column (0 when there are none); and the number of labels
    read, at least the number of latest labels (``truth``): when the labelled predictions are as many, no
    label is an orphan, and the grouping that counts the latest labels is not needed."""
    source = "labels" if _has_view(con, "labels") else "truth"
    value, n = con.execute(f"SELECT avg(truth), count(*) FROM {source} WHERE isfinite(truth)").fetchone()
    return (float(value) if value is not None and math.isfinite(value) else 0.0), int(n)


def _has_view(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]).fetchone()[0])


def _engine_drift(con, res, outcome, spec, w, reference, features, with_report: bool, categorical=(), r=None) -> None:
    """A window of at most ``MAX_DRIFT_ROWS`` rows: Evidently's DataDriftPreset on all of them (its own
    choice of test, as in ``compute_windows``; category features as categorical columns). A larger one:
    Evidently's PSI test computed by the engine on all its rows (``kfrelease.lake.drift``; category features
    by their category frequencies), and, when it gets a report, Evidently's PSI report on a seeded sample of
    ``MAX_DRIFT_ROWS`` rows (whose category frequencies are those of all rows)."""
    v, s = res.version.replace("'", "''"), res.stage.replace("'", "''")
    rows = (
        f"(SELECT * FROM (SELECT *, {LW.window_id_sql(spec.kind, spec.size)} AS _w FROM joined) "
        f"WHERE model_version = '{v}' AND stage = '{s}' AND _w = {w})"
    )
    try:
        if res.predictions <= MAX_DRIFT_ROWS:
            dr = _drift(reference, con.execute(f"SELECT * FROM {rows}").df(), features, categorical=categorical)
            res.drift_share, res.drifted, res.feature_drift = dr.share_drifted, dr.drifted, dr.columns
            outcome.drift_reports[res.key] = dr
            return
        known = None  # the window's count, and per feature min, max, count: from the window scan
        if r is not None:
            known = (int(r.predictions), *(getattr(r, f"extra_{i}") for i in range(3 * len(features))))
        stats = psi_drift(con, rows, reference, features, categorical=categorical, stats=known)
        res.drift_share, res.drifted, res.feature_drift = stats.share_drifted, stats.drifted, stats.columns
        if with_report:
            sample = f"SELECT * FROM {rows} USING SAMPLE reservoir({MAX_DRIFT_ROWS} ROWS) REPEATABLE (0)"
            counts = {f: stats.current_counts[f] for f in categorical if f in stats.current_counts}
            outcome.drift_reports[res.key] = _drift(
                reference, con.execute(sample).df(), features, "psi", categorical, counts
            )
    except KfreleaseError as exc:
        res.message = (res.message + "; " if res.message else "") + f"drift not computed: {exc}"
