"""Request decoding for the predictor: v1 and v2 JSON bodies checked against a model's input schema.

Pure functions, no HTTP: each request is checked against the entry's ``input_schema``
(``kfrelease.registry.artifact``: feature names and count; numbers finite, whole for integer features;
categories strings, and one of the known values unless the feature passes unknown values to the model) and
turned into the checked rows in schema order: a float64 matrix when every feature is a number, else an object
matrix of floats and strings. Any problem raises ``InvalidRequest`` with a message naming the feature (and its
known values), so the predictor answers a 400 and nothing reaches the model or the prediction log.

Layouts: v1 ``instances`` as lists in schema order or objects keyed by feature name; v2 one ``[n, k]`` number
tensor (numbers only), or one tensor per feature named after it (``BYTES`` for categories, as MLServer's
pandas codec and KServe's v2 docs send a DataFrame's columns). A request whose values all have the right
JSON types is checked in one vectorized pass per feature; only a bad one takes the element-by-element check
that names it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson

from kfrelease.errors import KfreleaseError
from kfrelease.registry.artifact import INT_DTYPES

if TYPE_CHECKING:
    from kfrelease.registry.artifact import Column, LoadedModel

#: Most instances in one request.
DEFAULT_MAX_INSTANCES = 10_000
V2_FLOAT = frozenset({"FP16", "FP32", "FP64"})
V2_INT = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
V2_BYTES = "BYTES"


class InvalidRequest(KfreleaseError):
    """A request that does not fit the model's input schema (the message says where and what)."""


@dataclass
class Decoded:
    """A checked request: the matrix, its protocol, the request id and the v2 body's own id."""

    rows: np.ndarray  # float64 [n, k], or object [n, k] when the schema has categories
    protocol: str  # "v1" | "v2"
    request_id: str
    v2_id: str | None = None


def request_id_from(headers: dict | None) -> str | None:
    """The gateway's id (``ce-id`` then ``x-request-id``, at most 200 characters), or None."""
    if headers:
        for name in ("ce-id", "x-request-id"):
            value = headers.get(name)
            if value:
                return value[:200]
    return None


def new_request_id() -> str:
    """A new random id (128 bits, hex, as ``uuid4().hex`` without building a UUID: a request's cost matters)."""
    return os.urandom(16).hex()


