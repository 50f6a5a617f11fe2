"""Feature engineering steps that dataset specs can name (``features: module:function``).

A step takes a DataFrame of validated rows and returns it with engineered columns. It is applied to each
batch of rows (``features_to_file``), so it must compute a row from that row alone (as ``diabetes_features``
does): a batch holds about a hundred thousand rows, never the whole dataset.

Where the module is found (``resolve``): an installed module first (e.g. ``kfrelease.data.features``), else
``<module>.py`` (or a package folder) beside the dataset spec file, else in the current folder, the model
project the command runs in. No ``PYTHONPATH`` is needed; on the cluster the module must be installed in the
project image.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path

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


def resolve(path: str, search: Iterable[str | Path] = ()):
    """The function a ``module:function`` names; ``search``: folders to look in (the dataset spec's), then the
    current folder (see the module docstring)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"feature step {path!r} must be 'module.path:function'")
    folders = [Path(f).resolve() for f in search if f] + [Path.cwd()]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0]:  # the step's own module imports something missing
            raise ConfigError(f"feature step {path!r} cannot be imported: {exc}") from None
        module = _from_folders(path, module_name, folders)
    except Exception as exc:  # noqa: BLE001 - any error in the step's own code becomes one clear message
        raise ConfigError(f"feature step {path!r} failed to load: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"feature step {path!r}: {module.__file__} defines no function {attr!r}")
    return fn


def _from_folders(path: str, module_name: str, folders: list[Path]):
    parts = module_name.split(".")
    wanted = [Path(*parts).with_suffix(".py"), Path(*parts) / "__init__.py"]
    for folder in folders:
        if any((folder / w).is_file() for w in wanted):
            sys.path.insert(0, str(folder))
            try:
                importlib.invalidate_caches()
                return importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    f"feature step {path!r}: {folder / wanted[0]} failed to load: {type(exc).__name__}: {exc}"
                ) from None
            finally:
                sys.path.remove(str(folder))
    where = " or ".join(str(f) for f in folders)
    raise ConfigError(
        f"feature step {path!r} cannot be imported: no module {module_name!r} installed, and no {wanted[0]} in "
        f"{where}; put it beside the dataset spec file or in the model project (docs/data-engineer.md#feature-steps)"
    )


def apply_features(df: pd.DataFrame, spec: DatasetSpec, search: Iterable[str | Path] = ()) -> pd.DataFrame:
    """Run the spec's feature step, if any; it must keep every row."""
    if not spec.features:
        return df
    out = resolve(spec.features, search)(df)
    if not isinstance(out, pd.DataFrame) or len(out) != len(df):
        raise ConfigError(f"feature step {spec.features} must return a DataFrame with the same {len(df)} rows")
    return out


def features_to_file(
    spec: DatasetSpec, valid: str | Iterable[pd.DataFrame], out_path: str, search: Iterable[str | Path] = ()
) -> Written:
    """The rows to publish: the valid rows (a file of ``validate.validate_to_files``, or batches in their final
    dtypes) through the feature step a batch at a time, without the meta columns, written to ``out_path`` and
    hashed on the way (the version's content). ``search``: folders where the step's module may be (``resolve``)."""
    writer = FeatureWriter(spec, out_path, search)
    try:
        for batch in read_frames(valid) if isinstance(valid, str) else valid:
            writer.write(batch)
    except BaseException:
        writer.discard()
        raise
    return writer.close()


class FeatureWriter:
    """The feature step and the file to publish: each batch of valid rows (final dtypes) in, its engineered rows
    (meta columns left out) written and hashed."""

    def __init__(self, spec: DatasetSpec, out_path: str, search: Iterable[str | Path] = ()):
        self.spec, self.search = spec, tuple(search)
        what = f"the feature step {spec.features}" if spec.features else "the valid rows"
        self.writer = FrameWriter(out_path, what=what)

    def write(self, batch: pd.DataFrame) -> None:
        out = apply_features(batch, self.spec, self.search)
        self.writer.write(out.drop(columns=[c for c in META_COLUMNS if c in out.columns]).reset_index(drop=True))

    def discard(self) -> None:
        self.writer.discard()

    def close(self, empty: pd.DataFrame | None = None) -> Written:
        """The file written; ``empty`` (the valid rows' columns, no row) runs the step once when no batch came, so
        that a version of no rows has the columns and dtypes of the step's output."""
        if self.writer.template is None and empty is not None:
            self.write(empty)
        return self.writer.close()
