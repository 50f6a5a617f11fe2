"""Input drift of current data against a reference (the model's training data), with Evidently 0.7's
``DataDriftPreset``: one statistical test per column, chosen by Evidently (K-S p-value for small numerical
samples, normed Wasserstein distance above 1000 rows, ...), and the share of drifted columns.

Category features (the input schema's ``category`` and ``string`` columns) are given to Evidently as
categorical columns (its default test for them: chi-square up to 1000 rows, Jensen-Shannon above); each
carries its per-category frequencies, reference against current (``category_frequencies``), and a category
the reference never holds counts as drift (``unseen``), not as an error.

Evidently computes each column as a ``ValueDrift`` metric; its result is the test's value and its calculation
holds the method and threshold it resolved (``to_metric_config().params``); for p-value methods a column drifts when the p-value is below the threshold, for distance methods when the
distance reaches it (Evidently's own rule, `evidently/legacy/calculations/stattests`). Large windows are
sampled (``max_rows``, seeded) so one window stays within seconds: Evidently took ~37 s on 1M rows x 10
columns on this machine (docs/monitoring.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kfrelease.errors import DataValidationError

#: Rows of each side given to Evidently at most; larger frames are sampled without replacement (seeded).
MAX_DRIFT_ROWS = 20_000
#: Categories recorded per category feature in a drift result: the most frequent on either side; the others
#: are summed into ``OTHER`` (a ``string`` feature passed to the model as is may hold any text).
MAX_RECORDED_CATEGORIES = 50
OTHER = "(other)"


def category_counts(values: pd.Series) -> dict[str, int]:
    """How often each category occurs (missing values left out, as Evidently drops them)."""
    return {str(k): int(v) for k, v in values.dropna().astype(str).value_counts(sort=False).items()}


def category_frequencies(
    reference: Mapping[str, int], current: Mapping[str, int], most: int = MAX_RECORDED_CATEGORIES
) -> dict:
    """The shares of each category on both sides, ``{"frequencies": {category: {"reference", "current"}},
    "unseen": [...]}``: categories by descending larger share (then by name), at most ``most`` of them, the
    rest summed into ``OTHER``; ``unseen``: categories of the current rows the reference never holds (a
    category unseen in training counts as drift), at most ``most`` named, in the same order."""
    n_ref, n_cur = sum(reference.values()) or 1, sum(current.values()) or 1
    shares = {k: (reference.get(k, 0) / n_ref, current.get(k, 0) / n_cur) for k in set(reference) | set(current)}
    order = sorted(shares, key=lambda k: (-max(shares[k]), k))
    out = {k: {"reference": shares[k][0], "current": shares[k][1]} for k in order[:most]}
    if len(order) > most:
        rest = order[most:]
        out[OTHER] = {
            "reference": sum(shares[k][0] for k in rest),
            "current": sum(shares[k][1] for k in rest),
        }
    unseen = [k for k in order if current.get(k, 0) and not reference.get(k, 0)]
    return {"frequencies": out, "unseen": unseen[:most], "unseen_count": len(unseen)}


def categorical_verdict(column: dict, reference: Mapping[str, int], current: Mapping[str, int]) -> dict:
    """A category column's drift result with its frequencies; drifted also when a category is unseen."""
    freq = category_frequencies(reference, current)
    return {**column, **freq, "drifted": bool(column.get("drifted")) or freq["unseen_count"] > 0}


@dataclass
class DriftResult:
    """Per-column drift and the share of drifted columns; ``html()`` is Evidently's report."""

    share_drifted: float
    drifted: list[str]
    columns: dict[str, dict]
    rows_reference: int = 0
    rows_current: int = 0
    _snapshot: object = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        return {
            "share_drifted": self.share_drifted,
            "drifted": list(self.drifted),
            "columns": self.columns,
            "rows_reference": self.rows_reference,
            "rows_current": self.rows_current,
        }

    def html(self) -> str:
        """The Evidently data-drift report as a self-contained HTML page."""
        if self._snapshot is None:
            return "<html><body><p>No drift report (no snapshot).</p></body></html>"

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "drift.html")
            self._snapshot.save_html(path)
            with open(path, encoding="utf-8") as fh:
                return fh.read()