def json_body(raw: bytes | str):
    """The parsed JSON of a body, or InvalidRequest saying why it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


def _number(value, where: str, feature: str, integral: bool) -> float:
    t = type(value)
    if t is float:
        if not math.isfinite(value):
            raise InvalidRequest(f"{where} (feature {feature!r}) is {value}; only finite numbers are accepted")
        if integral and not value.is_integer():
            raise InvalidRequest(f"{where} (feature {feature!r}) is {value}; this feature takes whole numbers")
        return value
    if t is int:
        try:
            f = float(value)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):  # ints beyond float range
            raise InvalidRequest(f"{where} (feature {feature!r}) is too large for a float64")
        return f
    raise InvalidRequest(f"{where} (feature {feature!r}) is {_kind(value)}; expected a finite number")


def _kind(value) -> str:
    t = type(value)
    if t is str:
        return f"a string ({value[:40]!r})"
    if t in (int, float):
        return f"a number ({value})"
    return "null" if value is None else "a boolean" if t is bool else f"a JSON {_json_kind(value)}"


def _category(value, where: str, column: Column) -> str:
    """One category value, checked: a string, and a known value unless the feature passes unknown ones on."""
    if type(value) is not str:
        known = f"one of {column.known_values()}" if column.categories else "text"
        raise InvalidRequest(f"{where} (feature {column.name!r}) is {_kind(value)}; this feature takes {known}")
    if column.categories and column.unknown == "refuse" and value not in column.known:
        raise InvalidRequest(
            f"{where} (feature {column.name!r}) is {value[:80]!r}, not a known value; known: {column.known_values()}"
        )
    return value


def _value(value, where: str, column: Column):
    if column.numeric:
        return _number(value, where, column.name, column.integral)
    return _category(value, where, column)


def rows_from_v1(body, model: LoadedModel, max_instances: int = DEFAULT_MAX_INSTANCES) -> np.ndarray:
    """``{"instances": [[...], ...]}`` or ``{"instances": [{"name": value, ...}, ...]}`` -> float64 matrix."""
    if not isinstance(body, dict):
        raise InvalidRequest(
            f'the request body must be a JSON object like {{"instances": [[...]]}}, not a JSON {_json_kind(body)}'
        )
    extra = sorted(set(body) - {"instances", "parameters", "id"})
    if "instances" not in body:
        hint = " (v2 'inputs' go to /v2/models/<name>/infer)" if "inputs" in body else ""
        raise InvalidRequest(f"the request has no 'instances' field{hint}; fields given: {sorted(body)}")
    if extra:
        raise InvalidRequest(f"unknown field(s) {extra}; a v1 request has 'instances' (and optionally 'parameters')")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidRequest(f"'instances' must be a list, not a JSON {_json_kind(instances)}")
    n, k = len(instances), len(model.features)
    if n == 0:
        raise InvalidRequest("'instances' is empty; send at least one instance")
    if n > max_instances:
        raise InvalidRequest(f"'instances' holds {n} instances; at most {max_instances} per request")
    if not model.numeric:
        return _mixed_rows(instances, model.columns)
    integral = [d in INT_DTYPES for d in model.dtypes]
    fast = _all_numbers(instances, k)
    if fast is not None and (not any(integral) or np.all(np.mod(fast[:, integral], 1) == 0)):
        return fast
    # the element-by-element check below finds and names the first bad value
    rows = np.empty((n, k), dtype="float64")
    features = list(model.features)
    for i, inst in enumerate(instances):
        _check_instance(inst, i, features, "numbers")
        if type(inst) is list:
            for j in range(k):
                rows[i, j] = _number(inst[j], f"instances[{i}][{j}]", features[j], integral[j])
        else:
            for j, f in enumerate(features):
                rows[i, j] = _number(inst[f], f"instances[{i}].{f}", f, integral[j])
    return rows


def _check_instance(inst, i: int, names: list[str], holding: str) -> None:
    """``instances[i]`` is a list of one value per feature, in order, or an object with exactly the features as
    keys; else the error says what is off (``holding``: what an instance's values are, for the message)."""
    k = len(names)
    if type(inst) is list:
        if len(inst) != k:
            raise InvalidRequest(f"instances[{i}] has {len(inst)} values; the model takes {k}, in this order: {names}")
    elif type(inst) is dict:
        if len(inst) != k or any(f not in inst for f in names):
            missing = [f for f in names if f not in inst]
            unknown = sorted(set(inst) - set(names))
            raise InvalidRequest(
                f"instances[{i}] does not match the input schema: missing {missing}, unknown {unknown}; "
                f"expected exactly {names}"
            )
    else:
        raise InvalidRequest(
            f"instances[{i}] is a JSON {_json_kind(inst)}; each instance is a list of {k} {holding} or an "
            f"object with keys {names}"
        )


def _mixed_rows(instances: list, columns: tuple[Column, ...]) -> np.ndarray:
    """v1 instances of a schema with categories -> object matrix: one pass per feature when every value has
    its feature's JSON type (and, for categories, is known), else the check that names the first bad value."""
    n, k = len(instances), len(columns)
    names = [c.name for c in columns]
    rows = np.empty((n, k), dtype=object)
    lists = all(type(i) is list and len(i) == k for i in instances)
    dicts = not lists and all(type(i) is dict and len(i) == k for i in instances)
    if lists or dicts:
        try:
            for j, c in enumerate(columns):
                values = [i[j] for i in instances] if lists else [i[c.name] for i in instances]
                if not _column_fits(values, c):
                    break
                rows[:, j] = values if not c.numeric else np.asarray(values, dtype="float64").tolist()
            else:
                return rows
        except KeyError:  # an object without one of the names: the check below says which
            pass
    for i, inst in enumerate(instances):
        _check_instance(inst, i, names, "values")
        if type(inst) is list:
            for j, c in enumerate(columns):
                rows[i, j] = _value(inst[j], f"instances[{i}][{j}]", c)
        else:
            for j, c in enumerate(columns):
                rows[i, j] = _value(inst[c.name], f"instances[{i}].{c.name}", c)
    return rows


def _column_fits(values: list, column: Column) -> bool:
    """True when every value of one feature is right as it is (the vectorized check)."""
    kinds = {type(v) for v in values}
    if not column.numeric:
        if kinds != {str}:
            return False
        return not column.categories or column.unknown != "refuse" or column.known.issuperset(values)
    if not kinds <= ({int} if column.integral else _NUMBER_TYPES):
        return False
    try:
        return bool(np.isfinite(np.asarray(values, dtype="float64")).all())
    except OverflowError:
        return False


def diagnose_v2_body(raw: bytes) -> str:
    """What is wrong with a v2 body that did not parse as an inference request (for the 400 message)."""
    from kserve.protocol.rest.v2_datamodels import InferenceRequest
    from pydantic import ValidationError

    try:
        doc = json_body(raw)
    except InvalidRequest as exc:
        return str(exc)
    if not isinstance(doc, dict):
        return f'the request body must be a JSON object like {{"inputs": [...]}}, not a JSON {_json_kind(doc)}'
    if "inputs" not in doc:
        hint = " (v1 'instances' go to /v1/models/<name>:predict)" if "instances" in doc else ""
        return f"the request has no 'inputs' field{hint}; fields given: {sorted(doc)}"
    try:
        InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
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
#: Up to this many values a column is checked and converted in plain Python (numpy's per-call cost dominates).
_SMALL = 16


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
    return rows if rows.shape == (len(instances), k) and np.isfinite(rows).all() else None


def _tensor_values(inp, where: str, integral_type: bool) -> list[float] | np.ndarray:
    data = inp.data
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list):
        raise InvalidRequest(f"{where}.data must be a list of numbers")
    kinds = set(map(type, data))
    if kinds <= ({int} if integral_type else _NUMBER_TYPES) and kinds:
        if len(data) <= _SMALL:  # a few values: plain floats are cheaper than a numpy round trip
            try:
                values = [float(v) for v in data]
                if all(map(math.isfinite, values)):
                    return values
            except OverflowError:
                pass
        else:
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


