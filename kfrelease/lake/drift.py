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
columns get. A category the reference never holds makes the feature drift (``kfrelease.quality.drift.categorical_verdict``:
its share in the reference is 0, which PSI only fills with a small number), and each category feature's
result carries its per-category frequencies, reference against current.

Only the per-bin counts of the current rows come out of the engine, for every column in one scan (each row's
bin computed once and grouped in its feature's grouping set, with the category values; the count, minimum
and maximum that fix the bins in one scan before, or from the window's own scan); the reference (the
training data) is small and binned with numpy. Non-finite and missing values are left out,
as Evidently drops them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfrelease.data.dtypes import text_to_numbers
from kfrelease.lake.join import DUCKDB, Dialect
from kfrelease.quality.drift import categorical_verdict

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


def bin_index_sql(column: str, edges: np.ndarray, dialect: Dialect, estimate: str | None = None) -> str:
    """The bin of ``column`` for explicit ``edges`` (searchsorted right on the interior edges): an estimate
    from the uniform width (``estimate``: a column already holding ``estimate_sql``), corrected by one against
    the edges themselves. The edges are ``numpy.linspace``'s, ``first + i * step`` in doubles, computed so
    in the SQL when that gives each of them exactly (else read from a literal array)."""
    n = len(edges) - 1
    est = estimate or estimate_sql(column, edges)
    first, last = float(edges[0]), float(edges[-1])
    step = (last - first) / n
    if np.array_equal(np.arange(n) * step + first, edges[:-1]):  # numpy's own arithmetic: the same doubles

        def edge(i: str) -> str:
            return f"(CAST({i} AS DOUBLE) * {_lit(step, dialect)} + {_lit(first, dialect)})"

        low, high = edge(est), edge(f"{est} + 1")
    else:
        arr = ("[" if dialect.name == "duckdb" else "array(") + ", ".join(_lit(e, dialect) for e in edges)
        arr += "]" if dialect.name == "duckdb" else ")"
        b = dialect.first_index
        low, high = f"({arr})[{est} + {b}]", f"({arr})[{est} + 1 + {b}]"
    # est - 1 below its low edge, est + 1 at or above its high edge (never both): arithmetic, not a CASE
    below, above = f"CAST({column} < {low} AS INTEGER)", f"CAST({est} < {n - 1} AND {column} >= {high} AS INTEGER)"
    return f"({est} - {below} + {above})"


def estimate_sql(column: str, edges: np.ndarray) -> str:
    """The uniform-width estimate of ``column``'s bin among ``edges`` (``bin_index_sql`` corrects it)."""
    n = len(edges) - 1
    first, last = _lit(edges[0], DUCKDB), _lit(edges[-1], DUCKDB)
    return f"least(greatest(CAST(floor(({column} - {first}) / ({last} - {first}) * {n}) AS BIGINT), 0), {n - 1})"


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


@dataclass
class ColumnPlan:
    """How one feature is binned: ``"bins"`` (a numerical reference with more than 20 distinct values: equal-
    width bins over the combined range) or ``"values"`` (each distinct value its own bin; category features)."""

    feature: str
    kind: str
    category: bool
    reference: np.ndarray  # the reference's values (finite numbers, or category strings)
    values: list = field(default_factory=list)  # "values": the reference's distinct values, sorted

    def edges(self, cmin: float, cmax: float, n_cur: int) -> np.ndarray:
        first, last = min(float(self.reference.min()), float(cmin)), max(float(self.reference.max()), float(cmax))
        return sturges_edges(first, last, len(self.reference) + n_cur)


def plan_columns(reference: pd.DataFrame, features: list[str], categorical=()) -> dict[str, ColumnPlan]:
    """The binning of each feature from the reference (features without reference values are left out)."""
    out = {}
    for f in features:
        if f in set(categorical):
            ref = reference[f].dropna().astype(str).to_numpy(dtype=object)
            if len(ref):
                out[f] = ColumnPlan(f, "values", True, ref, sorted(set(ref.tolist())))
            continue
        ref = text_to_numbers(reference[f])
        ref = ref[np.isfinite(ref)].to_numpy()
        if len(ref) == 0:
            continue
        distinct = np.unique(ref)
        out[f] = (
            ColumnPlan(f, "bins", False, ref)
            if len(distinct) > 20
            else ColumnPlan(f, "values", False, ref, distinct.tolist())
        )
    return out


def ok_sql(column: str, category: bool, dialect: Dialect) -> str:
    """A value the drift counts: present, and a finite number unless a category (Evidently drops the rest)."""
    return f"({column} IS NOT NULL)" if category else f"({column} IS NOT NULL AND {dialect.finite.format(column)})"


def stats_aggregates(features: list[str], categorical, dialect: Dialect = DUCKDB) -> list[str]:
    """Per feature ``min, max, count`` of the counted values (NULL min/max for a category feature). The values
    left out are made NULL, which the three ignore: an aggregate ``FILTER`` cost DuckDB 3x the whole scan."""
    out = []
    for f in features:
        q = _quote(f, dialect)
        if f in set(categorical):
            out += ["NULL", "NULL", f"count({q})"]
        else:
            kept = f"CASE WHEN {ok_sql(q, False, dialect)} THEN {q} END"
            out += [f"min({kept})", f"max({kept})", f"count({kept})"]
    return out


