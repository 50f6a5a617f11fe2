"""The model artifact format: a registered version's folder, its input schema and the model flavours.

A version's artifact folder (``s3://models/artifacts/<model>/<V>/``, a ModelCar's ``/models``, a local download)
holds ``model.json`` (the registry entry: ``input_schema``, ``version``, ``artifact``) and the model file of
each flavour it was registered with. ``artifact.flavour`` names the *served* flavour (entries written before
flavours existed are ``sklearn``); ``artifact.flavours`` says, per flavour, its file and how it was verified;
``artifact.fallback`` says why a version serves ``sklearn`` when a faster flavour was tried and refused.

A flavour is one entry of ``FLAVOURS``: its file, how it is written from the fitted estimator (``dump``), read
(``load``) and asked for predictions on a typed frame (``predict``), the KServe ``modelFormat`` it is served
as and the KFP framework label of its artifact. Whether loading it runs code is part of the entry: a trusted
step loads only flavours that run none (``runs_code``; ONNX is a protobuf graph, a pickle is a program).

- ``sklearn``: the fitted estimator, pickled (joblib). The reference: every other flavour is verified against
  its predictions. Read only inside the untrusted identity and by model servers that have nothing better.
- ``onnx``: the estimator converted with skl2onnx (float32 inputs: the converters' own type; skl2onnx fails
  to load a PolynomialFeatures pipeline built for float64), run by ONNX Runtime with one intra-op thread.
  Loading it runs no code.

The input schema (``input_schema``: ``{name, dtype}`` per feature, in the order the model takes them) holds
numbers (``float64``, ``int64``, ...) and categories (``category`` or ``string``, with ``categories``: the
known values, and ``unknown``: ``refuse``, the default, answers a value outside them with a 400; ``pass``
hands it to the model, e.g. a ``OneHotEncoder(handle_unknown="ignore")``). A request's checked rows are a
float64 matrix when every feature is a number, else an object matrix of Python floats and strings, always in
schema order; ``frame`` turns either into the typed DataFrame the model was fitted on.

``convert_flavours`` (where the fitted estimator is in memory: the untrusted train step) writes each flavour
that applies and checks it on the held-out rows; ``verify_flavour`` re-checks a flavour that runs no code
against the predictions the evaluation used (trusted: registration); ``choose_flavour`` picks the fastest
verified one. ``load_model_dir`` reads a folder into a ``LoadedModel``; errors name the file and what is wrong.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threadpoolctl import threadpool_limits

from kfrelease.config import setting
from kfrelease.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

#: The registry entry inside every artifact folder.
ENTRY_FILE = "model.json"
INT_DTYPES = frozenset({"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"})
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
#: Text features: ``category`` (known values declared) and ``string`` (known values optional).
CATEGORY_DTYPES = frozenset({"category", "string"})
#: What the predictor does with a category value outside the known ones: 400 (default) or hand it to the model.
UNKNOWN_POLICIES = ("refuse", "pass")
#: Default agreement a converted flavour must reach on the held-out rows (see ``agreement``).
DEFAULT_TOLERANCE = 1e-4
#: ``model.yaml``'s choice: the fastest verified flavour, or one flavour by name (falling back to sklearn).
AUTO = "auto"


# --- the input schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One feature of an input schema."""

    name: str
    dtype: str
    categories: tuple[str, ...] = ()  # the known values of a category feature (empty: any text)
    unknown: str = "refuse"  # a value outside ``categories``: refused (400) or passed to the model

    @property
    def numeric(self) -> bool:
        return self.dtype not in CATEGORY_DTYPES

    @cached_property
    def known(self) -> frozenset[str]:
        """The known values as a set (empty: any text is accepted)."""
        return frozenset(self.categories)

    @property
    def integral(self) -> bool:
        return self.dtype in INT_DTYPES

    def known_values(self, most: int = 30) -> str:
        """The known values for an error message (at most ``most``, then how many more)."""
        shown = ", ".join(repr(v) for v in self.categories[:most])
        more = len(self.categories) - most
        return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"

    def as_dict(self) -> dict:
        doc: dict = {"name": self.name, "dtype": self.dtype}
        if not self.numeric:
            doc["categories"] = list(self.categories)
            doc["unknown"] = self.unknown
        return doc


def input_columns(schema, where: str = "input_schema") -> tuple[Column, ...]:
    """The checked columns of an ``input_schema`` list; ConfigError naming ``where`` and the fix otherwise."""
    if not isinstance(schema, list) or not schema:
        raise ConfigError(f"{where} must be a non-empty list of {{name, dtype}}")
    columns, seen = [], set()
    for i, c in enumerate(schema):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            raise ConfigError(f"{where}[{i}] must be a mapping with a non-empty 'name' and a 'dtype'")
        name, dtype = c["name"], str(c.get("dtype", "float64"))
        if name in seen:
            raise ConfigError(f"{where}[{i}]: feature {name!r} appears twice")
        seen.add(name)
        if dtype not in INT_DTYPES | FLOAT_DTYPES | CATEGORY_DTYPES:
            raise ConfigError(
                f"{where}[{i}] ({name!r}): dtype {dtype!r} is not served; use a number type (float64, int64, ...) "
                f"or category / string"
            )
        categories = c.get("categories") or []
        unknown = str(c.get("unknown") or "refuse")
        if dtype in CATEGORY_DTYPES:
            if not isinstance(categories, list) or not all(isinstance(v, str) for v in categories):
                raise ConfigError(f"{where}[{i}] ({name!r}): categories must be a list of strings")
            if len(set(categories)) != len(categories):
                raise ConfigError(f"{where}[{i}] ({name!r}): categories repeat a value")
            if dtype == "category" and not categories:
                raise ConfigError(f"{where}[{i}] ({name!r}): a category feature needs its known values (categories)")
            if unknown not in UNKNOWN_POLICIES:
                raise ConfigError(f"{where}[{i}] ({name!r}): unknown must be one of {list(UNKNOWN_POLICIES)}")
        elif categories:
            raise ConfigError(f"{where}[{i}] ({name!r}): only category and string features have categories")
        columns.append(Column(name, dtype, tuple(categories), unknown))
    return tuple(columns)


