"""Monitoring windows inside the engine: per (version, stage, window) counts and the sums that MSE, RMSE,
MAE and R² come from, in one SQL that DuckDB (and Spark) run over the ``joined`` view.

Only the sums leave the engine (a few numbers per window), so a window over ten million predictions costs
one scan, not a frame in memory; ``metrics_from_sums`` turns them into the numbers of
``kfrelease.quality.metrics.regression_metrics`` (the project's one definition; equal to scikit-learn's). R² uses
the two-pass sum of squares about the window's mean, as numpy does. Drift: ``kfrelease.lake.drift``.
"""

from __future__ import annotations

import math

import pandas as pd

from kfrelease.lake.join import DUCKDB, Dialect
from kfrelease.quality.metrics import InsufficientData, intervals_from_moments


def window_id_sql(kind: str, size: int, dialect: Dialect = DUCKDB) -> str:
    """The window number of each joined row: time windows by epoch second, count windows by the rank of
    the labelled predictions (in time order, per version and stage)."""
    if kind == "time":
        epoch = "epoch(time)" if dialect.name == "duckdb" else "unix_micros(time) / 1e6"
        return f"CAST(floor({epoch} / {int(size)}) AS BIGINT)"
    labelled = "CASE WHEN truth IS NOT NULL THEN 1 ELSE 0 END"
    return (
        f"CAST(floor((sum({labelled}) OVER (PARTITION BY model_version, stage ORDER BY time, request_id, instance "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) - {labelled}) / {int(size)}) AS BIGINT)"
    )


def window_sums_sql(
    joined: str,
    kind: str,
    size: int,
    dialect: Dialect = DUCKDB,
    shift: float = 0.0,
    aggregates: list[str] | tuple[str, ...] = (),
) -> str:
    """Per (model_version, stage, w): predictions, labelled, first/last time, last truth time, and the
    sums of squared and absolute errors and of squares about the labelled truth's mean, and the fourth-order
    sums their intervals need (``intervals_from_sums``), in **one** scan of ``joined``.

    The sums about the window's mean come from the sums of powers of ``d = truth - shift``, expanded about
    their mean (``shift``: a value near the truth's mean, e.g. the labels' mean: ``sum(d²) - sum(d)²/n``
    then cancels only as much as ``(mean - shift)²`` exceeds the variance). ``aggregates`` adds outputs
    (``extra_0``, ``extra_1``, ... in order) computed in the same scan, e.g. the drift's per-feature counts."""
    k = f"CAST('{float(shift)!r}' AS DOUBLE)"
    extra_aggs = "".join(f", {a} AS extra_{i}" for i, a in enumerate(aggregates))
    extra_out = "".join(f", extra_{i}" for i in range(len(aggregates)))
    return f"""
    WITH rows AS (
      SELECT *, truth - prediction AS _err, truth - {k} AS _dev FROM (
        SELECT *, {window_id_sql(kind, size, dialect)} AS w FROM {joined}
      ) x
    ), sums AS (
      SELECT model_version, stage, w,
             count(*) AS predictions, count(truth) AS labelled,
             min(time) AS first_time, max(time) AS last_time, max(truth_time) AS last_truth_time,
             sum(_err * _err) AS sse, sum(abs(_err)) AS sae, sum(_err * _err * _err * _err) AS se4,
             sum(_dev) AS s1, sum(_dev * _dev) AS s2, sum(_dev * _dev * _dev) AS s3,
             sum(_dev * _dev * _dev * _dev) AS s4, sum(_err * _err * _dev) AS sed,
             sum(_err * _err * _dev * _dev) AS sedd{extra_aggs}
      FROM rows
      GROUP BY model_version, stage, w
    )
    SELECT model_version, stage, w, predictions, labelled, first_time, last_time, last_truth_time, sse, sae,
           s2 - s1 * m AS sst, se4, s4 - 4 * m * s3 + 6 * m * m * s2 - 3 * labelled * m * m * m * m AS st4,
           sedd - 2 * m * sed + m * m * sse AS sest{extra_out}
    FROM (SELECT *, s1 / nullif(labelled, 0) AS m FROM sums) s
    ORDER BY model_version, stage, w
    """


def iso_utc(ts) -> str | None:
    """A window's time as the monitoring records hold it, whichever engine read it: UTC ISO with microseconds and
    ``Z`` (a time without a zone is UTC, as Spark's ``toPandas`` gives it); None for a missing time."""
    if ts is None or pd.isna(ts):  # None, NaN and NaT alike
        return None
    ts = pd.Timestamp(ts)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def require_labels(n: int, min_samples: int = 1) -> None:
    """InsufficientData when ``n`` labelled rows are fewer than a verdict needs (``min_samples``, at least 1)."""
    if n < max(1, min_samples):
        raise InsufficientData(f"{n} labelled rows; at least {max(1, min_samples)} are needed for a verdict")


def window_metrics(
    n: int, sse: float, sae: float, sst: float, se4: float, st4: float, sest: float, min_samples: int = 1
) -> dict:
    """A window's quality numbers from its sums (``metrics_from_sums``) with their 95% intervals
    (``intervals_from_sums``, under ``intervals``): what every engine reports for a window."""
    metrics = metrics_from_sums(n, sse, sae, sst, min_samples)
    return {**metrics, "intervals": intervals_from_sums(n, sse, sae, sst, se4, st4, sest)}


def metrics_from_sums(n: int, sse: float, sae: float, sst: float, min_samples: int = 1) -> dict:
    """``regression_metrics``' numbers from the sums (same edge cases: InsufficientData, R² None)."""
    require_labels(n, min_samples)
    mse = sse / n
    r2 = None if n < 2 or sst == 0.0 else 1.0 - sse / sst
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": sae / n, "r2": r2, "n": n}


def intervals_from_sums(
    n: int, sse: float, sae: float, sst: float, se4: float, st4: float, sest: float, level: float = 0.95
) -> dict:
    """``kfrelease.quality.metrics.metric_intervals`` of a window from its sums (equal to it on the same rows):
    ``se4`` = Σe⁴, ``st4`` = Σu², ``sest`` = Σe²u with e the error and u the squared deviation of the truth
    about the window's mean."""
    if n < 2:
        return intervals_from_moments(n, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, level)
    d = n - 1
    return intervals_from_moments(
        n,
        sse / n,
        (se4 - sse * sse / n) / d,
        sae / n,
        (sse - sae * sae / n) / d,
        sst / n,
        (st4 - sst * sst / n) / d,
        (sest - sse * sst / n) / d,
        level,
    )
