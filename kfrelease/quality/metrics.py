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
from statistics import NormalDist

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
    sq, ab = (t - p) ** 2, np.abs(t - p)
    u = (t - t.mean()) ** 2
    cov = np.cov(np.vstack([sq, ab, u]), ddof=1)
    return intervals_from_moments(
        n,
        float(sq.mean()),
        float(cov[0, 0]),
        float(ab.mean()),
        float(cov[1, 1]),
        float(u.mean()),
        float(cov[2, 2]),
        float(cov[0, 2]),
        level,
    )


def intervals_from_moments(
    n: int,
    sq_mean: float,
    sq_var: float,
    ab_mean: float,
    ab_var: float,
    u_mean: float,
    u_var: float,
    sq_u_cov: float,
    level: float = 0.95,
) -> dict:
    """``metric_intervals`` from the moments of the squared errors ``sq``, absolute errors ``ab`` and squared
    deviations of the truth about its mean ``u`` (means, sample variances and the covariance of sq and u):
    what an engine that only returns per-window sums (``kfrelease.lake.windows``) can give. The variance of
    R²'s influence ``-(sq - a)/v + a (u - v)/v²`` is ``Var(sq)/v² + a² Var(u)/v⁴ - 2 a Cov(sq, u)/v³``."""
    out: dict = {"level": level, "mse": None, "rmse": None, "mae": None, "r2": None}
    if n < 2:
        return out
    z = NormalDist().inv_cdf(0.5 + level / 2)

    def around(mean, var):
        half = z * math.sqrt(max(var, 0.0) / n)
        return [max(mean - half, 0.0), mean + half]

    mse = around(sq_mean, sq_var)
    out.update(mse=mse, rmse=[math.sqrt(mse[0]), math.sqrt(mse[1])], mae=around(ab_mean, ab_var))
    a, v = sq_mean, u_mean
    if v > 0:
        var = sq_var / v**2 + a**2 * u_var / v**4 - 2 * a * sq_u_cov / v**3
        half = z * math.sqrt(max(var, 0.0) / n)
        r2 = 1.0 - a / v
        out["r2"] = [r2 - half, min(1.0, r2 + half)]
    return out