def declared_categories(schema) -> dict[str, tuple[str, ...]]:
    """Feature name -> known values of each categorical feature of an ``input_schema`` that declares them:
    the slices of that feature in the release gates (``kfrelease.release.decision.slice_family``)."""
    return {c.name: c.categories for c in input_columns(schema) if not c.numeric and c.categories}


def frame(rows, columns: Sequence[Column]) -> pd.DataFrame:
    """Checked rows (schema order) -> the typed DataFrame a model is fitted on: numbers as float64, categories
    as Python strings (object); a DataFrame is taken in schema order and typed the same way."""
    import numpy as np  # heavy: numpy
    import pandas as pd  # heavy: pandas

    names = [c.name for c in columns]
    if isinstance(rows, pd.DataFrame):
        rows = rows[names]
        return pd.DataFrame(
            {c.name: rows[c.name].astype("float64" if c.numeric else object) for c in columns}, index=rows.index
        )
    rows = np.asarray(rows)
    if rows.dtype != object:
        return pd.DataFrame(rows, columns=names, copy=False)
    return pd.DataFrame({c.name: rows[:, j].astype("float64" if c.numeric else object) for j, c in enumerate(columns)})


def row_matrix(data: pd.DataFrame, columns: Sequence[Column]) -> np.ndarray:
    """A typed frame -> checked-rows form (float64 matrix, or object matrix when any feature is a category)."""
    import numpy as np  # heavy: numpy

    if all(c.numeric for c in columns):
        return data[[c.name for c in columns]].to_numpy("float64")
    out = np.empty((len(data), len(columns)), dtype=object)
    for j, c in enumerate(columns):
        values = data[c.name]
        out[:, j] = values.to_numpy("float64") if c.numeric else values.astype(object).to_numpy()
    return out


# --- flavours -------------------------------------------------------------------------------------------


