"""The pandas oracle of the monitoring windows: the same windows as ``kfrelease.monitoring.window``'s engine
(``compute_windows_engine``), computed row by row in pandas from the lake's frames. Only the tests and
``bench/bench_monitoring.py`` use it, to check the engine (and Spark, which equals the engine) against
something written another way; the product computes windows in the engine only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfrelease.errors import ConfigError, DataValidationError, KfreleaseError
from kfrelease.lake.windows import iso_utc
from kfrelease.monitoring.window import (
    DEFAULT_MIN_LABELS,
    DEFAULT_R2_FLOOR,
    MonitorOutcome,
    WindowResult,
    WindowSpec,
    _drift,
    _orphan_labels,
    is_complete,
)
from kfrelease.quality.metrics import InsufficientData, metric_intervals, regression_metrics


def _utc(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC")
    return pd.to_datetime(series, utc=True, format="ISO8601")


def _ids(series: pd.Series) -> pd.Series:
    # readers give strings already; converting a million of them costs a second
    return series if series.dtype == object else series.astype(str)


def prepare_predictions(preds: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Keep only what a window needs; check the schema; ``instance`` defaults to 0."""
    needed = ["request_id", "time", "model_version", "stage", "prediction"]
    missing = [c for c in needed if c not in preds.columns]
    if missing:
        raise DataValidationError(
            f"prediction logs lack the columns {missing}; expected the CONTRACTS schema "
            f"(request_id, time, model_version, stage, <features>, prediction)"
        )
    absent = [f for f in features if f not in preds.columns]
    if absent:
        raise DataValidationError(
            f"prediction logs lack the input features {absent}; the logged instances do not match the model's "
            f"input schema ({len(features)} features)"
        )
    out = preds[needed + list(features) + (["instance"] if "instance" in preds.columns else [])].copy()
    if "instance" not in out.columns:
        out["instance"] = 0
    out["instance"] = out["instance"].fillna(0).astype("int64")
    out["time"] = _utc(out["time"])
    out["request_id"] = _ids(out["request_id"])
    return out


def prepare_feedback(truth: pd.DataFrame) -> pd.DataFrame:
    """Check the ground-truth columns; ``instance`` defaults to 0 (labels stay as they are: the lake's
    "latest label wins" rule is applied by the join)."""
    missing = [c for c in ("request_id", "truth") if c not in truth.columns]
    if missing:
        raise DataValidationError(
            f"ground truth lacks the columns {missing}; expected request_id, instance, truth, time"
        )
    return truth


