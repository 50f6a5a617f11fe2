"""The YAML specs as pydantic v2 documents: one-line errors with a did-you-mean, JSON Schemas, a key reference.

Each spec module (``kfrelease.data.spec``, ``kfrelease.training.spec``, ``kfrelease.rollout.spec``) declares
the document its YAML file holds as a ``SpecDocument`` (unknown keys forbidden, every key described, every
default named) and builds its runtime dataclass from it (``yaml_mapping``, ``validate``, ``to_dataclass``).
``validate`` runs pydantic and turns its first error into one line that names the file, the key path, what
was wrong and how to fix it; ``SCHEMAS`` maps each spec kind to its document, whose JSON Schema is committed
under ``schemas/specs/`` for editors (``kfrelease spec schema KIND``) and rendered into
``docs/spec-reference.md`` by ``reference_markdown``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import re
import types
import typing
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema

from kfrelease.errors import ConfigError

#: Spec kind -> (module, document class, file name the data scientist or engineer edits).
SCHEMAS = {
    "dataset": ("kfrelease.data.spec", "DatasetDocument", "dataset spec (e.g. diabetes.yaml)"),
    "model": ("kfrelease.training.spec", "ModelDocument", "model.yaml"),
    "rollout": ("kfrelease.rollout.spec", "RolloutDocument", "rollout.yaml"),
}


#: A number as written: ``100`` stays an int, ``0.5`` a float (a bool is refused); "number" in the schema.
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]


class SpecDocument(BaseModel):
    """Base of every spec document: strict types (YAML gives native ones), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def key_path(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(annotation):
    """The model or container types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else annotation
    return annotation


def annotation_at(model: type[BaseModel], loc) -> Any:
    """The declared type at a key path of a document (None when the path leaves the declared shape)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = _fields(current).get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = field.annotation
            continue
        origin, args = typing.get_origin(current), typing.get_args(current)
        if origin in (list, tuple) and args and isinstance(part, int):
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    return _unwrap(current)


def _fields(model: type[BaseModel]) -> dict:
    """A document's fields by the key written in YAML (the alias, e.g. ``class``)."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def known_keys(model: type[BaseModel], loc) -> list[str]:
    parent = annotation_at(model, loc)
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        return list(_fields(parent))
    return []


def literal_values(model: type[BaseModel], loc) -> list:
    annotation = annotation_at(model, loc)
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Literal else []


def describe_error(model: type[BaseModel], error: dict) -> str:
    """One pydantic error as a sentence that says how to fix it."""
    loc = error["loc"]
    path, kind, value = key_path(loc), error["type"], error.get("input")
    if kind == "extra_forbidden":
        known = known_keys(model, loc[:-1])
        where = f" in {key_path(loc[:-1])}" if loc[:-1] else ""
        return f"unknown key {loc[-1]!r}{where}{did_you_mean(loc[-1], known)}; known: {', '.join(known)}"
    if kind == "missing":
        return f"missing key(s) {path}"
    if kind.startswith("union"):
        return f"{path} {value!r} is not allowed here"
    if kind == "literal_error":
        choices = literal_values(model, loc)
        return f"{path} {value!r} is unknown{did_you_mean(value, choices)}; use one of {', '.join(map(str, choices))}"
    if kind in ("model_type", "dataclass_type", "dict_type") and not isinstance(value, dict):
        keys = known_keys(model, loc)
        hint = f" with keys {', '.join(keys)}" if keys else ""
        return f"{path or 'the document'} must be a mapping{hint}, not {value!r}"
    message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    for said, meant in _PLAIN.items():
        message = message.replace(said, meant)
    message = message[0].lower() + message[1:] if message else message
    if not path:
        return message
    message = message.replace(" after validation", "")
    if message.startswith(("must ", "is ", "lists ")):
        shown = "" if kind == "value_error" or ", not " in message else f", not {value!r}"
        return f"{path} {message}{shown}"
    return f"{path}: {message}"


#: pydantic's wording -> the words a spec's reader uses.
_PLAIN = {
    "Input should be a valid integer": "must be a whole number",
    "Input should be a valid number": "must be a number",
    "Input should be a valid string": "must be text",
    "Input should be a valid boolean": "must be true or false",
    "Input should be a valid list": "must be a list",
    "Input should be a valid dictionary": "must be a mapping",
    "Input should be ": "must be ",
    "String should ": "must ",
    "List should ": "must ",
    "Dictionary should ": "must ",
}


_TAGS = re.compile(r"^(str|int|float|bool|none|list|dict|tuple|function-\w+|[a-z-]+\[.*\])$")


def _clean(model: type[BaseModel], error: dict) -> dict:
    """The error's key path without pydantic's union member and validator tags (a real key is kept)."""
    loc: tuple = ()
    for part in error["loc"]:
        if isinstance(part, str) and _TAGS.match(part) and annotation_at(model, (*loc, part)) is None:
            continue
        loc = (*loc, part)
    return {**error, "loc": loc}


_KINDS = {"int_type": "a whole number", "float_type": "a number", "string_type": "text", "bool_type": "true or false"}


def _one_per_key(errors: list[dict]) -> list[dict]:
    """One error per key path: the members of a union that all refused a value become one 'must be a or b'."""
    by_loc: dict[tuple, list[dict]] = {}
    for e in errors:
        by_loc.setdefault(e["loc"], []).append(e)
    out = []
    for group in by_loc.values():
        kinds = [_KINDS[e["type"]] for e in group if e["type"] in _KINDS]
        if len(group) > 1 and len(kinds) == len(group):
            kinds = list(
                dict.fromkeys("a number" if k == "a whole number" and "a number" in kinds else k for k in kinds)
            )
            message = f"must be {' or '.join(kinds)}, not {group[0]['input']!r}"
            group[0] = {**group[0], "type": "value_error", "msg": message}
        out.append(group[0])
    return out


def _first(errors: list[dict]) -> list[dict]:
    """The errors to report: an unknown key first (its did-you-mean usually explains the rest), and all
    missing keys of one mapping together."""
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    if first["type"] != "missing":
        return [first]
    return [e for e in errors if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]


def validate(model: type[BaseModel], doc: Any, origin: str, error: type[ConfigError] = ConfigError, suffix: str = ""):
    """``model.model_validate(doc)``, or ``error`` with one line: ``origin: what was wrong[; suffix]``."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errors = _one_per_key([_clean(model, e) for e in exc.errors(include_url=False)])
        shown = _first(errors)
        if shown[0]["type"] == "extra_forbidden":  # a misspelt key also leaves its right spelling missing
            errors = [e for e in errors if not (e["type"] == "missing" and e["loc"][:-1] == shown[0]["loc"][:-1])]
        if shown[0]["type"] == "missing":
            text = "missing key(s) " + ", ".join(key_path(e["loc"]) for e in shown)
        else:
            text = describe_error(model, shown[0])
        more = f" (and {len(errors) - len(shown)} more problem(s))" if len(errors) > len(shown) else ""
        raise error(f"{origin}: {text}{more}{suffix}") from None


def yaml_mapping(text: str, origin: str, shape: str, error: type[ConfigError] = ConfigError, empty_ok: bool = False):
    """The mapping a spec file's YAML holds, or ``error`` with one line: not YAML, or not a mapping (``shape``
    says what it should be). ``empty_ok``: an empty file is an empty mapping."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if doc is None and empty_ok:
        return {}
    if not isinstance(doc, dict):
        raise error(f"{origin}: {shape}")
    return doc


def to_dataclass(cls, doc: BaseModel, **values):
    """The runtime dataclass ``cls`` of a checked document: ``values``, then each field of ``cls`` the
    document sets (a nested document as the dataclass its field declares, a list as a tuple). A key the
    document leaves out, or a section given as null, keeps the dataclass's default: defaults have one home."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values or f.name not in doc.model_fields_set:
            continue
        value = getattr(doc, f.name)
        if value is None and f.default_factory is not dataclasses.MISSING:
            continue  # a section given as null
        values[f.name] = _converted(hints[f.name], value)
    return cls(**values)


def _converted(hint, value):
    if isinstance(value, BaseModel):
        return to_dataclass(next(t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), value)
    if isinstance(value, list):
        item = (typing.get_args(hint) or (Any,))[0]
        return tuple(_converted(item, v) for v in value)
    return value


def document(kind: str) -> type[BaseModel]:
    if kind not in SCHEMAS:
        raise ConfigError(f"no spec kind {kind!r}{did_you_mean(kind, SCHEMAS)}; use one of {', '.join(SCHEMAS)}")
    module, name, _ = SCHEMAS[kind]
    return getattr(importlib.import_module(module), name)


def json_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one spec kind, as editors read it."""
    schema = document(kind).model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"kfrelease-{kind}-spec.json", **schema}


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, sort_keys=False) + "\n"


# the reference ----------------------------------------------------------------------------------------------
def _type_name(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return "mapping"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "anyOf" in prop:
        return " or ".join(_type_name(p, defs) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(prop.get('items', {}), defs)}"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping of name to {_type_name(prop['additionalProperties'], defs)}"
    return {
        "integer": "whole number",
        "number": "number",
        "string": "text",
        "boolean": "true/false",
        "null": "null",
        "object": "mapping",
    }.get(kind, kind)


def _child_ref(prop: dict) -> str | None:
    for candidate in (prop, prop.get("items", {}), prop.get("additionalProperties") or {}, *prop.get("anyOf", [])):
        if isinstance(candidate, dict):
            if "$ref" in candidate:
                return candidate["$ref"].rsplit("/", 1)[-1]
            if "items" in candidate and "$ref" in candidate["items"]:
                return candidate["items"]["$ref"].rsplit("/", 1)[-1]
    return None


def _default_text(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return "the checks " + ", ".join(f"`{v['name']}`" for v in value) + " (see the packaged default.yaml)"
    return f"`{json.dumps(value)}`"


def _rows(schema: dict, defs: dict, prefix: str, out: list) -> None:
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        child = _child_ref(prop)
        is_list = prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", []))
        suffix = "[]" if is_list else ""
        if isinstance(prop.get("additionalProperties"), dict):
            suffix = ".NAME"
        path = f"{prefix}{key}"
        default = "required" if key in required else _default_text(prop.get("default"))
        description = " ".join(prop.get("description", "").split()).replace("|", "\\|")
        out.append(f"| `{path}` | {_type_name(prop, defs)} | {default} | {description} |")
        if child:
            _rows(defs[child], defs, f"{path}{suffix}.", out)


def reference_markdown() -> str:
    """docs/spec-reference.md: every key of every spec, from the JSON Schemas."""
    lines = [
        "# Spec reference",
        "",
        "<!-- generated by `kfrelease spec reference` from the spec schemas; do not edit by hand -->",
        "",
        "Every key of the three YAML specs, with its type, its default and what it means. Unknown keys are",
        "refused with a did-you-mean. The JSON Schemas in `schemas/specs/` (or `kfrelease spec schema KIND`)",
        "give editors completion: e.g. for VS Code's YAML extension, put",
        "`# yaml-language-server: $schema=<path to>/schemas/specs/model.schema.json` at the top of `model.yaml`.",
    ]
    for kind, (_, _, file) in SCHEMAS.items():
        schema = json_schema(kind)
        defs = schema.get("$defs", {})
        lines += [
            "",
            f"## {kind}: {file}",
            "",
            " ".join(schema.get("description", "").split()),
            "",
            "| key | type | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        _rows(schema, defs, "", lines)
    return "\n".join(lines) + "\n"