def _tensor_texts(inp, where: str, column: Column) -> list[str]:
    """A ``BYTES`` tensor's values for a category feature (JSON strings, or bytes of binary requests), checked."""
    data = inp.data
    if isinstance(data, np.ndarray):
        data = data.tolist()
    if not isinstance(data, list):
        raise InvalidRequest(f"{where}.data must be a list of strings")
    if data and type(data[0]) is list:
        flat: list = []
        _flatten(data, f"{where}.data", flat)
        data = [v for v, _ in flat]
    values = [v.decode("utf-8", "replace") if type(v) is bytes else v for v in data]
    if _column_fits(values, column):
        return values
    return [_category(v, f"{where}.data[{i}]", column) for i, v in enumerate(values)]


def _one_number_tensor(inp, model: LoadedModel, max_instances: int) -> np.ndarray | None:
    """The usual request of a numbers-only model, checked in one pass: one FP64/FP32 tensor ``[n, k]`` (or
    ``[k]``), not named after a feature, of finite JSON floats and ints. None for anything else (then the full
    check below decides, and names what is wrong)."""
    shape, data, k = inp.shape, inp.data, len(model.columns)
    if (
        inp.datatype not in V2_FLOAT
        or type(data) is not list
        or inp.name in model.features
        or type(shape) is not list
        or not (shape == [k] or (len(shape) == 2 and shape[1] == k and type(shape[0]) is int))
        or len(data) != (shape[0] * k if len(shape) == 2 else k)
        or not 0 < len(data) <= max_instances * k
        or not set(map(type, data)) <= _NUMBER_TYPES
    ):
        return None
    try:
        rows = np.array(data, dtype="float64").reshape(-1, k)
    except OverflowError:
        return None
    if not np.isfinite(rows).all():
        return None
    integral = model.integral_positions
    if len(integral) and not (np.mod(rows[:, integral], 1) == 0).all():
        return None
    return rows


