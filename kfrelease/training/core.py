"""Train a model spec on a curated dataset version: checks before any fit, the stable-hash split, the fit."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from kfrelease.errors import DataValidationError
from kfrelease.serving.threads import cores_given
from kfrelease.training.holdout import rule_for
from kfrelease.training.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object  # the fitted estimator; ``predict`` takes a DataFrame with spec.features in order
    train: pd.DataFrame  # the rows it was fitted on (features + target)
    test: pd.DataFrame  # the held-out rows (features + target)
    fit_seconds: float


def _numeric(dtype: str) -> bool:
    try:
        return pd.api.types.is_numeric_dtype(pd.api.types.pandas_dtype(dtype))
    except TypeError:
        return False


#: Curated dtypes a feature may have besides numbers: text, served as a category (the model's own encoder, e.g.
#: a ``OneHotEncoder`` in a ``build`` pipeline, turns it into numbers; ``kfrelease.registry.artifact``).
TEXT_DTYPES = frozenset({"string", "category"})


def _text(dtype: str) -> bool:
    return dtype in TEXT_DTYPES or dtype == "object"


def typed(df: pd.DataFrame, columns) -> pd.DataFrame:
    """``df[columns]`` as a model takes them: numeric columns as float64, text columns as Python strings."""
    out = {}
    for c in columns:
        values = df[c]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            out[c] = values.astype("float64")
        else:
            out[c] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(out, index=df.index)


def text_features(spec: ModelSpec, df: pd.DataFrame) -> list[str]:
    """The spec's features whose values in ``df`` are text (category features)."""
    return [f for f in spec.features if f in df.columns and not pd.api.types.is_numeric_dtype(df[f])]


def check_schema(spec: ModelSpec, manifest: dict, version: str) -> None:
    """Refuse a spec that the curated version's schema cannot train: a feature or the target it lacks, a
    feature that is neither a number nor text (a category), or a target that is not a number
    (``DataValidationError`` naming them, the columns it has and what to change). What ``spec check``, the
    trigger and the split step check before any training."""
    columns = {c["name"]: str(c.get("dtype", "")) for c in manifest["columns"]}
    where = f"dataset {spec.dataset!r} version {version}"
    missing = [c for c in (*spec.features, spec.target) if c not in columns]
    if missing:
        kind = "target" if missing == [spec.target] else "feature(s)"
        raise DataValidationError(
            f"model spec {spec.name!r}: {kind} {missing} not in {where}; its columns are {list(columns)}; "
            "fix features/target in model.yaml",
            [{"column": c, "problem": "missing"} for c in missing],
        )
    if not _numeric(columns[spec.target]):
        raise DataValidationError(
            f"model spec {spec.name!r}: target {spec.target!r} of {where} is {columns[spec.target]}, not a number; "
            "a regression model predicts a numeric column: fix target in model.yaml",
            [{"column": spec.target, "problem": f"dtype {columns[spec.target]}"}],
        )
    bad = {c: columns[c] for c in spec.features if not (_numeric(columns[c]) or _text(columns[c]))}
    if bad:
        listed = ", ".join(f"{c} ({t})" for c, t in bad.items())
        raise DataValidationError(
            f"model spec {spec.name!r}: column(s) {listed} of {where} are neither numbers nor text (categories); "
            "drop them from features in model.yaml or have the dataset's feature step turn them into either",
            [{"column": c, "problem": f"dtype {t}"} for c, t in bad.items()],
        )


def check_data(spec: ModelSpec, df: pd.DataFrame, dataset_version: str = "") -> None:
    """Every feature and the target exist; the target and numeric features are finite numbers, text features
    (categories) have a value in every row; enough rows to split."""
    where = f"dataset {spec.dataset!r}" + (f" version {dataset_version}" if dataset_version else "")
    missing = [c for c in (*spec.features, spec.target) if c not in df.columns]
    if missing:
        kind = "target" if missing == [spec.target] else "feature(s)"
        raise DataValidationError(
            f"model spec {spec.name!r}: {kind} {missing} not in {where}; its columns are {list(df.columns)}",
            [{"column": c, "problem": "missing"} for c in missing],
        )
    if not pd.api.types.is_numeric_dtype(df[spec.target]):
        raise DataValidationError(f"model spec {spec.name!r}: target {spec.target!r} of {where} is not numeric")
    text = text_features(spec, df)
    cols = [c for c in (*spec.features, spec.target) if c not in text]
    if not np.isfinite(df[cols].to_numpy(dtype="float64")).all():
        raise DataValidationError(f"model spec {spec.name!r}: {where} has NaN or infinite values in {cols}")
    empty = [c for c in text if df[c].isna().any()]
    if empty:
        raise DataValidationError(f"model spec {spec.name!r}: {where} has rows without a value in {empty}")
    if len(df) < 10:
        raise DataValidationError(f"model spec {spec.name!r}: {where} has {len(df)} rows; at least 10 are needed")


def split(spec: ModelSpec, df: pd.DataFrame, id_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows): features and target as float64, text features as strings (and the id
    column, when given), split by the stable hash of the id column or of the row (``kfrelease.training.holdout``)."""
    cols = [*spec.features, spec.target]
    frame = typed(df, cols)
    if id_column:
        frame.insert(0, id_column, df[id_column].to_numpy())
    return rule_for(spec, id_column).split(frame)


def fit(spec: ModelSpec, train_df: pd.DataFrame):
    """A fresh estimator of the spec fitted on ``train_df`` (the spec's seed where it takes one); (model, seconds)."""
    estimator = spec.build_estimator()  # ConfigError for unknown estimator / invalid hyper-parameters
    if hasattr(estimator, "random_state") and getattr(estimator, "random_state", None) is None:
        try:
            estimator.set_params(random_state=spec.split.seed)
        except ValueError:
            pass
    start = time.perf_counter()
    with native_threads():
        estimator.fit(train_df[list(spec.features)], train_df[spec.target])
    seconds = time.perf_counter() - start
    log.info("fitted %s on %d rows in %.3f s", type(estimator).__name__, len(train_df), seconds)
    return estimator, seconds


def train(spec: ModelSpec, df: pd.DataFrame, dataset_version: str = "", id_column: str | None = None) -> TrainResult:
    """Check the spec against the data, split, fit: in one process (experiments, tests; the pipeline splits in
    a trusted step and fits in the untrusted one). Nothing is fitted on bad input."""
    spec.build_estimator()
    check_data(spec, df, dataset_version)
    train_df, test_df = split(spec, df, id_column)
    model, seconds = fit(spec, train_df)
    return TrainResult(model, train_df, test_df, seconds)


def predict(model, frame: pd.DataFrame, features) -> np.ndarray:
    with native_threads():
        return np.asarray(model.predict(typed(frame, list(features))), dtype="float64").ravel()


def native_threads():
    """OpenMP and BLAS thread pools limited to the cores this step is given (``kfrelease.serving.threads``:
    ``OMP_NUM_THREADS``, else the cgroup's CPU quota, else 1) while a model fits or predicts. With a thread per
    visible core on a busy machine, HistGradientBoosting's threads mostly wait for each other: fitting 1,600
    diamonds took 35-345 s at load 17-20 with the default threads, against 0.3 s with one."""
    return threadpool_limits(limits=cores_given())
