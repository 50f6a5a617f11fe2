"""Regression quality metrics: one definition used by training (evaluate), release (shadow and canary
gates) and monitoring (windows), so the numbers a gate compares are the numbers a dashboard shows.

``regression_metrics`` is plain numpy and equals ``sklearn.metrics`` (mean_squared_error, its square root,
mean_absolute_error, r2_score) to floating-point precision. ``metric_intervals`` gives each of them a
confidence interval, so that every number shown to a person carries its uncertainty. Evidently reports (HTML + JSON) are built on
top of it elsewhere; Evidently 0.7 has no MSE metric, so MSE always comes from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from kfrelease.errors import KfreleaseError

METRIC_NAMES = ("mse", "rmse", "mae", "r2")


class InsufficientData(KfreleaseError):
    """Too few labelled rows to compute a metric honestly (reported as insufficient, never as NaN)."""


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float], min_samples: int = 1) -> dict:
    """MSE, RMSE, MAE and R² of predictions against truth, and ``n``.

    ``r2`` is None when it is undefined (fewer than 2 rows, or a constant truth), never NaN.
    Raises InsufficientData when there are fewer than ``min_samples`` rows or any value is not finite."""
    t = np.asarray(y_true, dtype="float64").ravel()
    p = np.asarray(y_pred, dtype="float64").ravel()
    if t.shape != p.shape:
        raise KfreleaseError(f"truth has {t.size} values but predictions have {p.size}; they must pair up row by row")
    n = int(t.size)
    if n < max(1, min_samples):
        raise InsufficientData(f"{n} labelled rows; at least {max(1, min_samples)} are needed for a verdict")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise KfreleaseError("truth or predictions contain NaN or infinity; drop or fix those rows first")
    err = t - p
    mse = float(np.mean(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = None if n < 2 or ss_tot == 0.0 else 1.0 - float(np.sum(err**2)) / ss_tot
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(err))), "r2": r2, "n": n}


def metric_intervals(y_true: Sequence[float], y_pred: Sequence[float], level: float = 0.95) -> dict:
    """Confidence intervals ``{"mse": [lo, hi], "rmse": ..., "mae": ..., "r2": ..., "level": level}`` of
    ``regression_metrics`` on the same rows: normal (central-limit) intervals on the mean squared and mean
    absolute error, RMSE as the square root of the MSE's bounds, R² by the delta method on
    ``1 - MSE / Var(truth)`` (influence function ``-(e² - MSE)/V + MSE (u - V)/V²``, ``u = (t - mean t)²``).
    O(n), so it suits windows of millions of rows (a bootstrap would not). Intervals of fewer than 2 rows,
    and R²'s with a constant truth, are None (undefined, never NaN)."""
    from statistics import NormalDist

    t = np.asarray(y_true, dtype="float64").ravel()
    p = np.asarray(y_pred, dtype="float64").ravel()
    if t.shape != p.shape:
        raise KfreleaseError(f"truth has {t.size} values but predictions have {p.size}; they must pair up row by row")
    if not 0 < level < 1:
        raise KfreleaseError(f"interval level {level} must be between 0 and 1, e.g. 0.95")
    n = int(t.size)
    out: dict = {"level": level, "mse": None, "rmse": None, "mae": None, "r2": None}
    if n < 2:
        return out
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise KfreleaseError("truth or predictions contain NaN or infinity; drop or fix those rows first")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    sq, ab = (t - p) ** 2, np.abs(t - p)

    def around(x):
        m, half = float(x.mean()), z * float(x.std(ddof=1)) / math.sqrt(n)
        return [m - half, m + half]

    mse = around(sq)
    mse[0] = max(mse[0], 0.0)
    mae = around(ab)
    mae[0] = max(mae[0], 0.0)
    out.update(mse=mse, rmse=[math.sqrt(mse[0]), math.sqrt(mse[1])], mae=mae)
    u = (t - t.mean()) ** 2
    v = float(u.mean())
    if v > 0:
        a = float(sq.mean())
        influence = -(sq - a) / v + a * (u - v) / v**2
        r2 = 1.0 - a / v
        half = z * float(influence.std(ddof=1)) / math.sqrt(n)
        out["r2"] = [r2 - half, min(1.0, r2 + half)]
    return out