def join_ground_truth(preds: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Left join (``kfrelease.lake.join_truth``: the one join, the latest label wins): every prediction,
    with ``truth`` (NaN when unlabelled or not finite) and ``truth_time``."""
    from kfrelease import lake

    joined = lake.join_truth(preds, truth)
    joined["truth"] = joined["truth"].astype("float64")
    return joined


def _assign_windows(frame: pd.DataFrame, spec: WindowSpec) -> pd.DataFrame:
    frame = frame.sort_values("time", kind="stable")
    if spec.kind == "time":
        secs = frame["time"].astype("int64") // 1_000_000_000
        frame = frame.assign(_w=(secs // spec.size).astype("int64"))
    else:
        labelled = frame["truth"].notna().to_numpy()
        # window k holds the labelled predictions k*size .. (k+1)*size-1 (and unlabelled ones among them)
        rank = np.cumsum(labelled) - labelled
        frame = frame.assign(_w=(rank // spec.size).astype("int64"))
    return frame


def compute_window(
    frame: pd.DataFrame,
    *,
    model: str,
    version: str,
    stage: str,
    spec: WindowSpec,
    features: list[str],
    min_labels: int = DEFAULT_MIN_LABELS,
    reference: pd.DataFrame | None = None,
    baseline_rmse: float | None = None,
    r2_floor: float | None = None,
    categorical: list[str] | tuple[str, ...] = (),
) -> tuple[WindowResult, object | None]:
    """Quality and drift of one window's rows (predictions joined with truth)."""
    labelled = frame[frame["truth"].notna()]
    if spec.kind == "time":
        w = int(frame["_w"].iloc[0])
        start, end = (
            pd.Timestamp(w * spec.size, unit="s", tz="UTC"),
            pd.Timestamp((w + 1) * spec.size, unit="s", tz="UTC"),
        )
    else:
        start, end = frame["time"].min(), frame["time"].max()
    res = WindowResult(
        model=model,
        version=version,
        stage=stage,
        window=spec.label,
        start=iso_utc(start),
        end=iso_utc(end),
        predictions=len(frame),
        labelled=len(labelled),
        status="ok",
        baseline_rmse=baseline_rmse,
        r2_floor=r2_floor,
        last_prediction_time=iso_utc(frame["time"].max()),
        last_truth_time=iso_utc(labelled["truth_time"].max()) if len(labelled) else None,
    )
    if len(labelled) == 0:
        res.status = "no-ground-truth"
        res.message = f"{len(frame)} predictions have no ground truth yet"
    else:
        try:
            m = regression_metrics(labelled["truth"], labelled["prediction"], min_samples=min_labels)
            res.mse, res.rmse, res.mae, res.r2 = m["mse"], m["rmse"], m["mae"], m["r2"]
            res.intervals = metric_intervals(labelled["truth"], labelled["prediction"])
        except InsufficientData as exc:
            res.status = "insufficient"
            res.message = str(exc)
        except KfreleaseError as exc:
            res.status = "insufficient"
            res.message = f"metrics not computed: {exc}"
    drift = None
    if reference is not None and len(frame) >= min_labels:
        try:
            drift = _drift(reference, frame, features, categorical=categorical)
            res.drift_share, res.drifted, res.feature_drift = drift.share_drifted, drift.drifted, drift.columns
        except KfreleaseError as exc:
            res.message = (res.message + "; " if res.message else "") + f"drift not computed: {exc}"
    return res, drift


def compute_windows(
    preds: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    model: str,
    features: list[str],
    spec: WindowSpec | None = None,
    min_labels: int = DEFAULT_MIN_LABELS,
    reference: pd.DataFrame | None = None,
    baselines: dict[str, dict] | None = None,
    latest_only: bool = False,
    drift_for: str = "latest",
    categorical: list[str] | tuple[str, ...] = (),
) -> MonitorOutcome:
    """Every window of every (version, stage) in ``preds`` (one row per predicted instance); the features
    named in ``categorical`` hold category values (Evidently's categorical columns, with frequencies).

    ``baselines`` maps a version to ``{"rmse": ..., "r2_floor": ...}``; ``latest_only`` computes only the
    most recent window of each (version, stage) (what the alerts look at). ``drift_for`` "latest" runs the
    Evidently drift check only on each (version, stage)'s latest window (about a second each), "all" on
    every window, "none" never."""
    spec = spec or WindowSpec()
    if drift_for not in ("latest", "all", "none"):
        raise ConfigError(f"drift_for={drift_for!r}; use latest, all or none")
    outcome = MonitorOutcome(model, [])
    if len(preds) == 0:
        outcome.warnings.append(f"no predictions of model {model!r} were logged in the period")
        return outcome
    p = prepare_predictions(preds, features)
    t = prepare_feedback(truth) if truth is not None and len(truth) else None
    if t is None:
        outcome.warnings.append(
            f"no ground truth for model {model!r} in the period; quality is unknown (status no-ground-truth)"
        )
        t = pd.DataFrame(
            {
                "request_id": pd.Series(dtype=str),
                "instance": pd.Series(dtype="int64"),
                "truth": pd.Series(dtype="float64"),
                "truth_time": pd.Series(dtype="datetime64[ns, UTC]"),
            }
        )
    joined = join_ground_truth(p, t)
    labelled_keys = len(t[["request_id", "instance"]].drop_duplicates()) if len(t) and "instance" in t else len(t)
    orphans = labelled_keys - int(joined["truth"].notna().sum()) if len(t) else 0
    if orphans > 0:
        outcome.warnings.append(_orphan_labels(model, orphans, features))
    baselines = baselines or {}
    for (version, stage), group in joined.groupby(["model_version", "stage"], sort=True):
        group = _assign_windows(group, spec)
        last = int(group["_w"].max())
        labels = group.groupby("_w")["truth"].count()
        complete = [w for w, n in labels.items() if is_complete(spec.label, n)]
        last = int(max(complete, default=last))  # the latest complete window (is_complete), if any
        if latest_only:
            group = group[group["_w"] == last]
        base = baselines.get(version, {})
        for w, rows in group.groupby("_w", sort=True):
            with_drift = drift_for == "all" or (drift_for == "latest" and w == last)
            res, dr = compute_window(
                rows,
                model=model,
                version=str(version),
                stage=str(stage),
                spec=spec,
                features=features,
                min_labels=min_labels,
                reference=reference if with_drift else None,
                baseline_rmse=base.get("rmse"),
                r2_floor=base.get("r2_floor", DEFAULT_R2_FLOOR),
                categorical=categorical,
            )
            outcome.windows.append(res)
            if dr is not None:
                outcome.drift_reports[res.key] = dr
    return outcome
