"""The predictor: a small ``kserve.Model`` for one registered regression model version.

Run it as ``python -m kfrelease.serving.predictor --model-dir DIR --name MODEL --stage production
--http-port P [--logger-url URL] [--cache lru|redis://...]`` (docs/CONTRACTS.md, "Serving processes").
KServe's ``ModelServer`` owns HTTP, the protocols and ``/metrics``; this module owns the model:

- ``load_model_dir``: a model directory (``model.joblib`` + ``model.json``, the registry entry), a ModelCar
  (``/models`` in the image, ``/mnt/models`` in the pod) or ``s3://.../artifacts/<model>/<V>/`` (copied
  once under the data directory).
- ``rows_from_v1`` / ``rows_from_v2``: each request is checked against the entry's ``input_schema``
  (feature names, count, numbers only, finite) and turned into one float64 matrix in schema order; any
  problem is a 400 with a JSON ``error`` saying where and what (``InvalidInput``).
- every answer names the version: header ``x-model-version`` and ``model_version`` in the body; the
  request id (``ce-id``, else ``x-request-id``, else a new uuid) comes back as ``x-request-id``.
- predictions are logged (request + response CloudEvents) by ``InferenceLogger`` off the request path.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from prometheus_client import Counter, Histogram

from kfrelease.config import setting
from kfrelease.errors import ConfigError, KfreleaseError
from kfrelease.serving.slots import STAGES

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); larger ones get 413 before any parsing.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Most instances in one request.
DEFAULT_MAX_INSTANCES = 10_000
#: ModelCar paths: the image holds the model in /models; KServe mounts it at /mnt/models (KServe docs, "Serving models with OCI images").
MODELCAR_DIRS = ("/mnt/models", "/models")

INT_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
FLOAT_DTYPES = {"float16", "float32", "float64"}
V2_FLOAT = {"FP16", "FP32", "FP64"}
V2_INT = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}

REQUESTS = Counter(
    "kfrelease_predictor_requests",
    "Prediction requests answered, by protocol and outcome (ok; invalid: 4xx; error: the model failed, 500).",
    ["model", "version", "stage", "protocol", "outcome"],
)
INSTANCES = Counter(
    "kfrelease_predictor_instances",
    "Instances predicted.",
    ["model", "version", "stage"],
)
LATENCY = Histogram(
    "kfrelease_predictor_request_seconds",
    "Time from a decoded request to its answer (validation, cache, model), seconds.",
    ["model", "version", "stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


class InvalidRequest(KfreleaseError):
    """Raised by the request checks; turned into kserve's ``InvalidInput`` (HTTP 400)."""


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    estimator: Any
    entry: dict
    name: str
    version: str
    features: tuple[str, ...]
    dtypes: tuple[str, ...]
    path: Path
    fast: Any = None  # the estimator without its fitted column names (see ``_fast_estimator``), or None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """The estimator's predictions on a float64 matrix in schema order (same call as training's)."""
        if self.fast is not None:
            return np.asarray(self.fast.predict(rows), dtype="float64").ravel()
        return self.predict_frame(rows)

    def predict_frame(self, rows: np.ndarray) -> np.ndarray:
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


def _fast_estimator(estimator, features: tuple[str, ...]):
    """A copy of ``estimator`` that takes the float64 matrix directly, or None.

    scikit-learn checks a DataFrame's column names against the fitted ones on every call (about 0.5 ms for
    one row, most of a request's cost). The predictor has already checked every request against the input
    schema and ordered the values by it, so when the estimator was fitted on exactly these columns in this
    order, the copy without ``feature_names_in_`` gets the same numbers. A probe at load time must give
    bit-identical answers on both paths (batches of 1 and 64, no warning), else the DataFrame path is kept.
    """
    import copy
    import warnings as _warnings

    names = getattr(estimator, "feature_names_in_", None)
    if names is None or [str(n) for n in names] != list(features):
        return None
    try:
        fast = copy.deepcopy(estimator)
        _forget_feature_names(fast, set())
        rng = np.random.default_rng(0)
        probe = rng.normal(0.0, 10.0, size=(64, len(features)))
        slow_model = LoadedModel(estimator, {}, "", "", features, (), Path("."))
        with _warnings.catch_warnings():
            _warnings.simplefilter("error")
            for rows in (probe[:1], probe):
                got = np.asarray(fast.predict(rows), dtype="float64").ravel()
                if not np.array_equal(
                    got, slow_model.predict_frame(rows), equal_nan=True
                ):
                    return None
    except Exception as exc:  # noqa: BLE001 - any doubt keeps the DataFrame path
        log.info("fast path not used for this estimator: %s", exc)
        return None
    return fast


