"""Train a model spec on a curated dataset version: checks before any fit, a seeded split, the fit."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kfrelease.errors import DataValidationError
from kfrelease.training.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object  # the fitted estimator; ``predict`` takes a DataFrame with spec.features in order
    train: pd.DataFrame  # the rows it was fitted on (features + target)
    test: pd.DataFrame  # the held-out rows (features + target)
    fit_seconds: float


def check_data(spec: ModelSpec, df: pd.DataFrame, dataset_version: str = "") -> None:
    """Every feature and the target exist and are numeric and finite; enough rows to split."""
    where = f"dataset {spec.dataset!r}" + (f" version {dataset_version}" if dataset_version else "")
    missing = [c for c in (*spec.features, spec.target) if c not in df.columns]
    if missing:
        kind = "target" if missing == [spec.target] else "feature(s)"
        raise DataValidationError(
            f"model spec {spec.name!r}: {kind} {missing} not in {where}; its columns are {list(df.columns)}",
            [{"column": c, "problem": "missing"} for c in missing],
        )
    bad = [c for c in (*spec.features, spec.target) if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise DataValidationError(f"model spec {spec.name!r}: column(s) {bad} of {where} are not numeric")
    cols = [*spec.features, spec.target]
    if not np.isfinite(df[cols].to_numpy(dtype="float64")).all():
        raise DataValidationError(f"model spec {spec.name!r}: {where} has NaN or infinite values in {cols}")
    if len(df) < 10:
        raise DataValidationError(f"model spec {spec.name!r}: {where} has {len(df)} rows; at least 10 are needed")


def split(spec: ModelSpec, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The seeded train/test split (same data + same spec -> same split)."""
    from sklearn.model_selection import train_test_split

    cols = [*spec.features, spec.target]
    frame = df[cols].astype("float64")
    train, test = train_test_split(frame, test_size=spec.split.test_size, random_state=spec.split.seed, shuffle=True)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def train(spec: ModelSpec, df: pd.DataFrame, dataset_version: str = "") -> TrainResult:
    """Check the spec against the data, split with the spec's seed, fit. Nothing is fitted on bad input."""
    estimator = spec.build_estimator()  # ConfigError for unknown estimator / invalid hyper-parameters
    check_data(spec, df, dataset_version)
    train_df, test_df = split(spec, df)
    if hasattr(estimator, "random_state") and getattr(estimator, "random_state", None) is None:
        try:
            estimator.set_params(random_state=spec.split.seed)
        except ValueError:
            pass
    start = time.perf_counter()
    estimator.fit(train_df[list(spec.features)], train_df[spec.target])
    seconds = time.perf_counter() - start
    log.info("fitted %s on %d rows in %.3f s", type(estimator).__name__, len(train_df), seconds)
    return TrainResult(estimator, train_df, test_df, seconds)


def predict(model, frame: pd.DataFrame, features) -> np.ndarray:
    return np.asarray(model.predict(frame[list(features)].astype("float64")), dtype="float64").ravel()