def _sample(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    return frame.sample(n=max_rows, random_state=0) if len(frame) > max_rows else frame


def data_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    max_rows: int = MAX_DRIFT_ROWS,
    method: str | None = None,
    categorical: list[str] | tuple[str, ...] = (),
    current_counts: Mapping[str, Mapping[str, int]] | None = None,
) -> DriftResult:
    """Evidently DataDriftPreset of ``current`` against ``reference`` on ``columns``: numerical, except the
    ``categorical`` ones (category values). ``method``: one Evidently stattest for every column, e.g.
    ``"psi"``; default: Evidently's choice. A categorical column's result carries its per-category
    frequencies (``category_frequencies``) from ``current_counts[column]`` when given (every row of a window
    whose ``current`` is a sample), else from ``current``.

    Raises DataValidationError when a column is missing from either side or a side is empty."""
    from evidently import DataDefinition, Dataset, Report  # heavy: evidently
    from evidently.metrics import ValueDrift  # heavy: evidently
    from evidently.presets import DataDriftPreset  # heavy: evidently

    columns = list(columns)
    if not columns:
        raise DataValidationError("no columns given for the drift check; pass the model's input features")
    for side, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataValidationError(
                f"{side} data lacks the columns {missing} needed for the drift check; "
                f"it has {list(frame.columns)[:20]}",
                [{"side": side, "column": c, "problem": "missing"} for c in missing],
            )
        if len(frame) == 0:
            raise DataValidationError(f"{side} data is empty; a drift check needs rows on both sides")
    cats = [c for c in columns if c in set(categorical)]
    nums = [c for c in columns if c not in set(cats)]

    def typed(frame: pd.DataFrame) -> pd.DataFrame:
        # an infinity is a missing value, as the engine's PSI counts it (numpy cannot bin an infinite range:
        # Evidently raised ValueError on a window holding one)
        out = frame[nums].astype("float64").replace([np.inf, -np.inf], np.nan)
        for c in cats:  # category values as text, missing ones missing (not the string "nan")
            out[c] = frame[c].astype(object).where(frame[c].notna(), None).map(lambda v: v if v is None else str(v))
        return out[columns]

    ref = typed(_sample(reference[columns], max_rows))
    cur = typed(_sample(current[columns], max_rows))
    definition = DataDefinition(numerical_columns=nums, categorical_columns=cats)
    snapshot = Report([DataDriftPreset(method=method)]).run(
        Dataset.from_pandas(cur.reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(ref.reset_index(drop=True), data_definition=definition),
    )
    per_column: dict[str, dict] = {}
    for metric_id, result in snapshot.metric_results.items():
        calculation = snapshot.context.get_metric(metric_id)
        if not isinstance(calculation.to_metric(), ValueDrift):
            continue
        params = calculation.to_metric_config().params  # with the method and threshold Evidently resolved
        value, threshold, method = float(result.value), float(params["threshold"]), params["method"]
        drifted = value < threshold if "p_value" in method else value >= threshold
        per_column[params["column"]] = {
            "score": value,
            "method": method,
            "threshold": threshold,
            "drifted": bool(drifted),
        }
    for c in cats:
        counts = (current_counts or {}).get(c)
        per_column[c] = categorical_verdict(
            per_column.get(c, {}),
            category_counts(reference[c]),
            dict(counts) if counts is not None else category_counts(current[c]),
        )
    drifted_cols = [c for c in columns if per_column.get(c, {}).get("drifted")]
    share = len(drifted_cols) / len(columns)
    return DriftResult(share, drifted_cols, per_column, len(ref), len(cur), snapshot)