def rows_from_v2(request, model: LoadedModel, max_instances: int = DEFAULT_MAX_INSTANCES) -> np.ndarray:
    """Open Inference Protocol inputs -> checked rows. Two layouts are accepted:

    - one number tensor of shape ``[n, k]`` (or ``[k]`` for one instance) with the features in schema order
      (only when every feature is a number);
    - one tensor per feature, named after it, each of shape ``[n]`` or ``[n, 1]``: FP/INT for a number,
      ``BYTES`` (strings) for a category.
    """
    inputs = list(request.inputs or [])
    if len(inputs) == 1 and model.numeric:
        rows = _one_number_tensor(inputs[0], model, max_instances)
        if rows is not None:
            return rows
    columns = model.columns
    k = len(columns)
    if not inputs:
        raise InvalidRequest("'inputs' is empty; send one [n, k] tensor or one tensor per feature")
    by_column = model.column_by_name
    for idx, inp in enumerate(inputs):
        column = by_column.get(inp.name)
        if column is not None and not column.numeric:
            if inp.datatype != V2_BYTES:
                raise InvalidRequest(
                    f"inputs[{idx}] ({inp.name!r}) has datatype {inp.datatype!r}; feature {inp.name!r} is a category: "
                    f"send a BYTES tensor of its values"
                    + (f", each one of {column.known_values()}" if column.categories else "")
                )
        elif inp.datatype not in V2_FLOAT | V2_INT:
            what = f"feature {inp.name!r} takes numbers" if column is not None else "number tensors"
            raise InvalidRequest(
                f"inputs[{idx}] ({inp.name!r}) has datatype {inp.datatype!r}; {what}: use FP64/FP32 or an INT type"
            )
        shape = inp.shape
        if not isinstance(shape, list) or not shape or any(type(s) is not int or s < 0 for s in shape):
            raise InvalidRequest(f"inputs[{idx}] ({inp.name!r}) has shape {shape!r}; it must be a list of sizes")
    names = [inp.name for inp in inputs]
    if len(inputs) == 1 and (names[0] not in by_column or (k == 1 and len(inputs[0].shape) == 2)):
        if not model.numeric:
            raise InvalidRequest(
                f"inputs[0] ({inputs[0].name!r}) is one tensor, but this model has category features: send one "
                f"tensor named after each of {list(model.features)} (BYTES for {model.categorical_features()})"
            )
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
            raise InvalidRequest(f"inputs[0] ({inp.name!r}) has {len(values)} values; shape {inp.shape} needs {n * k}")
        rows = np.asarray(values, dtype="float64").reshape(n, k)
    else:
        if sorted(names) != sorted(model.features) or len(set(names)) != len(names):
            missing = [f for f in model.features if f not in names]
            unknown = sorted(set(names) - set(model.features))
            raise InvalidRequest(
                f"v2 inputs do not match the input schema: missing {missing}, unknown {unknown}; send one tensor "
                f"named after each of {list(model.features)}" + (f", or one [n, {k}] tensor" if model.numeric else "")
            )
        by_name = {inp.name: (i, inp) for i, inp in enumerate(inputs)}
        columns_values = []
        n = None
        for c in columns:
            i, inp = by_name[c.name]
            if not (len(inp.shape) == 1 or (len(inp.shape) == 2 and inp.shape[1] == 1)):
                raise InvalidRequest(
                    f"inputs[{i}] ({c.name!r}) has shape {inp.shape}; a feature tensor is [n] or [n, 1]"
                )
            if n is None:
                n = inp.shape[0]
            elif inp.shape[0] != n:
                raise InvalidRequest(f"inputs[{i}] ({c.name!r}) has {inp.shape[0]} rows; the other inputs have {n}")
            if c.numeric:
                values = _tensor_values(inp, f"inputs[{i}]", inp.datatype in V2_INT)
            else:
                values = _tensor_texts(inp, f"inputs[{i}]", c)
            if len(values) != n:
                raise InvalidRequest(f"inputs[{i}] ({c.name!r}) has {len(values)} values; shape {inp.shape} needs {n}")
            columns_values.append(values)
        if model.numeric:
            rows = np.asarray(columns_values, dtype="float64").T.reshape(n, k)
        else:
            rows = np.empty((n, k), dtype=object)
            for j, values in enumerate(columns_values):
                rows[:, j] = values.tolist() if type(values) is np.ndarray else values
    if rows.shape[0] == 0:
        raise InvalidRequest("the request holds no instances; send at least one")
    if rows.shape[0] > max_instances:
        raise InvalidRequest(f"the request holds {rows.shape[0]} instances; at most {max_instances} per request")
    for j in model.integral_positions:
        if not np.all(np.mod(rows[:, j].astype("float64"), 1) == 0):
            raise InvalidRequest(f"feature {columns[j].name!r} takes whole numbers")
    return rows