def load_model_dir(path: str | Path, expected_name: str | None = None) -> LoadedModel:
    """Load ``model.joblib`` and ``model.json`` from a directory; errors say which file is wrong."""
    import joblib

    d = Path(path)
    entry_path, model_path = d / "model.json", d / "model.joblib"
    for p in (entry_path, model_path):
        if not p.is_file():
            raise ConfigError(
                f"model directory {d} has no {p.name}; it needs model.joblib and model.json "
                f"(`kfrelease models download` or the registry's download() writes both)"
            )
    try:
        entry = json.loads(entry_path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{entry_path} is not valid JSON: {exc}") from None
    schema = entry.get("input_schema")
    if (
        not isinstance(schema, list)
        or not schema
        or not all(isinstance(c, dict) and c.get("name") for c in schema)
    ):
        raise ConfigError(
            f"{entry_path}: input_schema must be a non-empty list of {{name, dtype}}"
        )
    dtypes = tuple(str(c.get("dtype", "float64")) for c in schema)
    unknown = sorted(set(dtypes) - INT_DTYPES - FLOAT_DTYPES)
    if unknown:
        raise ConfigError(
            f"{entry_path}: input_schema dtypes {unknown} are not numeric; the predictor serves numbers"
        )
    name = str(entry.get("name") or "")
    if expected_name and name and name != expected_name:
        raise ConfigError(
            f"{entry_path} is model {name!r}, but the predictor was asked to serve {expected_name!r}"
        )
    try:
        estimator = joblib.load(model_path)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad model file
        raise ConfigError(
            f"{model_path} could not be loaded with joblib: {type(exc).__name__}: {exc}"
        ) from None
    if not hasattr(estimator, "predict"):
        raise ConfigError(
            f"{model_path} holds a {type(estimator).__name__}, which has no predict()"
        )
    features = tuple(str(c["name"]) for c in schema)
    return LoadedModel(
        estimator=estimator,
        entry=entry,
        name=name or (expected_name or d.name),
        version=str(
            entry.get("version")
            or setting("KFRELEASE_MODEL_VERSION")
            or "unknown"
        ),
        features=features,
        dtypes=dtypes,
        path=d,
        fast=_fast_estimator(estimator, features),
    )


def resolve_model_dir(source: str, settings=None) -> Path:
    """A local directory for ``source``: a directory, a ModelCar path, or ``s3://models/artifacts/<model>/<V>/``
    (downloaded once into the stack's model cache, ``kfrelease.serving.model_files``)."""
    if source.startswith("s3://"):
        from kfrelease.config import Settings
        from kfrelease.serving.model_files import local_model_dir, parse_artifact_uri

        settings = settings or Settings.from_env()
        return local_model_dir(settings, *parse_artifact_uri(source, settings))
    path = Path(source)
    if path.is_dir():
        return path
    for candidate in MODELCAR_DIRS:  # a ModelCar image mounted where KServe puts it
        if source in MODELCAR_DIRS and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError(
        f"model directory {source} does not exist; pass a directory, /mnt/models or s3://models/artifacts/<model>/<V>/"
    )


# --- request checks ---------------------------------------------------------------------------------


def _number(value, where: str, feature: str, integral: bool) -> float:
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise InvalidRequest(
                f"{where} (feature {feature!r}) is {value}; only finite numbers are accepted"
            )
        if integral and not value.is_integer():
            raise InvalidRequest(
                f"{where} (feature {feature!r}) is {value}; this feature takes whole numbers"
            )
        return value
    if t is int:
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):  # ints beyond float range
            raise InvalidRequest(
                f"{where} (feature {feature!r}) is too large for a float64"
            )
        return f
    kind = (
        "a string"
        if t is str
        else "null"
        if value is None
        else "a boolean"
        if t is bool
        else f"a JSON {t.__name__}"
    )
    raise InvalidRequest(
        f"{where} (feature {feature!r}) is {kind}; expected a finite number"
    )


