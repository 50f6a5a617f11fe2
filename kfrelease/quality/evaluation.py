"""The Evidently 0.7 regression report of a model on held-out data: metrics as data, and the HTML picture.

Evidently's ``RegressionPreset`` gives RMSE, MAE, R² and more; it has no MSE metric, so the numbers this
returns come from ``kfrelease.quality.metrics.regression_metrics`` (equal to scikit-learn), and Evidently's own
values are kept beside them under ``evidently`` for the record (Evidently 0.7, ``evidently.presets.RegressionPreset``).
"""

from __future__ import annotations

import html as markup
import json
import logging
import os
import tempfile
import warnings

import pandas as pd

from kfrelease.quality.metrics import regression_metrics

log = logging.getLogger(__name__)


def _evidently_values(snapshot) -> dict:
    out = {}
    for m in snapshot.dict().get("metrics", []):
        name, value = m.get("metric_name", "").split("(")[0], m.get("value")  # e.g. "RMSE(regression_name=...)"
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            out[name] = float(value["mean"])
    return out


def regression_report(frame: pd.DataFrame, target: str, prediction: str, features: list[str]) -> tuple[dict, str]:
    """Metrics ``{mse, rmse, mae, r2, n, evidently: {...}}`` and Evidently's regression report as HTML."""
    from evidently import DataDefinition, Dataset, Regression, Report  # heavy: evidently
    from evidently.presets import RegressionPreset  # heavy: evidently
    from sklearn.exceptions import UndefinedMetricWarning  # heavy: sklearn

    metrics = regression_metrics(frame[target], frame[prediction])
    text = [f for f in features if not pd.api.types.is_numeric_dtype(frame[f])]  # category features, as text
    numbers = [f for f in features if f not in text]
    data = frame[[*numbers, target, prediction]].astype("float64").reset_index(drop=True)
    for f in text:
        data[f] = frame[f].astype(str).to_numpy()
    definition = DataDefinition(
        numerical_columns=numbers,
        categorical_columns=text,
        regression=[Regression(target=target, prediction=prediction)],
    )
    try:
        with warnings.catch_warnings():  # Evidently scores single-row slices internally; R² is undefined there
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            snapshot = Report([RegressionPreset()]).run(Dataset.from_pandas(data, data_definition=definition), None)
    except Exception as exc:  # noqa: BLE001 - the report is a picture; the metrics above do not depend on it
        log.warning("Evidently's regression report failed: %s", exc)
        metrics["evidently"] = {"error": f"{type(exc).__name__}: {exc}"}
        page = f"<html><body><p>Evidently's regression report could not be made: {markup.escape(str(exc))}</p>"
        return metrics, page + f"<pre>{markup.escape(json.dumps(metrics, indent=2, default=str))}</pre></body></html>"
    metrics["evidently"] = _evidently_values(snapshot)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "report.html")
        snapshot.save_html(path)
        with open(path, encoding="utf-8") as fh:
            html = fh.read()
    return metrics, html
