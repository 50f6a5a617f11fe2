"""The model artifact format: what a registered version's folder holds and how it is read back.

A version's artifact (``s3://models/artifacts/<model>/<V>/``, a ModelCar's ``/models``, a local download) is
one folder with two files: the fitted model in its flavour's file, and ``model.json``, the registry entry
(``input_schema``, ``version``, ...). The flavour is named in the entry (``artifact.flavour``; entries
written before flavours existed are ``sklearn``) and the ``FLAVOURS`` table says, per flavour, the file
name and how to write and read it: the registry, the training steps and the predictor all go through this
table, so another model flavour is one entry here.

``load_model_dir`` reads a folder into a ``LoadedModel`` (the estimator, the entry, the feature order) and
checks it; errors name the file and what is wrong with it.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kfrelease.config import setting
from kfrelease.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

#: The registry entry inside every artifact folder.
ENTRY_FILE = "model.json"
INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


def _joblib_dump(model: Any, path: str | Path) -> None:
    import joblib

    joblib.dump(model, path)


def _joblib_load(source) -> Any:
    import joblib

    return joblib.load(source)


@dataclass(frozen=True)
class Flavour:
    """One kind of model file: its name in the artifact folder and how to write and read it."""

    name: str
    file: str
    dump: Callable[[Any, str | Path], None]
    load: Callable[[Any], Any]  # a path or a binary file object -> the model


FLAVOURS: dict[str, Flavour] = {
    "sklearn": Flavour("sklearn", "model.joblib", _joblib_dump, _joblib_load),
}
DEFAULT_FLAVOUR = "sklearn"


def flavour_named(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ConfigError(f"model flavour {name!r} is not known; known: {', '.join(sorted(FLAVOURS))}") from None


def flavour_of(entry: dict) -> Flavour:
    """The flavour a registry entry names (``artifact.flavour``; ``sklearn`` when it names none)."""
    return flavour_named(str((entry.get("artifact") or {}).get("flavour") or DEFAULT_FLAVOUR))


def artifact_files(flavour: str = DEFAULT_FLAVOUR) -> list[str]:
    """The files of an artifact folder of ``flavour``: the model file, then the entry."""
    return [flavour_named(flavour).file, ENTRY_FILE]


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds an entry and the model file its flavour names."""
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        return (folder / flavour_of(entry).file).is_file()
    except (OSError, ValueError, ConfigError):
        return False


# --- reading a folder for serving -----------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A version ready to predict: the estimator, its entry and the feature order of its input schema."""

    estimator: Any
    entry: dict
    name: str
    version: str
    features: tuple[str, ...]
    dtypes: tuple[str, ...]
    path: Path
    fast: Any = None  # the estimator without its fitted column names (see ``fast_estimator``), or None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The estimator's predictions on a float64 matrix in schema order (same call as training's).

        Callers check every value finite first, so scikit-learn's own finiteness scan is skipped for this
        call only (``config_context``, not a process-wide setting)."""
        if self.fast is None:
            return self.predict_frame(rows)
        import numpy as np
        import sklearn

        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.fast.predict(rows), dtype="float64").ravel()

    def predict_frame(self, rows: np.ndarray) -> np.ndarray:
        import numpy as np
        import pandas as pd

        frame = pd.DataFrame(rows, columns=list(self.features), copy=False)
        return np.asarray(self.estimator.predict(frame), dtype="float64").ravel()


def _forget_feature_names(estimator, seen: set[int]) -> None:
    if id(estimator) in seen:
        return
    seen.add(id(estimator))
    if "feature_names_in_" in getattr(estimator, "__dict__", {}):
        del estimator.feature_names_in_
    for value in getattr(estimator, "__dict__", {}).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            for part in item if isinstance(item, tuple) else (item,):
                if hasattr(part, "predict") or hasattr(part, "transform"):
                    _forget_feature_names(part, seen)


def fast_estimator(estimator, features: tuple[str, ...]):
    """A copy of ``estimator`` that takes the float64 matrix directly, or None.

    scikit-learn checks a DataFrame's column names against the fitted ones on every call (about 0.5 ms for
    one row, most of a request's cost). The predictor has already checked every request against the input
    schema and ordered the values by it, so when the estimator was fitted on exactly these columns in this
    order, the copy without ``feature_names_in_`` gets the same numbers. A probe at load time must give
    bit-identical answers on both paths (batches of 1 and 64, no warning), else the DataFrame path is kept.
    """
    import numpy as np

    names = getattr(estimator, "feature_names_in_", None)
    if names is None or [str(n) for n in names] != list(features):
        return None
    try:
        fast = copy.deepcopy(estimator)
        _forget_feature_names(fast, set())
        probe = np.random.default_rng(0).normal(0.0, 10.0, size=(64, len(features)))
        slow = LoadedModel(estimator, {}, "", "", features, (), Path("."))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for rows in (probe[:1], probe):
                got = np.asarray(fast.predict(rows), dtype="float64").ravel()
                if not np.array_equal(got, slow.predict_frame(rows), equal_nan=True):
                    return None
    except Exception as exc:  # noqa: BLE001 - any doubt keeps the DataFrame path
        log.info("fast path not used for this estimator: %s", exc)
        return None
    return fast


def _read_entry(path: Path) -> dict:
    try:
        entry = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    schema = entry.get("input_schema") if isinstance(entry, dict) else None
    if not isinstance(schema, list) or not schema or not all(isinstance(c, dict) and c.get("name") for c in schema):
        raise ConfigError(f"{path}: input_schema must be a non-empty list of {{name, dtype}}")
    unknown = sorted({str(c.get("dtype", "float64")) for c in schema} - INT_DTYPES - FLOAT_DTYPES)
    if unknown:
        raise ConfigError(f"{path}: input_schema dtypes {unknown} are not numeric; the predictor serves numbers")
    return entry


def load_model_dir(path: str | Path, expected_name: str | None = None) -> LoadedModel:
    """Read an artifact folder (its entry, then the model file its flavour names); errors say which file is
    wrong and how."""
    d = Path(path)
    entry_path = d / ENTRY_FILE
    if not entry_path.is_file():
        raise ConfigError(
            f"model directory {d} has no {ENTRY_FILE}; it needs {' and '.join(artifact_files())} "
            f"(`kfrelease models download` or the registry's download() writes both)"
        )
    entry = _read_entry(entry_path)
    flavour = flavour_of(entry)
    model_path = d / flavour.file
    if not model_path.is_file():
        raise ConfigError(
            f"model directory {d} has no {flavour.file}; it needs {' and '.join(artifact_files(flavour.name))} "
            f"(`kfrelease models download` or the registry's download() writes both)"
        )
    name = str(entry.get("name") or "")
    if expected_name and name and name != expected_name:
        raise ConfigError(f"{entry_path} is model {name!r}, but the predictor was asked to serve {expected_name!r}")
    try:
        estimator = flavour.load(model_path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad model file
        raise ConfigError(
            f"{model_path} could not be loaded as a {flavour.name} model: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(estimator, "predict"):
        raise ConfigError(f"{model_path} holds a {type(estimator).__name__}, which has no predict()")
    schema = entry["input_schema"]
    features = tuple(str(c["name"]) for c in schema)
    return LoadedModel(
        estimator=estimator,
        entry=entry,
        name=name or (expected_name or d.name),
        version=str(entry.get("version") or setting("KFRELEASE_MODEL_VERSION") or "unknown"),
        features=features,
        dtypes=tuple(str(c.get("dtype", "float64")) for c in schema),
        path=d,
        fast=fast_estimator(estimator, features),
    )