def rows_from_v1(
    body, model: LoadedModel, max_instances: int = DEFAULT_MAX_INSTANCES
) -> np.ndarray:
    """``{"instances": [[...], ...]}`` or ``{"instances": [{"name": value, ...}, ...]}`` -> float64 matrix."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f'the request body must be a JSON object like {{"instances": [[...]]}}, not a JSON {_json_kind(body)}'
        )
    extra = sorted(set(body) - {"instances", "parameters", "id"})
    if "instances" not in body:
        hint = (
            " (v2 'inputs' go to /v2/models/<name>/infer)" if "inputs" in body else ""
        )
        raise InvalidRequest(
            f"the request has no 'instances' field{hint}; fields given: {sorted(body)}"
        )
    if extra:
        raise InvalidRequest(
            f"unknown field(s) {extra}; a v1 request has 'instances' (and optionally 'parameters')"
        )
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidRequest(
            f"'instances' must be a list, not a JSON {_json_kind(instances)}"
        )
    n, k = len(instances), len(model.features)
    if n == 0:
        raise InvalidRequest("'instances' is empty; send at least one instance")
    if n > max_instances:
        raise InvalidRequest(
            f"'instances' holds {n} instances; at most {max_instances} per request"
        )
    integral = [d in INT_DTYPES for d in model.dtypes]
    fast = _all_numbers(instances, k)
    if fast is not None and (
        not any(integral) or np.all(np.mod(fast[:, integral], 1) == 0)
    ):
        return fast
    # the element-by-element check below finds and names the first bad value
    rows = np.empty((n, k), dtype="float64")
    features = model.features
    for i, inst in enumerate(instances):
        if type(inst) is list:
            if len(inst) != k:
                raise InvalidRequest(
                    f"instances[{i}] has {len(inst)} values; the model takes {k}, in this order: {list(features)}"
                )
            for j in range(k):
                rows[i, j] = _number(
                    inst[j], f"instances[{i}][{j}]", features[j], integral[j]
                )
        elif type(inst) is dict:
            if len(inst) != k or any(f not in inst for f in features):
                missing = [f for f in features if f not in inst]
                unknown = sorted(set(inst) - set(features))
                raise InvalidRequest(
                    f"instances[{i}] does not match the input schema: missing {missing}, unknown {unknown}; "
                    f"expected exactly {list(features)}"
                )
            for j, f in enumerate(features):
                rows[i, j] = _number(inst[f], f"instances[{i}].{f}", f, integral[j])
        else:
            raise InvalidRequest(
                f"instances[{i}] is a JSON {_json_kind(inst)}; each instance is a list of {k} numbers or an "
                f"object with keys {list(features)}"
            )
    return rows


def _json_body(raw: bytes | str):
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def diagnose_v2_body(raw: bytes) -> str:
    """What is wrong with a v2 body that did not parse as an inference request (for the 400 message)."""
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    try:
        doc = _json_body(raw)
    except InvalidRequest as exc:
        return str(exc)
    if not isinstance(doc, dict):
        return f'the request body must be a JSON object like {{"inputs": [...]}}, not a JSON {_json_kind(doc)}'
    if "inputs" not in doc:
        hint = (
            " (v1 'instances' go to /v1/models/<name>:predict)"
            if "instances" in doc
            else ""
        )
        return f"the request has no 'inputs' field{hint}; fields given: {sorted(doc)}"
    try:
        InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        return f"the v2 inference request is malformed: {problems}"
    return "the v2 inference request could not be decoded"


def _json_kind(value) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), "null" if value is None else type(value).__name__)


def _flatten(data, where: str, out: list) -> None:
    for i, v in enumerate(data):
        if type(v) is list:
            _flatten(v, f"{where}[{i}]", out)
        else:
            out.append((v, f"{where}[{i}]"))


_NUMBER_TYPES = frozenset((int, float))


def _all_numbers(instances: list, k: int) -> np.ndarray | None:
    """The float64 matrix when every instance is a list of ``k`` finite JSON numbers (one vectorized pass),
    else None (then the slow check names the first bad value)."""
    try:
        if not all(type(i) is list and len(i) == k for i in instances):
            return None
        if not {type(v) for inst in instances for v in inst} <= _NUMBER_TYPES:
            return None
        rows = np.array(instances, dtype="float64")
    except (OverflowError, ValueError, TypeError):
        return None
    return (
        rows if rows.shape == (len(instances), k) and np.isfinite(rows).all() else None
    )


def _tensor_values(inp, where: str, integral_type: bool) -> list[float] | np.ndarray:
    data = inp.data
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list):
        raise InvalidRequest(f"{where}.data must be a list of numbers")
    kinds = {type(v) for v in data}
    if kinds <= ({int} if integral_type else _NUMBER_TYPES) and kinds:
        try:
            values = np.asarray(data, dtype="float64")
            if np.isfinite(values).all():
                return values
        except OverflowError:
            pass
    flat: list = []
    _flatten(data, f"{where}.data", flat)
    values = []
    for v, w in flat:
        values.append(_number(v, w, inp.name, integral_type))
    return values


def rows_from_v2(
    request, model: LoadedModel, max_instances: int = DEFAULT_MAX_INSTANCES
) -> np.ndarray:
    """Open Inference Protocol inputs -> float64 matrix. Two layouts are accepted:

    - one tensor of shape ``[n, k]`` (or ``[k]`` for one instance) with the features in schema order;
    - one tensor per feature, named after it, each of shape ``[n]`` or ``[n, 1]``.
    """
    inputs = list(request.inputs or [])
    k = len(model.features)
    if not inputs:
        raise InvalidRequest(
            "'inputs' is empty; send one [n, k] tensor or one tensor per feature"
        )
    for idx, inp in enumerate(inputs):
        if inp.datatype not in V2_FLOAT | V2_INT:
            raise InvalidRequest(
                f"inputs[{idx}] ({inp.name!r}) has datatype {inp.datatype!r}; use FP64/FP32 or an INT type"
            )
        shape = inp.shape
        if (
            not isinstance(shape, list)
            or not shape
            or any(type(s) is not int or s < 0 for s in shape)
        ):
            raise InvalidRequest(
                f"inputs[{idx}] ({inp.name!r}) has shape {shape!r}; it must be a list of sizes"
            )
    names = [inp.name for inp in inputs]
    if (
        len(inputs) == 1
        and names[0] not in model.features
        or (len(inputs) == 1 and k == 1 and len(inputs[0].shape) == 2)
    ):
        inp = inputs[0]
        shape = inp.shape
        if len(shape) == 1:
            shape = [1, shape[0]]
        if len(shape) != 2 or shape[1] != k:
            raise InvalidRequest(
                f"inputs[0] ({inp.name!r}) has shape {inp.shape}; expected [n, {k}] with the features in this "
                f"order: {list(model.features)}"
            )
        n = shape[0]
        values = _tensor_values(inp, "inputs[0]", inp.datatype in V2_INT)
        if len(values) != n * k:
            raise InvalidRequest(
                f"inputs[0] ({inp.name!r}) has {len(values)} values; shape {inp.shape} needs {n * k}"
            )
        rows = np.asarray(values, dtype="float64").reshape(n, k)
    else:
        if sorted(names) != sorted(model.features) or len(set(names)) != len(names):
            missing = [f for f in model.features if f not in names]
            unknown = sorted(set(names) - set(model.features))
            raise InvalidRequest(
                f"v2 inputs do not match the input schema: missing {missing}, unknown {unknown}; send one tensor "
                f"named after each of {list(model.features)}, or one [n, {k}] tensor"
            )
        by_name = {inp.name: (i, inp) for i, inp in enumerate(inputs)}
        columns = []
        n = None
        for f in model.features:
            i, inp = by_name[f]
            if not (len(inp.shape) == 1 or (len(inp.shape) == 2 and inp.shape[1] == 1)):
                raise InvalidRequest(
                    f"inputs[{i}] ({f!r}) has shape {inp.shape}; a feature tensor is [n] or [n, 1]"
                )
            if n is None:
                n = inp.shape[0]
            elif inp.shape[0] != n:
                raise InvalidRequest(
                    f"inputs[{i}] ({f!r}) has {inp.shape[0]} rows; the other inputs have {n}"
                )
            values = _tensor_values(inp, f"inputs[{i}]", inp.datatype in V2_INT)
            if len(values) != n:
                raise InvalidRequest(
                    f"inputs[{i}] ({f!r}) has {len(values)} values; shape {inp.shape} needs {n}"
                )
            columns.append(values)
        rows = np.asarray(columns, dtype="float64").T.reshape(n, k)
    if rows.shape[0] == 0:
        raise InvalidRequest("the request holds no instances; send at least one")
    if rows.shape[0] > max_instances:
        raise InvalidRequest(
            f"the request holds {rows.shape[0]} instances; at most {max_instances} per request"
        )
    for j, d in enumerate(model.dtypes):
        if d in INT_DTYPES and not np.all(np.mod(rows[:, j], 1) == 0):
            raise InvalidRequest(f"feature {model.features[j]!r} takes whole numbers")
    return rows


# --- the kserve model ----------------------------------------------------------------------------


def request_id_from(headers: dict | None) -> str:
    """The gateway's id (``ce-id`` then ``x-request-id``), else a new one."""
    if headers:
        for name in ("ce-id", "x-request-id"):
            value = headers.get(name)
            if value:
                return value[:200]
    return uuid.uuid4().hex


