"""Feature engineering steps that dataset specs can name (``features: module:function``).

A step takes a DataFrame of validated rows and returns it with engineered columns. It is applied to each
batch of rows (``features_to_file``), so it must compute a row from that row alone (as ``diabetes_features``
does): a batch holds about a hundred thousand rows, never the whole dataset.
"""

from __future__ import annotations

import importlib

import pandas as pd

from kfrelease.data.frames import FrameWriter, Written, read_frames
from kfrelease.data.ingest import META_COLUMNS
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


def features_to_file(spec: DatasetSpec, valid_path: str, out_path: str) -> Written:
    """The rows to publish: the valid rows (``validate.validate_to_files``) through the feature step a batch at a
    time, without the meta columns, written to ``out_path`` and hashed on the way (the version's content)."""
    what = f"the feature step {spec.features}" if spec.features else "the valid rows"
    writer = FrameWriter(out_path, what=what)
    try:
        for batch in read_frames(valid_path):
            out = apply_features(batch, spec)
            writer.write(out.drop(columns=[c for c in META_COLUMNS if c in out.columns]).reset_index(drop=True))
    except BaseException:
        writer.discard()
        raise
    return writer.close()
