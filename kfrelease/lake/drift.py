"""Input drift at scale: Evidently's PSI test computed inside the engine on every row of a window.

Evidently's ``psi`` stattest (``evidently/legacy/calculations/stattests/psi.py`` and ``utils.py``
``get_binned_data``), reproduced exactly so the number equals Evidently's on the same rows:

- a numerical column whose reference has more than 20 distinct values is cut into equal-width bins over
  the combined range (``np.histogram_bin_edges(reference + current, bins="sturges")``); bin ``i`` holds
  ``edges[i] <= x < edges[i+1]``, the last bin also its right edge (``np.histogram`` with explicit edges);
- otherwise each distinct value is its own bin;
- empty bins get ``min(non-zero share) / 1e6`` when that share is <= 1e-4, else 1e-4;
- ``psi = sum((ref - cur) * ln(ref / cur))``; the column drifts when ``psi >= 0.1`` (Evidently's default).

A category feature (the input schema's ``category`` / ``string``: text values) is binned by value, as
Evidently's ``psi`` does for a categorical column: its PSI is over the category frequencies, with the same
threshold (0.1). PSI and not a chi-square test: a window holds up to millions of rows, and a chi-square
p-value at that size falls below 0.05 for any shift however small, so every category feature would drift
on every window; PSI measures the size of the shift, whatever the row count, and is the test the numerical
columns get. A category the reference never holds makes the feature drift (``kfrelease.drift.categorical_verdict``:
its share in the reference is 0, which PSI only fills with a small number), and each category feature's
result carries its per-category frequencies, reference against current.

Only the per-bin counts of the current rows come out of the engine (one grouped scan per column); the
reference (the training data) is small and binned with numpy. Non-finite and missing values are left out,
as Evidently drops them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfrelease.lake.join import DUCKDB, Dialect

PSI_THRESHOLD = 0.1
DRIFT_SHARE = 0.5  # Evidently's DataDriftPreset drift_share: the dataset drifts when this share of columns does


@dataclass
class DriftStats:
    share_drifted: float
    drifted: list[str]
    columns: dict[str, dict] = field(default_factory=dict)
    rows_current: int = 0
    rows_reference: int = 0
    #: Per category feature: how often each category occurs in the current rows (all of them).
    current_counts: dict[str, dict[str, int]] = field(default_factory=dict)


def _lit(x: float, dialect: Dialect) -> str:
    return f"CAST('{float(x)!r}' AS DOUBLE)"


def _quote(name: str, dialect: Dialect) -> str:
    return "`" + name.replace("`", "``") + "`" if dialect.name == "spark" else '"' + name.replace('"', '""') + '"'


def sturges_edges(first: float, last: float, n: int) -> np.ndarray:
    """``np.histogram_bin_edges(x, "sturges")`` from x's min, max and size (numpy's own arithmetic)."""
    ptp = last - first
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = ptp / (np.log2(n) + 1.0)
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True)


def bin_index_sql(column: str, edges: np.ndarray, dialect: Dialect) -> str:
    """The bin of ``column`` for explicit ``edges`` (searchsorted right on the interior edges): an estimate
    from the uniform width, corrected by one against the edges themselves."""
    n = len(edges) - 1
    first, last = _lit(edges[0], dialect), _lit(edges[-1], dialect)
    arr = ("[" if dialect.name == "duckdb" else "array(") + ", ".join(_lit(e, dialect) for e in edges)
    arr += "]" if dialect.name == "duckdb" else ")"
    est = f"least(greatest(CAST(floor(({column} - {first}) / ({last} - {first}) * {n}) AS BIGINT), 0), {n - 1})"
    b = dialect.first_index
    return (
        f"(CASE WHEN {column} < ({arr})[{est} + {b}] THEN {est} - 1 "
        f"WHEN {est} < {n - 1} AND {column} >= ({arr})[{est} + 1 + {b}] THEN {est} + 1 ELSE {est} END)"
    )


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    p = p.astype("float64").copy()
    nz = p[p != 0]
    if len(nz) == 0:
        return p
    fill = nz.min() / 10**6 if nz.min() <= 0.0001 else 0.0001
    p[p == 0] = fill
    return p


def psi(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    r, c = _fill_zeroes(ref_share), _fill_zeroes(cur_share)
    return float(np.sum((r - c) * np.log(r / c)))


def psi_drift(
    con,
    current: str,
    reference: pd.DataFrame,
    features: list[str],
    dialect: Dialect = DUCKDB,
    threshold: float = PSI_THRESHOLD,
    categorical: list[str] | tuple[str, ...] = (),
) -> DriftStats:
    """Evidently's PSI of every feature of the rows of ``current`` (a relation) against ``reference``;
    ``categorical``: the features holding category values (PSI over their categories, with frequencies)."""
    from kfrelease.drift import categorical_verdict, category_counts

    run = (
        (lambda sql: con.execute(sql).fetchall())
        if dialect.name == "duckdb"
        else (lambda sql: [tuple(r) for r in con.sql(sql).collect()])
    )
    cats = set(categorical)
    qs = {f: _quote(f, dialect) for f in features}
    ok = {
        f: f"({qs[f]} IS NOT NULL)" if f in cats else f"({qs[f]} IS NOT NULL AND {dialect.finite.format(qs[f])})"
        for f in features
    }
    aggs = ", ".join(
        f"NULL, NULL, sum(CASE WHEN {ok[f]} THEN 1 ELSE 0 END)"
        if f in cats
        else f"min(CASE WHEN {ok[f]} THEN {qs[f]} END), max(CASE WHEN {ok[f]} THEN {qs[f]} END), "
        f"sum(CASE WHEN {ok[f]} THEN 1 ELSE 0 END)"
        for f in features
    )
    (stats,) = run(f"SELECT count(*), {aggs} FROM {current}")
    rows = int(stats[0])
    columns: dict[str, dict] = {}
    current_counts: dict[str, dict[str, int]] = {}
    for j, f in enumerate(features):
        cmin, cmax, n_cur = (
            stats[1 + 3 * j],
            stats[2 + 3 * j],
            int(stats[3 + 3 * j] or 0),
        )
        if f in cats:
            ref_counts = category_counts(reference[f])
            if n_cur == 0 or not ref_counts:
                continue
            counts = {
                str(k): int(v) for k, v in run(f"SELECT {qs[f]}, count(*) FROM {current} WHERE {ok[f]} GROUP BY 1")
            }
            keys = sorted(set(ref_counts) | set(counts))
            n_ref = sum(ref_counts.values())
            value = psi(
                np.array([ref_counts.get(k, 0) for k in keys]) / n_ref,
                np.array([counts.get(k, 0) for k in keys]) / n_cur,
            )
            column = {"score": value, "method": "PSI", "threshold": threshold, "drifted": bool(value >= threshold)}
            columns[f] = categorical_verdict(column, ref_counts, counts)
            current_counts[f] = counts
            continue
        ref = pd.to_numeric(reference[f], errors="coerce").astype("float64")
        ref = ref[np.isfinite(ref)]
        if n_cur == 0 or len(ref) == 0:
            continue
        if ref.nunique() > 20:
            first, last = (
                min(float(ref.min()), float(cmin)),
                max(float(ref.max()), float(cmax)),
            )
            edges = sturges_edges(first, last, len(ref) + n_cur)
            ref_share = np.histogram(ref.to_numpy(), edges)[0] / len(ref)
            counts = dict(
                run(
                    f"SELECT {bin_index_sql(qs[f], edges, dialect)} AS b, count(*) FROM {current} WHERE {ok[f]} GROUP BY b"
                )
            )
            cur_share = np.array([counts.get(i, 0) for i in range(len(edges) - 1)]) / n_cur
        else:
            counts = dict(run(f"SELECT {qs[f]} AS v, count(*) FROM {current} WHERE {ok[f]} GROUP BY v"))
            keys = sorted(set(ref.unique().tolist()) | set(counts))
            ref_counts = ref.value_counts()
            ref_share = np.array([ref_counts.get(k, 0) for k in keys]) / len(ref)
            cur_share = np.array([counts.get(k, 0) for k in keys]) / n_cur
        value = psi(ref_share, cur_share)
        columns[f] = {
            "score": value,
            "method": "PSI",
            "threshold": threshold,
            "drifted": bool(value >= threshold),
        }
    drifted = [f for f in features if columns.get(f, {}).get("drifted")]
    share = len(drifted) / len(features) if features else 0.0
    return DriftStats(share, drifted, columns, rows, len(reference), current_counts)


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