@dataclass
class _Decoded:
    rows: np.ndarray
    protocol: str  # "v1" | "v2"
    request_id: str
    v2_id: str | None = None


@functools.lru_cache(maxsize=1)
def make_predictor_class():
    """The ``kserve.Model`` subclass (built on first use so that importing this module stays cheap)."""
    from kserve import Model
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferRequest

    class RegressionPredictor(Model):
        """One model version. ``load()`` reads the directory; ``predict()`` checks, caches, predicts, logs."""

        def __init__(
            self,
            name: str,
            model_dir: Path,
            stage: str = "production",
            logger=None,
            cache=None,
            max_instances: int = DEFAULT_MAX_INSTANCES,
        ):
            super().__init__(name, return_response_headers=True)
            self.model_dir = Path(model_dir)
            self.stage = stage
            self.logger = logger
            self.cache = cache
            self.max_instances = max_instances
            self.model: LoadedModel | None = None

        def load(self) -> bool:
            self.model = load_model_dir(self.model_dir, expected_name=self.name)
            m = self.model
            self._ok = {
                p: REQUESTS.labels(m.name, m.version, self.stage, p, "ok")
                for p in ("v1", "v2")
            }
            self._invalid = {
                p: REQUESTS.labels(m.name, m.version, self.stage, p, "invalid")
                for p in ("v1", "v2")
            }
            self._error = {
                p: REQUESTS.labels(m.name, m.version, self.stage, p, "error")
                for p in ("v1", "v2")
            }
            self._instances = INSTANCES.labels(m.name, m.version, self.stage)
            self._latency = LATENCY.labels(m.name, m.version, self.stage)
            self.ready = True
            log.info(
                "loaded %s %s (%d features) from %s",
                m.name,
                m.version,
                len(m.features),
                self.model_dir,
            )
            return self.ready

        def get_input_types(self) -> list[dict]:
            return [
                {
                    "name": "input-0",
                    "datatype": "FP64",
                    "shape": [-1, len(self.model.features)],
                }
            ]

        def get_output_types(self) -> list[dict]:
            return [{"name": "predict", "datatype": "FP64", "shape": [-1]}]

        async def preprocess(self, payload, headers=None):
            protocol = "v2" if isinstance(payload, InferRequest) else "v1"
            try:
                if isinstance(
                    payload, (bytes, str)
                ):  # sent without content-type: application/json
                    payload = _json_body(payload)
                if protocol == "v2":
                    rows = rows_from_v2(payload, self.model, self.max_instances)
                else:
                    rows = rows_from_v1(payload, self.model, self.max_instances)
            except InvalidRequest as exc:
                self._invalid[protocol].inc()
                raise InvalidInput(str(exc)) from None
            v2_id = payload.id if protocol == "v2" else None
            rid = (
                request_id_from(headers)
                if headers and (headers.get("ce-id") or headers.get("x-request-id"))
                else None
            )
            return _Decoded(rows, protocol, rid or v2_id or uuid.uuid4().hex, v2_id)

        def validate(self, payload):
            return payload  # preprocess has checked it against the input schema

        async def predict(self, payload: _Decoded, headers=None, response_headers=None):
            started = time.perf_counter()
            rows = payload.rows
            try:
                if self.cache is not None:
                    predictions = self._predict_cached(rows)
                else:
                    predictions = self.model.predict(rows)
            except Exception:
                self._error[
                    payload.protocol
                ].inc()  # answered 500 by kserve: the canary's error rate
                raise
            if response_headers is not None:
                response_headers["x-model-version"] = self.model.version
                response_headers["x-request-id"] = payload.request_id
            self._ok[payload.protocol].inc()
            self._instances.inc(len(predictions))
            self._latency.observe(time.perf_counter() - started)
            if self.logger is not None:
                self.logger.log(payload.request_id, rows, predictions)
            values = predictions.tolist()
            if payload.protocol == "v2":
                # An Open Inference Protocol response, serialized here: kserve's v2 endpoint sends bytes as they
                # are, which skips a pydantic round trip per request (RequestGuard adds the content type).
                return orjson.dumps(
                    {
                        "model_name": self.name,
                        "model_version": self.model.version,
                        "id": payload.v2_id or payload.request_id,
                        "parameters": None,
                        "outputs": [
                            {
                                "name": "predict",
                                "shape": [len(values)],
                                "datatype": "FP64",
                                "parameters": None,
                                "data": values,
                            }
                        ],
                    }
                )
            return {
                "predictions": values,
                "model_name": self.name,
                "model_version": self.model.version,
            }

        def _predict_cached(self, rows: np.ndarray) -> np.ndarray:
            found = self.cache.get_many(rows)
            missing = [i for i, v in enumerate(found) if v is None]
            if not missing:
                return np.asarray(found, dtype="float64")
            computed = self.model.predict(rows[missing])
            self.cache.put_many(rows[missing], computed)
            out = np.asarray([0.0 if v is None else v for v in found], dtype="float64")
            out[missing] = computed
            return out

        def stop(self):
            if self.logger is not None:
                self.logger.close()
            super().stop()

    return RegressionPredictor