def _source(source) -> Any:
    """A path, bytes or a binary file object -> something joblib / ONNX Runtime read."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _sklearn_dump(estimator: Any, path: str | Path, sample: pd.DataFrame | None = None) -> None:
    """Written with ``cloudpickle`` (a pickle ``joblib.load`` reads): classes a model project defines in its
    ``build:`` code are not importable anywhere else, so they travel with the model by value."""
    import cloudpickle  # heavy: cloudpickle

    with open(path, "wb") as fh:
        cloudpickle.dump(estimator, fh, protocol=5)


class PickleRefused(ConfigError):
    """A process that must run no model code (``KFRELEASE_REFUSE_PICKLE``) was asked to unpickle a model."""


def refuse_pickle_here() -> None:
    """Raise ``PickleRefused`` in a process that runs no model code: a trusted pipeline step or a release step
    (``KFRELEASE_REFUSE_PICKLE``, set on those tasks by the pipelines): a pickle runs code when it is read."""
    if setting("KFRELEASE_REFUSE_PICKLE"):
        raise PickleRefused(
            "this process runs no model code (KFRELEASE_REFUSE_PICKLE): a pickled model is read only by the "
            "untrusted steps (train, score-champion) and the embedded stack's model servers; a cluster serves a "
            "version's ONNX or booster file"
        )


#: Where model servers refuse pickles (``KFRELEASE_TARGET``): DESIGN's "the scikit-learn pickle only where the
#: model's own code runs anyway", per target. On a cluster a predictor's identity (its pod's service account, the
#: peer identity Istio gives every container of the pod) is what the log sink trusts: the KServe agent's events
#: carry nothing but attributes (kserve/kserve@v0.20.0 ``pkg/logger/worker.go``), so code running in a predictor
#: could post any model's, stage's and version's events, i.e. write the shadow gate's and the canary's evidence.
#: The model's own code runs there nowhere else (train and score-champion run as the untrusted identity, which
#: reaches no sink), so its predictors read no pickle and a version served from one is not staged. On the
#: embedded stack every process runs as the machine's one user, and the merge's ``train`` step already runs the
#: same code with every credential file readable (docs/platform-engineer-eks.md): a pickle in a local model
#: server adds nothing that code could not do, so the pickle serves there as the fallback.
PICKLE_REFUSING_TARGETS = frozenset({"cluster"})


def model_servers_refuse_pickles(target: str | None = None) -> bool:
    """True when the model servers of ``target`` (default: this process's ``KFRELEASE_TARGET``) refuse pickles."""
    return (target if target is not None else setting("KFRELEASE_TARGET") or "embedded") in PICKLE_REFUSING_TARGETS


def refuse_pickle_serving(entry: dict, what: str, outcome: str = "it is not staged", target: str | None = None) -> None:
    """ConfigError when ``what`` (``<model> <V>``, its registry ``entry``) would be served from a flavour whose
    loading runs code on a target whose model servers refuse pickles (``model_servers_refuse_pickles``); the
    message says the ``outcome`` (what the caller does not do) and how to make the model servable."""
    flavour = flavour_of(entry)
    if not flavour.runs_code or not model_servers_refuse_pickles(target):
        return
    artifact = entry.get("artifact") or {}
    why = artifact.get("fallback") or artifact.get("served_because") or "no flavour that loads without code verified"
    raise ConfigError(
        f"{what} is served from a pickle ({flavour.name}: {why}); a cluster's model servers refuse pickles (it would "
        f"run the model's code in the identity that writes the gates' evidence), so {outcome}: make the model "
        "convertible (ONNX through skl2onnx, or a bare XGBRegressor / LGBMRegressor for its booster file; "
        "docs/training.md, 'Model flavours') and merge again"
    )


def _joblib_load(source) -> Any:
    import joblib  # heavy: joblib

    refuse_pickle_here()
    model = joblib.load(_source(source))
    if not hasattr(model, "predict"):
        raise ConfigError(f"it holds a {type(model).__name__}, which has no predict()")
    return model


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


class SklearnModel:
    """A fitted scikit-learn estimator and, when it was fitted on exactly the schema's columns in order and
    every feature is a number, a copy that takes the float64 matrix directly (``fast_estimator``)."""

    def __init__(self, estimator, columns: Sequence[Column]):
        self.estimator = estimator
        self.columns = tuple(columns)
        numeric = all(c.numeric for c in self.columns)
        self.fast = fast_estimator(estimator, tuple(c.name for c in self.columns)) if numeric else None

    def predict(self, rows) -> np.ndarray:
        import numpy as np  # heavy: numpy

        if self.fast is not None and isinstance(rows, np.ndarray) and rows.dtype == np.float64:
            import sklearn  # heavy: sklearn

            # callers check every value finite first, so scikit-learn's own scan is skipped for this call only
            with sklearn.config_context(assume_finite=True):
                return np.asarray(self.fast.predict(rows), dtype="float64").ravel()
        return np.asarray(self.estimator.predict(frame(rows, self.columns)), dtype="float64").ravel()


def fast_estimator(estimator, features: tuple[str, ...]):
    """A copy of ``estimator`` that takes the float64 matrix directly, or None.

    scikit-learn checks a DataFrame's column names against the fitted ones on every call (about 0.5 ms for
    one row, most of a request's cost). The predictor has already checked every request against the input
    schema and ordered the values by it, so when the estimator was fitted on exactly these columns in this
    order, the copy without ``feature_names_in_`` gets the same numbers. A probe at load time must give
    bit-identical answers on both paths (batches of 1 and 64, no warning), else the DataFrame path is kept.
    """
    import numpy as np  # heavy: numpy
    import pandas as pd  # heavy: pandas

    names = getattr(estimator, "feature_names_in_", None)
    if names is None or [str(n) for n in names] != list(features):
        return None
    try:
        fast = copy.deepcopy(estimator)
        _forget_feature_names(fast, set())
        probe = np.random.default_rng(0).normal(0.0, 10.0, size=(64, len(features)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for rows in (probe[:1], probe):
                got = np.asarray(fast.predict(rows), dtype="float64").ravel()
                want = np.asarray(estimator.predict(pd.DataFrame(rows, columns=list(features))), dtype="float64")
                if not np.array_equal(got, want.ravel(), equal_nan=True):
                    return None
    except Exception as exc:  # noqa: BLE001 - any doubt keeps the DataFrame path
        log.info("fast path not used for this estimator: %s", exc)
        return None
    return fast


def _onnx_input_types(columns: Sequence[Column], per_column: bool) -> list:
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType  # heavy: skl2onnx

    if not per_column:
        return [("X", FloatTensorType([None, len(columns)]))]
    return [(c.name, FloatTensorType([None, 1]) if c.numeric else StringTensorType([None, 1])) for c in columns]


def _register_booster_converters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM regressors (onnxmltools' converters), so a booster converts alone
    or as the last step of a Pipeline (skl2onnx's documented ``update_registered_converter`` route); a package
    that is not installed is skipped (its models then do not convert, and say so)."""
    if find_spec("onnxmltools") is None:
        return
    from skl2onnx import update_registered_converter  # heavy: skl2onnx
    from skl2onnx.common.shape_calculator import calculate_linear_regressor_output_shapes  # heavy: skl2onnx

    if find_spec("xgboost") is not None:
        # optional: onnxmltools (the boosters extra)
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBRegressor  # optional: xgboost (the boosters extra)

        update_registered_converter(
            XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost
        )
    if find_spec("lightgbm") is not None:
        from lightgbm import LGBMRegressor  # optional: lightgbm (the boosters extra)

        # optional: onnxmltools (the boosters extra)
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )


def _onnx_dump(estimator: Any, path: str | Path, sample: pd.DataFrame | None = None, columns=()) -> None:
    """Convert with skl2onnx (XGBoost and LightGBM regressors through onnxmltools' converters): one float32
    ``[n, k]`` input when every feature is a number and the model takes a matrix; else one input per feature
    (``[n, 1]`` float32 or string), as a ColumnTransformer selects by name."""
    from skl2onnx import convert_sklearn  # heavy: skl2onnx
    from skl2onnx import get_latest_tested_opset_version as latest_opset  # heavy: skl2onnx

    _register_booster_converters()
    numeric = all(c.numeric for c in columns)
    # onnxmltools' tree converters write ai.onnx.ml opset 3 at most; skl2onnx's default ML opset is newer
    booster = booster_flavour(estimator)
    opset = {"": latest_opset(), "ai.onnx.ml": 3} if booster else None
    if booster == "xgboost":  # onnxmltools reads XGBoost's features as f0, f1, ... (the names a matrix gets)
        estimator = copy.deepcopy(estimator)
        final = estimator.steps[-1][1] if getattr(estimator, "steps", None) else estimator
        final.get_booster().feature_names = None
    errors = []
    for per_column in (False, True) if numeric else (True,):
        try:
            onx = convert_sklearn(estimator, initial_types=_onnx_input_types(columns, per_column), target_opset=opset)
        except Exception as exc:  # noqa: BLE001 - the converter's own words are the reason
            errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
            continue
        Path(path).write_bytes(onx.SerializeToString())
        return
    raise ConfigError(
        f"skl2onnx could not convert {type(estimator).__name__}: {'; '.join(dict.fromkeys(errors))[:400]}"
    )


def _bytes_of(source) -> bytes:
    """A path, bytes or a binary file object -> the file's bytes."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "read"):
        return source.read()
    return Path(source).read_bytes()


def _onnx_tensors(model) -> list:
    """Every tensor of an ONNX model: the initializers (dense and sparse) and the tensors in node attributes,
    of the main graph, of every subgraph (If/Loop/Scan bodies) and of every model-local function."""
    from onnx import AttributeProto  # heavy: onnx

    tensors, graphs = [], [model.graph]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            g = graphs.pop()
            tensors.extend(g.initializer)
            for sparse in g.sparse_initializer:
                tensors.extend((sparse.values, sparse.indices))
            nodes.extend(g.node)
            continue
        for attr in nodes.pop().attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                tensors.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
            elif attr.type == AttributeProto.GRAPH:
                graphs.append(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                graphs.extend(attr.graphs)
    return tensors


def refuse_external_data(data: bytes) -> None:
    """ConfigError when an ONNX model's tensors live in files outside it (``data_location: EXTERNAL``, ONNX's
    ``external_data_helper.uses_external_data``): an artifact is one file, and ONNX Runtime would read whatever
    path the model names (``../../etc/...``, another version's files) relative to where it was loaded."""
    import onnx  # heavy: onnx
    from onnx.external_data_helper import uses_external_data  # heavy: onnx

    try:
        model = onnx.load_model_from_string(data)  # parses the protobuf only: external data is never read
    except Exception as exc:  # noqa: BLE001 - not a protobuf: ONNX Runtime's own error says more
        log.debug("not parsed as ONNX before loading: %s", exc)
        return
    external = [t for t in _onnx_tensors(model) if uses_external_data(t)]
    if external:
        where = {e.value for t in external for e in t.external_data if e.key == "location"}
        raise ConfigError(
            f"the ONNX model keeps {len(external)} tensor(s) ({', '.join(sorted(t.name for t in external)[:3])}) "
            f"in external data files ({', '.join(sorted(where)[:3]) or 'unnamed'}); an artifact must hold its "
            "weights inside model.onnx: convert again without external data (onnx.save_model(..., "
            "save_as_external_data=False))"
        )


def _onnx_session(source):
    """An ONNX Runtime session for a model file (path, bytes or binary file object); reading it runs no code.
    A model whose tensors live in external data files is refused (``refuse_external_data``)."""
    import onnxruntime as ort  # heavy: onnxruntime

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    data = _bytes_of(source)
    refuse_external_data(data)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX graph in an ONNX Runtime session (one intra-op and one inter-op thread: a model server answers
    one row per request, and more threads only contend on a shared machine)."""

    def __init__(self, session, columns: Sequence[Column]):
        import numpy as np  # heavy: numpy

        self.session = session
        self._run = session._sess.run
        self.columns = tuple(columns)
        inputs = self.session.get_inputs()
        self.output = [self.session.get_outputs()[0].name]
        names = [i.name for i in inputs]
        self.per_column = names == [c.name for c in self.columns]
        if not self.per_column and len(inputs) != 1:
            raise ConfigError(f"its inputs {names} are neither one matrix nor one input per feature of the schema")
        self.matrix_input = names[0]
        types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}
        self.types = [types.get(i.type, object) for i in inputs]

    def predict(self, rows) -> np.ndarray:
        import numpy as np  # heavy: numpy

        if type(rows) is not np.ndarray:
            rows = row_matrix(rows, self.columns)  # a DataFrame
        if not self.per_column:
            feed = {self.matrix_input: rows.astype(self.types[0])}
        else:
            feed = {c.name: rows[:, j : j + 1].astype(t) for j, (c, t) in enumerate(zip(self.columns, self.types))}
        # the C++ session's run: Session.run only re-checks the feed's names, which are the session's own here
        return self._run(self.output, feed, None)[0].astype("float64").ravel()


# --- native boosters (XGBoost, LightGBM) ----------------------------------------------------------------

#: The native booster flavours: the regressor class each applies to, by (module, class name).
BOOSTERS = {"xgboost": ("xgboost", "XGBRegressor"), "lightgbm": ("lightgbm", "LGBMRegressor")}


def booster_flavour(estimator) -> str | None:
    """``xgboost`` or ``lightgbm`` when ``estimator`` (or a Pipeline's last step) is that package's regressor
    (the package installed), else None."""
    steps = getattr(estimator, "steps", None)
    final = steps[-1][1] if steps else estimator
    for name, (module, cls) in BOOSTERS.items():
        if find_spec(module) is not None and isinstance(final, getattr(import_module(module), cls)):
            return name
    return None


def _bare_booster(estimator, name: str, columns: Sequence[Column]):
    """The fitted regressor whose booster file is written, checked to take the schema's numbers as they come: a
    booster file holds the trees only, so a Pipeline's other steps (encoders, scalers) have no place in it."""
    cls = BOOSTERS[name][1]
    if booster_flavour(estimator) != name:
        raise ConfigError(f"it is a {type(estimator).__name__}, not a {cls}: the {name} flavour is its booster file")
    steps = getattr(estimator, "steps", None)
    if steps and len(steps) > 1:
        before = ", ".join(n for n, _ in steps[:-1])
        raise ConfigError(
            f"the {cls} is the last step of a Pipeline ({before} before it): its booster file holds the trees, not "
            "those steps, so the onnx or sklearn flavour serves it"
        )
    final = steps[-1][1] if steps else estimator
    text = [c.name for c in columns if not c.numeric]
    if text:
        raise ConfigError(f"a booster file takes numbers, and {', '.join(text)} are text: encode them in a Pipeline")
    fitted = [str(n) for n in getattr(final, "feature_names_in_", [])]
    if fitted and fitted != [c.name for c in columns]:
        raise ConfigError(f"it was fitted on columns {fitted}, not the input schema's {[c.name for c in columns]}")
    return final


def _check_booster_features(names: Sequence[str], columns: Sequence[Column], auto: str) -> None:
    """A booster file read for serving takes the schema's numbers in schema order."""
    text = [c.name for c in columns if not c.numeric]
    if text:
        raise ConfigError(f"a booster file takes numbers, and the input schema's {', '.join(text)} are text")
    if len(names) != len(columns):
        raise ConfigError(f"it takes {len(names)} features, the input schema has {len(columns)}")
    generated = [f"{auto}{i}" for i in range(len(names))]
    if list(names) not in ([c.name for c in columns], generated):
        raise ConfigError(f"its features {list(names)} are not the input schema's {[c.name for c in columns]}")


def _xgboost_dump(estimator: Any, path: str | Path, sample: pd.DataFrame | None = None, columns=()) -> None:
    """XGBoost's own UBJSON model file (``Booster.save_raw("ubj")``): trees and parameters, no code."""
    booster = _bare_booster(estimator, "xgboost", columns).get_booster()
    Path(path).write_bytes(bytes(booster.save_raw("ubj")))


def _xgboost_load(source):
    """An XGBoost Booster read from its UBJSON (or JSON) model file; reading it runs no code."""
    import xgboost  # optional: xgboost (the boosters extra)

    booster = xgboost.Booster()
    booster.load_model(bytearray(_bytes_of(source)))
    booster.set_param({"nthread": 1})  # after loading: the file's own configuration replaces earlier parameters
    return booster


class XGBoostModel:
    """An XGBoost Booster answering a float matrix in schema order, on one thread, with the trees the
    regressor's own ``predict`` uses (up to ``best_iteration`` when early stopping kept one)."""

    def __init__(self, booster, columns: Sequence[Column]):
        self.booster = booster
        self.columns = tuple(columns)
        _check_booster_features(booster.feature_names or [f"f{i}" for i in range(booster.num_features())], columns, "f")
        best = booster.attr("best_iteration")
        self.iterations = (0, int(best) + 1) if best is not None else (0, 0)

    def predict(self, rows) -> np.ndarray:
        import numpy as np  # heavy: numpy

        if type(rows) is not np.ndarray:
            rows = row_matrix(rows, self.columns)  # a DataFrame
        got = self.booster.inplace_predict(
            rows.astype("float64", copy=False), iteration_range=self.iterations, validate_features=False
        )
        return np.asarray(got, dtype="float64").ravel()


def _lightgbm_dump(estimator: Any, path: str | Path, sample: pd.DataFrame | None = None, columns=()) -> None:
    """LightGBM's own text model file (``Booster.model_to_string``, the best iteration when one was kept)."""
    booster = _bare_booster(estimator, "lightgbm", columns).booster_
    Path(path).write_text(booster.model_to_string(), encoding="utf-8")


def _lightgbm_load(source):
    """A LightGBM Booster read from its text model file; reading it runs no code."""
    import lightgbm  # optional: lightgbm (the boosters extra)

    return lightgbm.Booster(model_str=_bytes_of(source).decode("utf-8"))  # predict() is given its one thread


class LightGBMModel:
    """A LightGBM Booster answering a float matrix in schema order, on one thread."""

    def __init__(self, booster, columns: Sequence[Column]):
        self.booster = booster
        self.columns = tuple(columns)
        _check_booster_features(booster.feature_name(), columns, "Column_")

    def predict(self, rows) -> np.ndarray:
        import numpy as np  # heavy: numpy

        if type(rows) is not np.ndarray:
            rows = row_matrix(rows, self.columns)  # a DataFrame
        got = self.booster.predict(rows.astype("float64", copy=False), num_threads=1)
        return np.asarray(got, dtype="float64").ravel()


@dataclass(frozen=True)
class Flavour:
    """One kind of model file: where it lives in the artifact folder, how it is written from the fitted
    estimator, read and asked for predictions, and how a cluster serves it."""

    name: str
    file: str
    model_format: str  # the InferenceService's modelFormat.name (and the ServingRuntime's supported format)
    framework: str  # the KFP artifact's ``framework`` metadata
    runs_code: bool  # True when loading the file executes code (a pickle): never in a trusted step
    dump: Callable[..., None]  # (estimator, path, sample frame, columns) -> writes the file
    load: Callable[[Any], Any]  # a path, bytes or binary file object -> the model (estimator, session, ...)
    runner: Callable[[Any, Sequence[Column]], Any]  # (model, columns) -> object with predict(rows or frame)
    packages: tuple[str, ...] = ()  # what must be importable for this flavour

    def predict(self, model, data, columns: Sequence[Column]) -> np.ndarray:
        """The predictions of a loaded ``model`` on a typed frame (or checked rows) of ``columns``, as float64."""
        return self.runner(model, columns).predict(data)

    def available(self) -> bool:
        return all(find_spec(p) is not None for p in self.packages)


FLAVOURS: dict[str, Flavour] = {
    "sklearn": Flavour(
        "sklearn",
        "model.joblib",
        "sklearn",
        "scikit-learn",
        True,
        lambda est, path, sample=None, columns=(): _sklearn_dump(est, path),
        _joblib_load,
        SklearnModel,
        ("sklearn", "joblib"),
    ),
    "onnx": Flavour(
        "onnx",
        "model.onnx",
        "onnx",
        "onnx",
        False,
        _onnx_dump,
        _onnx_session,
        OnnxModel,
        ("onnxruntime", "skl2onnx"),
    ),
    # KServe's own runtimes name these formats the same (kserve/kserve config/runtimes/kserve-xgbserver.yaml
    # and kserve-lgbserver.yaml, supportedModelFormats); the project's ServingRuntime serves them as well.
    "xgboost": Flavour(
        "xgboost",
        "model.ubj",
        "xgboost",
        "xgboost",
        False,
        _xgboost_dump,
        _xgboost_load,
        XGBoostModel,
        ("xgboost",),
    ),
    "lightgbm": Flavour(
        "lightgbm",
        "model.txt",
        "lightgbm",
        "lightgbm",
        False,
        _lightgbm_dump,
        _lightgbm_load,
        LightGBMModel,
        ("lightgbm",),
    ),
}
DEFAULT_FLAVOUR = "sklearn"
#: Flavours tried at registration besides ``sklearn``, in order of preference on a tie (a native booster flavour
#: only for its own regressor: ``booster_flavour``).
CONVERTED = ("onnx", "xgboost", "lightgbm")


def flavour_named(name: str) -> Flavour:
    try:
        return FLAVOURS[name]
    except KeyError:
        raise ConfigError(f"model flavour {name!r} is not known; known: {', '.join(sorted(FLAVOURS))}") from None


def flavour_of(entry: dict) -> Flavour:
    """The flavour a registry entry serves (``artifact.flavour``; ``sklearn`` when it names none)."""
    return flavour_named(str((entry.get("artifact") or {}).get("flavour") or DEFAULT_FLAVOUR))


def model_format(entry: dict) -> str:
    """The KServe ``modelFormat`` name a version is served as (its served flavour's)."""
    return flavour_of(entry).model_format


def model_formats() -> list[str]:
    """Every ``modelFormat`` the project's ServingRuntime serves (one per flavour)."""
    return sorted({f.model_format for f in FLAVOURS.values()})


def artifact_files(flavour: str = DEFAULT_FLAVOUR) -> list[str]:
    """The files of an artifact folder of ``flavour``: the model file, then the entry."""
    return [flavour_named(flavour).file, ENTRY_FILE]


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds an entry and the model file its served flavour names."""
    try:
        entry = json.loads((folder / ENTRY_FILE).read_text())
        return (folder / flavour_of(entry).file).is_file()
    except (OSError, ValueError, ConfigError):
        return False


# --- converting and verifying -------------------------------------------------------------------------


def agreement(got, reference) -> float:
    """How far a flavour's predictions are from the reference's: the largest ``|got - ref| / (|ref| + s)``
    over the rows, ``s`` the spread (standard deviation) of the reference predictions, or 1 when they are all
    equal. 0 is exact; a tolerance of 1e-4 allows 0.01 % of a prediction's size or of the spread."""
    import numpy as np  # heavy: numpy

    got, ref = np.asarray(got, dtype="float64").ravel(), np.asarray(reference, dtype="float64").ravel()
    if got.shape != ref.shape:
        return math.inf
    if not np.isfinite(got).all():
        return math.inf
    spread = float(np.std(ref)) or 1.0
    return float(np.max(np.abs(got - ref) / (np.abs(ref) + spread))) if len(ref) else 0.0


def _per_row_microseconds(model, rows, calls: int = 200, budget: float = 1.0) -> float:
    """The median cost of one single-row ``predict`` (what a model server pays per request), over at most
    ``calls`` calls or ``budget`` seconds, on one thread (as model servers run: OpenMP pools pinned to 1)."""
    times: list[float] = []
    n = len(rows)
    stop = time.perf_counter() + budget
    with threadpool_limits(1):
        for i in range(calls if n else 0):
            row = rows[i % n : i % n + 1]
            t0 = time.perf_counter()
            model.predict(row)
            times.append(time.perf_counter() - t0)
            if t0 > stop and len(times) >= 5:
                break
    return round(statistics.median(times) * 1e6, 1) if times else math.nan


@dataclass
class Verification:
    """How one flavour of a version fared against the reference predictions on the held-out rows."""

    flavour: str
    verified: bool
    tolerance: float
    agreement: float | None = None  # see ``agreement``; None when it was never compared
    rows: int = 0
    convert_seconds: float | None = None
    predict_us: float | None = None  # median single-row predict cost, where measured
    reason: str = ""  # why it is not verified

    def as_dict(self) -> dict:
        doc = {
            "file": flavour_named(self.flavour).file,
            "verified": self.verified,
            "tolerance": self.tolerance,
            "agreement": None if self.agreement is None or math.isinf(self.agreement) else self.agreement,
            "rows": self.rows,
            "convert_seconds": self.convert_seconds,
            "predict_us": self.predict_us,
        }
        if self.reason:
            doc["reason"] = self.reason
        return doc

    def describe(self) -> str:
        if self.verified:
            return f"{self.flavour}: agrees within {self.agreement:.2g} on {self.rows} held-out rows"
        return f"{self.flavour}: {self.reason}"


def verify_flavour(
    name: str,
    source,
    columns: Sequence[Column],
    rows,
    reference,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verification:
    """Load flavour ``name`` from ``source`` (a path or bytes), predict ``rows`` (the held-out features, checked-
    rows form or a DataFrame) and compare with ``reference`` (the predictions the evaluation judged). Refuses a
    flavour whose loading runs code: this is what a trusted step calls."""
    flavour = flavour_named(name)
    if flavour.runs_code:
        raise ConfigError(f"flavour {name!r} runs code when loaded; it is the reference, not something to verify")
    n = len(reference)
    try:
        model = flavour.runner(flavour.load(source), columns)
        got = model.predict(rows)
    except Exception as exc:  # noqa: BLE001 - a file that does not load or run is not verified, and says why
        return Verification(name, False, tolerance, None, n, reason=f"does not run: {type(exc).__name__}: {exc}")
    found = agreement(got, reference)
    if n == 0:
        return Verification(name, False, tolerance, None, 0, reason="no held-out rows to verify it on")
    if not found <= tolerance:
        worst = "not finite or of the wrong length" if math.isinf(found) else f"{found:.3g}"
        return Verification(
            name,
            False,
            tolerance,
            found,
            n,
            reason=f"its predictions differ from scikit-learn's by up to {worst} on {n} held-out rows "
            f"(tolerance {tolerance:g})",
        )
    return Verification(name, True, tolerance, found, n, predict_us=_per_row_microseconds(model, rows))


@dataclass
class Converted:
    """What ``convert_flavours`` made: each flavour's file bytes (None when it could not be made) and its
    verification."""

    files: dict[str, bytes] = field(default_factory=dict)
    checks: dict[str, Verification] = field(default_factory=dict)


def convert_flavours(
    estimator,
    columns: Sequence[Column],
    data: pd.DataFrame,
    wanted: str = AUTO,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Converted:
    """Write every flavour ``wanted`` names (``auto``: each of ``CONVERTED`` whose packages are installed) from
    the fitted ``estimator`` and verify it on ``data`` (the held-out features) against the estimator's own
    predictions. Runs the estimator: call it where the model's code already runs (the untrusted train step).
    The ``sklearn`` file and its single-row cost are always in the result."""
    import numpy as np  # heavy: numpy

    out = Converted()
    rows = row_matrix(data, columns)
    reference = SklearnModel(estimator, columns).predict(rows)
    with tempfile.TemporaryDirectory(prefix="kfrelease-flavours-") as tmp:
        path = Path(tmp) / FLAVOURS["sklearn"].file
        _sklearn_dump(estimator, path)
        out.files["sklearn"] = path.read_bytes()
        ref_model = SklearnModel(estimator, columns)
        out.checks["sklearn"] = Verification(
            "sklearn", True, 0.0, 0.0, len(rows), predict_us=_per_row_microseconds(ref_model, rows)
        )
        booster = booster_flavour(estimator)
        # a native booster flavour is tried for its own regressor only (or said to be impossible when asked for)
        names = [n for n in CONVERTED if wanted == n or (wanted == AUTO and (n not in BOOSTERS or n == booster))]
        for name in names:
            flavour = FLAVOURS[name]
            if not flavour.available():
                out.checks[name] = Verification(
                    name, False, tolerance, reason=f"not installed: needs {', '.join(flavour.packages)}"
                )
                continue
            target = Path(tmp) / flavour.file
            started = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    flavour.dump(estimator, target, data, columns)
            except Exception as exc:  # noqa: BLE001 - an estimator the converter does not know keeps sklearn
                out.checks[name] = Verification(name, False, tolerance, reason=f"conversion failed: {exc}")
                continue
            seconds = round(time.perf_counter() - started, 3)
            check = verify_flavour(name, target.read_bytes(), columns, rows, np.asarray(reference), tolerance)
            check.convert_seconds = seconds
            out.checks[name] = check
            if check.verified:
                out.files[name] = target.read_bytes()
    return out


def _fastest(verified: dict[str, Verification]) -> str:
    """The verified flavour with the lowest single-row cost (unmeasured last; ``sklearn`` loses a tie)."""
    order = {n: i for i, n in enumerate(CONVERTED)}
    return min(
        verified,
        key=lambda n: (verified[n].predict_us or math.inf, n == DEFAULT_FLAVOUR, order.get(n, len(order))),
        default=DEFAULT_FLAVOUR,
    )


def choose_flavour(checks: dict[str, Verification], wanted: str = AUTO) -> tuple[str, str]:
    """The flavour to serve and, when a flavour that was tried is not served because it did not verify, why
    (``kept <served>: <flavour>: <reason>``): the fastest verified flavour that loads without running code, else
    ``sklearn`` (``wanted`` = ``auto``), or the one
    ``wanted`` names when it is verified, else ``sklearn``."""
    verified = {n: c for n, c in checks.items() if c.verified}
    tried = [c for n, c in checks.items() if n != DEFAULT_FLAVOUR and (wanted in (AUTO, n))]
    if wanted == DEFAULT_FLAVOUR:
        return DEFAULT_FLAVOUR, ""
    if wanted != AUTO:
        served = wanted if wanted in verified else DEFAULT_FLAVOUR
    else:  # a pickle serves only when nothing that loads without running code verified (issue 25), whatever it costs
        served = _fastest({n: c for n, c in verified.items() if n != DEFAULT_FLAVOUR} or verified)
    reasons = "; ".join(c.describe() for c in tried if not c.verified)
    return served, (f"kept {served}: {reasons}" if reasons else "")


def served_because(checks: dict[str, Verification], served: str, wanted: str = AUTO) -> str:
    """Why ``served`` is the served flavour, in one line (``models show``): the single-row cost of each verified
    flavour, fastest first, or that ``model.yaml`` named it."""
    if wanted != AUTO:
        return f"model.yaml names flavour {wanted}" + ("" if wanted == served else "; it did not verify")
    costs = sorted(
        ((c.predict_us, n) for n, c in checks.items() if c.verified and c.predict_us is not None),
        key=lambda item: item[0],
    )
    if not costs:
        return f"{served}: the only flavour verified"
    code_free = [(us, n) for us, n in costs if n != DEFAULT_FLAVOUR]
    shown = ", ".join(f"{n} {us:g} µs" for us, n in (code_free or costs))
    if code_free and len(code_free) < len(costs):  # the pickle verified too: it serves only as the fallback
        pickle_us = next(us for us, n in costs if n == DEFAULT_FLAVOUR)
        return (
            f"the fastest verified flavour ({shown} per row; {DEFAULT_FLAVOUR} {pickle_us:g} µs, a pickle, "
            "serves only when nothing that loads without running code verified)"
        )
    return f"the fastest verified flavour ({shown} per row)"


def artifact_record(checks: dict[str, Verification], served: str, fallback: str, wanted: str = AUTO) -> dict:
    """The ``artifact`` fields of a registry entry for these checks (``uri`` is the registry's to add)."""
    kept = {n: c.as_dict() for n, c in checks.items() if c.verified or n != "sklearn"}
    files = sorted({flavour_named(n).file for n, c in checks.items() if c.verified})
    return {
        "flavour": served,
        "flavours": kept,
        "files": [*files, ENTRY_FILE],
        "fallback": fallback or None,
        "served_because": served_because(checks, served, wanted),
        "model_format": flavour_named(served).model_format,
    }


# --- reading a folder for serving -----------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A version ready to predict: its served flavour's model, its entry and its input schema."""

    model: Any  # the flavour's runner for the loaded file (``predict(rows)``)
    flavour: Flavour
    entry: dict
    name: str
    version: str
    columns: tuple[Column, ...]
    path: Path

    @cached_property
    def features(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(c.dtype for c in self.columns)

    @cached_property
    def numeric(self) -> bool:
        """True when every feature is a number (checked rows are a float64 matrix)."""
        return all(c.numeric for c in self.columns)

    @cached_property
    def column_by_name(self) -> dict[str, Column]:
        return {c.name: c for c in self.columns}

    @cached_property
    def integral_positions(self) -> list[int]:
        """The schema positions of integer features (whole numbers only)."""
        return [j for j, c in enumerate(self.columns) if c.integral]

    def categorical_features(self) -> list[str]:
        return [c.name for c in self.columns if not c.numeric]

    @property
    def estimator(self):
        """The fitted scikit-learn estimator (``sklearn`` flavour only)."""
        return getattr(self.model, "estimator", None)

    def predict(self, rows) -> np.ndarray:
        """Predictions for checked rows (schema order; float64 or object matrix) or a DataFrame holding the
        schema's columns, as float64."""
        return self.model.predict(rows)

    predict_frame = predict


def _read_entry(path: Path) -> dict:
    try:
        entry = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"{path} must hold a JSON object (the registry entry)")
    input_columns(entry.get("input_schema"), f"{path}: input_schema")
    return entry


def load_model_dir(path: str | Path, expected_name: str | None = None, flavour: str | None = None) -> LoadedModel:
    """Read an artifact folder (its entry, then the model file of its served flavour, or of ``flavour``);
    errors say which file is wrong and how."""
    d = Path(path)
    entry_path = d / ENTRY_FILE
    if not entry_path.is_file():
        raise ConfigError(
            f"model directory {d} has no {ENTRY_FILE}; it needs {' and '.join(artifact_files())} "
            f"(`kfrelease models download` or the registry's download() writes both)"
        )
    entry = _read_entry(entry_path)
    chosen = flavour_named(flavour) if flavour else flavour_of(entry)
    model_path = d / chosen.file
    if not model_path.is_file():
        raise ConfigError(
            f"model directory {d} has no {chosen.file}; it needs {' and '.join(artifact_files(chosen.name))} "
            f"(`kfrelease models download` or the registry's download() writes both)"
        )
    name = str(entry.get("name") or "")
    if expected_name and name and name != expected_name:
        raise ConfigError(f"{entry_path} is model {name!r}, but the predictor was asked to serve {expected_name!r}")
    columns = input_columns(entry["input_schema"], f"{entry_path}: input_schema")
    try:
        model = chosen.runner(chosen.load(model_path), columns)
    except PickleRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - any loading failure is a bad model file
        raise ConfigError(
            f"{model_path} could not be loaded as a {chosen.name} model: {type(exc).__name__}: {exc}"
        ) from None
    return LoadedModel(
        model=model,
        flavour=chosen,
        entry=entry,
        name=name or (expected_name or d.name),
        version=str(entry.get("version") or setting("KFRELEASE_MODEL_VERSION") or "unknown"),
        columns=columns,
        path=d,
    )
