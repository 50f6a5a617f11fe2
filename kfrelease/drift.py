"""Input drift of current data against a reference (the model's training data), with Evidently 0.7's
``DataDriftPreset``: one statistical test per column, chosen by Evidently (K-S p-value for small numerical
samples, normed Wasserstein distance above 1000 rows, ...), and the share of drifted columns.

Evidently computes each column as a ``ValueDrift`` metric; its result is the test's value and its calculation
holds the method and threshold it resolved (``to_metric_config().params``); for p-value methods a column drifts when the p-value is below the threshold, for distance methods when the
distance reaches it (Evidently's own rule, `evidently/legacy/calculations/stattests`). Large windows are
sampled (``max_rows``, seeded) so one window stays within seconds: Evidently took ~37 s on 1M rows x 10
columns on this machine (docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kfrelease.errors import DataValidationError

#: Rows of each side given to Evidently at most; larger frames are sampled without replacement (seeded).
MAX_DRIFT_ROWS = 20_000


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
        import os
        import tempfile

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
) -> DriftResult:
    """Evidently DataDriftPreset of ``current`` against ``reference`` on the numerical ``columns``
    (``method``: one Evidently stattest for every column, e.g. ``"psi"``; default: Evidently's choice).

    Raises DataValidationError when a column is missing from either side or a side is empty."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

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
    ref = _sample(reference[columns], max_rows).astype("float64")
    cur = _sample(current[columns], max_rows).astype("float64")
    definition = DataDefinition(numerical_columns=columns)
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
    drifted_cols = [c for c in columns if per_column.get(c, {}).get("drifted")]
    share = len(drifted_cols) / len(columns)
    return DriftResult(share, drifted_cols, per_column, len(ref), len(cur), snapshot)