def column_result(
    plan: ColumnPlan,
    counts: list,
    n_cur: int,
    edges: np.ndarray | None,
    others: dict | None = None,
    threshold: float = PSI_THRESHOLD,
) -> tuple[dict, dict | None]:
    """PSI of one feature from the current counts (by bin; or by the reference's values, then the number of
    values outside them, ``others``: those by value), and the current counts by category of a category feature."""
    if plan.kind == "bins":
        ref_share = np.histogram(plan.reference, edges)[0] / len(plan.reference)
        cur_share = np.array([int(c or 0) for c in counts]) / n_cur
        value = psi(ref_share, cur_share)
        return {"score": value, "method": "PSI", "threshold": threshold, "drifted": bool(value >= threshold)}, None
    current = {v: int(c or 0) for v, c in zip(plan.values, counts[:-1])}
    current.update(others or {})
    current = {k: c for k, c in current.items() if c}
    keys = sorted(set(plan.values) | set(current))
    ref_counts = pd.Series(plan.reference).value_counts()
    value = psi(
        np.array([ref_counts.get(k, 0) for k in keys]) / len(plan.reference),
        np.array([current.get(k, 0) for k in keys]) / n_cur,
    )
    column = {"score": value, "method": "PSI", "threshold": threshold, "drifted": bool(value >= threshold)}
    if not plan.category:
        return column, None
    return categorical_verdict(column, {str(k): int(v) for k, v in ref_counts.items()}, current), current


def psi_drift(
    con,
    current: str,
    reference: pd.DataFrame,
    features: list[str],
    dialect: Dialect = DUCKDB,
    threshold: float = PSI_THRESHOLD,
    categorical: list[str] | tuple[str, ...] = (),
    stats: tuple | None = None,
) -> DriftStats:
    """Evidently's PSI of every feature of the rows of ``current`` (a relation) against ``reference``;
    ``categorical``: the features holding category values (PSI over their categories, with frequencies).

    Two scans of ``current`` whatever the number of features: the counts, minimum and maximum of every
    feature (``stats``: already known, e.g. from the window's own scan: then this one is skipped), then every
    feature's counts by bin or value, one grouping set per feature (values outside the reference's, e.g. an
    unseen category, come out of the same grouping)."""
    run = (
        (lambda sql: con.execute(sql).fetchall())
        if dialect.name == "duckdb"
        else (lambda sql: [tuple(r) for r in con.sql(sql).collect()])
    )
    if stats is None:
        (stats,) = run(f"SELECT count(*), {', '.join(stats_aggregates(features, categorical, dialect))} FROM {current}")
    plans = plan_columns(reference, features, categorical)
    edges, counted, columns, inner, kept = {}, [], [], [], []
    for j, f in enumerate(features):
        n_cur = int(stats[3 + 3 * j] or 0)
        if f not in plans or n_cur == 0:
            continue
        plan, q = plans[f], _quote(f, dialect)
        counted.append(j)
        if plan.kind == "bins":
            edges[f] = plan.edges(stats[1 + 3 * j], stats[2 + 3 * j], n_cur)
            # each a projection of its own, computed once per row: the counted value (else NULL), its bin's
            # estimate, its bin (NULL for a value not counted)
            kept.append(f"CASE WHEN {ok_sql(q, False, dialect)} THEN {q} END AS _x_{j}")
            inner += [f"_x_{j}", f"{estimate_sql(f'_x_{j}', edges[f])} AS _est_{j}"]
            columns.append(f"{bin_index_sql(f'_x_{j}', edges[f], dialect, f'_est_{j}')} AS _g_{j}")
        else:
            kept.append(f"CASE WHEN {ok_sql(q, plan.category, dialect)} THEN {q} END AS _g_{j}")
            inner.append(f"_g_{j}")
            columns.append(f"_g_{j}")
    found: dict[int, dict] = {j: {} for j in counted}
    if counted:
        # one grouping set per feature (a few dozen groups each): each row's bin or value is grouped once
        # per feature, where a count_if per bin and category evaluated every one of them on every row
        groups = ", ".join(f"_g_{j}" for j in counted)
        flags = ", ".join(f"grouping(_g_{j})" for j in counted)
        sets = ", ".join(f"(_g_{j})" for j in counted)
        projected = (
            f"(SELECT {', '.join(columns)} FROM (SELECT {', '.join(inner)} FROM "
            f"(SELECT {', '.join(kept)} FROM {current}) kept) estimated) binned"
        )
        for row in run(f"SELECT {groups}, {flags}, count(*) FROM {projected} GROUP BY GROUPING SETS ({sets})"):
            at = row[len(counted) :].index(0)  # the grouping set of this row: its feature's flag is 0
            if row[at] is not None:  # NULL: the values not counted
                found[counted[at]][row[at]] = int(row[-1])
    out = drift_from_counts(features, plans, stats, edges, found, threshold)
    out.rows_reference = len(reference)
    return out


def drift_from_counts(features, plans, stats, edges, found, threshold) -> DriftStats:
    """The drift of every feature from its current counts (``found[j]``: feature ``j``'s count by bin index
    or by value)."""
    columns: dict[str, dict] = {}
    current_counts: dict[str, dict[str, int]] = {}
    for j, f in enumerate(features):
        if j not in found:
            continue
        plan, mine = plans[f], found[j]
        if plan.kind == "bins":
            counts, others = [mine.get(i, 0) for i in range(len(edges[f]) - 1)], None
        else:
            key = str if plan.category else float
            known = set(plan.values)
            others = {key(v): c for v, c in mine.items() if v not in known}
            counts = [mine.get(v, 0) for v in plan.values] + [sum(others.values())]
        columns[f], cats = column_result(plan, counts, int(stats[3 + 3 * j]), edges.get(f), others, threshold)
        if cats is not None:
            current_counts[f] = cats
    drifted = [f for f in features if columns.get(f, {}).get("drifted")]
    share = len(drifted) / len(features) if features else 0.0
    return DriftStats(share, drifted, columns, int(stats[0]), 0, current_counts)


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