# --- HTTP guard (body size, decode errors) ---------------------------------------------------------


class RequestGuard:
    """ASGI middleware: bodies over ``max_body`` get 413 before anything parses them, and a request that
    kserve's decoders fail on with a plain Python error (ValueError, TypeError, ...) gets 400, not 500."""

    DECODE_ERRORS = (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        UnicodeDecodeError,
        OverflowError,
        RecursionError,
    )

    def __init__(self, app, max_body: int = DEFAULT_MAX_BODY_BYTES, fast_lane=None):
        self.app = app
        self.max_body = max_body
        self.fast_lane = fast_lane

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False
                if too_big:
                    return await self._reply(
                        send,
                        413,
                        f"request body is {int(value)} bytes; the limit is {self.max_body}",
                    )
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self._reply(
                    send,
                    413,
                    f"request body is over the limit of {self.max_body} bytes",
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self.fast_lane is not None:
            answer = await self.fast_lane.answer(scope, body)
            if answer is not None:
                return await self._send_answer(send, *answer)
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        started = False
        binary_v2 = any(
            n == b"inference-header-content-length" for n, _ in scope.get("headers", [])
        )
        held = None

        async def tracking_send(message):
            # kserve's messages for a body that is not JSON / not an inference request are vague; hold each
            # 400 and say what is actually wrong.
            nonlocal started, held
            if message["type"] == "http.response.start":
                started = True
                names = {n for n, _ in message.get("headers", [])}
                if message["status"] == 200 and b"content-type" not in names:
                    # kserve's v2 endpoint sends pre-serialized bytes without a content type or length
                    message = {
                        **message,
                        "headers": [
                            *message.get("headers", []),
                            (b"content-type", b"application/json"),
                        ],
                    }
                if message["status"] in (400, 422) or b"content-length" not in names:
                    held = message
                    return
            elif (
                held is not None
                and held["status"] not in (400, 422)
                and message["type"] == "http.response.body"
            ):
                if not message.get(
                    "more_body", False
                ):  # one body: send it with its length, not chunked
                    length = str(len(message.get("body", b""))).encode()
                    held = {
                        **held,
                        "headers": [*held["headers"], (b"content-length", length)],
                    }
                await send(held)
                held = None
            elif held is not None and message["type"] == "http.response.body":
                content = message.get("body", b"")
                try:
                    has_error = isinstance(json.loads(content).get("error"), str)
                except (ValueError, AttributeError):
                    has_error = False
                if not has_error:  # FastAPI's own answers ({"detail": ...}) for bodies it could not parse
                    return await self._reply(send, 400, diagnose_v2_body(body))
                if not binary_v2 and b"inference-header-content-length" in content:
                    return await self._reply(send, 400, diagnose_v2_body(body))
                if b"Unrecognized request format" in content:
                    detail = (
                        json.loads(content).get("error", "").split(":", 1)[-1].strip()
                    )
                    return await self._reply(
                        send, 400, f"the request body is not valid JSON: {detail}"
                    )
                await send(held)
                held = None
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except self.DECODE_ERRORS as exc:
            if started:
                raise
            log.info("request could not be decoded: %s: %s", type(exc).__name__, exc)
            if scope["path"].endswith("/infer") and not binary_v2:
                message = diagnose_v2_body(body)
            else:
                message = (
                    f"the request could not be decoded: {type(exc).__name__}: {exc}"
                )
            await self._reply(send, 400, message[:2000])

    @staticmethod
    async def _send_answer(send, content: bytes, headers: dict[str, str]) -> None:
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    async def _reply(send, status: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _Tensor:
    __slots__ = ("data", "datatype", "name", "shape")

    def __init__(self, name, shape, datatype, data):
        self.name, self.shape, self.datatype, self.data = name, shape, datatype, data


class _V2Body:
    """The fields of a JSON v2 request that ``rows_from_v2`` reads, or None when anything is unusual."""

    __slots__ = ("id", "inputs")

    def __init__(self, inputs, rid):
        self.inputs, self.id = inputs, rid

    @classmethod
    def parse(cls, doc) -> _V2Body | None:
        if (
            type(doc) is not dict
            or set(doc) - {"inputs", "id", "parameters"}
            or type(doc.get("inputs")) is not list
        ):
            return None
        rid = doc.get("id")
        if rid is not None and type(rid) is not str:
            return None
        tensors = []
        for t in doc["inputs"]:
            if (
                type(t) is not dict
                or set(t) - {"name", "shape", "datatype", "data", "parameters"}
                or type(t.get("name")) is not str
                or type(t.get("datatype")) is not str
                or type(t.get("shape")) is not list
                or type(t.get("data")) is not list
                or t.get("parameters") not in (None, {})
            ):
                return None
            tensors.append(_Tensor(t["name"], t["shape"], t["datatype"], t["data"]))
        return cls(tensors, rid)


class FastLane:
    """Answers *valid* JSON predict requests for this model straight from the ``RegressionPredictor``
    (its ``predict``, so the same checks, cache, metrics, logging and headers), without FastAPI's routing and
    pydantic models: about half of a request's CPU. Anything else (an invalid, unusual, binary or
    CloudEvent request, another model, metadata, health) returns None and takes kserve's own route, which
    gives the error answers."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.v1_path = f"/v1/models/{predictor.name}:predict"
        self.v2_path = f"/v2/models/{predictor.name}/infer"

    async def answer(self, scope, body: bytes):
        path = scope["path"]
        if path != self.v1_path and path != self.v2_path:
            return None
        p = self.predictor
        if not p.ready:
            return None
        headers = {}
        for name, value in scope.get("headers", []):
            if name in (b"ce-id", b"x-request-id"):
                headers[name.decode()] = value.decode("latin-1")
            elif (
                name == b"inference-header-content-length"
                or name.startswith(b"ce-spec")
                or (name == b"content-type" and b"cloudevents" in value)
            ):
                return None
        try:
            doc = orjson.loads(body)
            if path == self.v1_path:
                protocol, rows, v2_id = (
                    "v1",
                    rows_from_v1(doc, p.model, p.max_instances),
                    None,
                )
            else:
                request = _V2Body.parse(doc)
                if request is None:
                    return None
                protocol, rows, v2_id = (
                    "v2",
                    rows_from_v2(request, p.model, p.max_instances),
                    request.id,
                )
        except (orjson.JSONDecodeError, InvalidRequest):
            return None
        rid = (
            (request_id_from(headers) if any(headers.values()) else None)
            or v2_id
            or uuid.uuid4().hex
        )
        response_headers: dict[str, str] = {}
        result = await p.predict(
            _Decoded(rows, protocol, rid, v2_id), headers, response_headers
        )
        return (
            result if isinstance(result, bytes) else orjson.dumps(result)
        ), response_headers


# --- process entry --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kfrelease.serving.predictor",
        description="Serve one registered regression model version with KServe's ModelServer.",
    )
    p.add_argument(
        "--model-dir",
        required=True,
        help="model directory, /mnt/models (ModelCar) or s3://models/artifacts/<model>/<V>/",
    )
    p.add_argument(
        "--name", required=True, help="model name (the URL's /v1/models/<name>)"
    )
    p.add_argument("--stage", default="production", choices=STAGES)
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument(
        "--host", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)"
    )
    p.add_argument(
        "--logger-url", default=None, help="log sink URL; no logging without it"
    )
    p.add_argument(
        "--cache",
        default=None,
        help="off (default), lru, lru:N or redis://host:port/db",
    )
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES)
    p.add_argument(
        "--no-fast-lane",
        action="store_true",
        help="answer every request through kserve's FastAPI routes (slower; same answers)",
    )
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kfrelease"))
    p.add_argument(
        "--inference-service",
        default=None,
        help="InferenceService name in log events (default: the model name)",
    )
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """The predictor object for parsed arguments (loaded; its logger started). Used by main and tests."""
    from kfrelease.serving.cache import cache_from_option

    from kfrelease.config import Settings

    settings = Settings.from_env()
    model_dir = resolve_model_dir(args.model_dir, settings)
    predictor = make_predictor_class()(
        args.name, model_dir, stage=args.stage, max_instances=args.max_instances
    )
    predictor.load()
    loaded = predictor.model
    if args.logger_url:
        from kfrelease.serving.logger import InferenceLogger

        predictor.logger = InferenceLogger(
            url=args.logger_url,
            wal_dir=settings.service_dir(f"predictor-{args.stage}") / "log-wal",
            model=loaded.name,
            version=loaded.version,
            stage=args.stage,
            features=list(loaded.features),
            namespace=args.namespace,
            inference_service=args.inference_service or loaded.name,
        )
        predictor.logger.start()
    predictor.cache = cache_from_option(args.cache, loaded.name, loaded.version)
    return predictor


def serve(
    predictor,
    http_port: int,
    host: str = "127.0.0.1",
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    fast_lane: bool = True,
) -> None:
    """Run KServe's ModelServer (REST only, one worker) for ``predictor`` on ``host:http_port``."""
    try:
        run_model_server(
            [predictor], http_port, host, max_body, FastLane(predictor) if fast_lane else None
        )
    finally:
        predictor.stop()


def run_model_server(
    models: list,
    http_port: int,
    host: str = "127.0.0.1",
    max_body: int = DEFAULT_MAX_BODY_BYTES,
    fast_lane=None,
    middleware: tuple = (),
    on_start=None,
) -> None:
    """KServe's ModelServer (REST only, one worker) for ``models`` (possibly none yet) on ``host:http_port``.
    ``middleware`` are (class, kwargs) pairs added outside the request guard; ``on_start(server)`` runs
    once the server object exists (the multi-model host keeps it to load and unload models)."""
    import asyncio

    from kserve import ModelServer
    from kserve.model_server import FASTAPI_APP_IMPORT_STRING, app
    from kserve.protocol.rest.server import RESTServer

    class LeanRESTServer(RESTServer):
        # kserve adds timing_asgi's TimingMiddleware, which measures wall and CPU time of every request only
        # to log it to kserve.trace (off here): about 15 % of a request's CPU. Our own histogram
        # (kfrelease_predictor_request_seconds) and kserve's PREDICT_HIST_TIME keep the latency metrics.
        def _add_middlewares(self, app):
            return None

    class LocalModelServer(ModelServer):
        # kserve's RESTServer binds 0.0.0.0; this binds ``host`` (127.0.0.1 on the embedded stack).
        def start(self, models):
            if models:
                self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = LeanRESTServer(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
            )
            self._rest_server.config.host = host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            # kserve starts its servers inside asyncio.run, so uvicorn's own loop choice never applies; run
            # them on uvloop (installed with uvicorn[standard]) as uvicorn would: cheaper socket I/O.
            try:
                import uvloop

                uvloop.run(self._serve())
            except ImportError:
                asyncio.run(self._serve())

    import sklearn

    # Every request is checked finite by rows_from_v1/v2 before it reaches the model, so scikit-learn's own
    # per-call finiteness scan is redundant in this process (sklearn.set_config, "assume_finite").
    sklearn.set_config(assume_finite=True)
    app.add_middleware(RequestGuard, max_body=max_body, fast_lane=fast_lane)
    for cls, kwargs in middleware:
        app.add_middleware(cls, **kwargs)
    server = LocalModelServer(
        http_port=http_port,
        enable_grpc=False,
        workers=1,
        grace_period=5,
        enable_latency_logging=False,
    )
    if on_start is not None:
        on_start(server)
    # Per-request trace and access lines cost more than the prediction itself; errors are still logged.
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server.start(list(models))


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # kserve.model_server parses sys.argv when imported; give it only the program name.
    sys.argv = sys.argv[:1]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        predictor = build(args)
    except KfreleaseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    serve(
        predictor,
        args.http_port,
        args.host,
        args.max_body_bytes,
        fast_lane=not args.no_fast_lane,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
