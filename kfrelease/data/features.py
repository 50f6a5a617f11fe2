"""Feature engineering steps that dataset specs can name (``features: module:function``)."""

from __future__ import annotations

import importlib

import pandas as pd

from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import ConfigError


def diabetes_features(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``bmi_bp`` (BMI x mean blood pressure / 100), a simple interaction the demo model may use."""
    out = df.copy()
    out["bmi_bp"] = out["bmi"] * out["bp"] / 100.0
    return out


def resolve(path: str):
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"feature step {path!r} must be 'module.path:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"feature step {path!r} cannot be imported: {exc}") from None


def apply_features(df: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """Run the spec's feature step, if any; it must keep every row."""
    if not spec.features:
        return df
    out = resolve(spec.features)(df)
    if not isinstance(out, pd.DataFrame) or len(out) != len(df):
        raise ConfigError(f"feature step {spec.features} must return a DataFrame with the same {len(df)} rows")
    return out
