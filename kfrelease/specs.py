"""The YAML specs as frozen pydantic v2 models: the one declaration of each spec, its runtime type, one-line
errors with a did-you-mean, JSON Schemas and a key reference.

Each spec module (``kfrelease.data.spec``, ``kfrelease.training.spec``, ``kfrelease.rollout.spec``) declares
the spec its YAML file holds as a ``SpecDocument`` (unknown keys forbidden, every key described, every
default named, cross-field rules as ``model_validator``s); the validated model is what the code uses.
``validate`` runs pydantic and turns its first error into one line that names the file, the key path, what
was wrong and how to fix it; ``with_changes`` is the only way to change a spec, and validates again.
``SCHEMAS`` maps each spec kind to its model, whose JSON Schema is committed under ``schemas/specs/`` for
editors (``kfrelease spec schema KIND``) and rendered into ``docs/spec-reference.md`` by
``reference_markdown``.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from kfrelease.errors import ConfigError

#: Spec kind -> (module, spec class, file name the data scientist or engineer edits).
SCHEMAS = {
    "dataset": ("kfrelease.data.spec", "DatasetSpec", "dataset spec (e.g. diabetes.yaml)"),
    "model": ("kfrelease.training.spec", "ModelSpec", "model.yaml"),
    "rollout": ("kfrelease.rollout.spec", "RolloutSpec", "rollout.yaml"),
}


#: A number as written: ``100`` stays an int, ``0.5`` a float (a bool is refused); "number" in the schema.
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]

T = TypeVar("T")
S = TypeVar("S", bound="SpecDocument")

#: A YAML list held as a tuple, so a frozen spec cannot change in place; "array" in the schema.
Items = Annotated[tuple[T, ...], BeforeValidator(lambda value: tuple(value) if isinstance(value, list) else value)]


def at_least(minimum: float, above: bool = False) -> AfterValidator:
    """The rule of a number key: at least ``minimum`` (``above``: more than it), e.g.
    ``Annotated[int, at_least(1)]``; null passes, and the JSON Schema is unchanged."""

    def check(value):
        if value is not None and (value < minimum or (above and value == minimum)):
            raise ValueError(f"must be {'above' if above else 'at least'} {minimum:g}, not {value!r}")
        return value

    return AfterValidator(check)


def at_most(maximum: float) -> AfterValidator:
    """The rule of a number key: at most ``maximum`` (see ``at_least``)."""

    def check(value):
        if value is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}, not {value!r}")
        return value

    return AfterValidator(check)


class _Section:
    """Marks a key whose value is a mapping of its own (see ``Section``)."""


_SECTION = _Section()

#: A section of a spec (a mapping of its own): left out or given as null, it is the section with its defaults.
Section = Annotated[T | None, _SECTION]


class SpecDocument(BaseModel):
    """Base of every spec: strict types (YAML gives native ones), unknown keys refused, frozen (a changed spec
    is a new one, validated again: ``with_changes``). ``text`` is the YAML it was read from (``parse``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    #: What a bad spec of this kind raises, and what its one line ends with.
    error: ClassVar[type[ConfigError]] = ConfigError
    error_suffix: ClassVar[str] = ""
    _text: str = PrivateAttr("")

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Each ``Section`` left out or given as null takes its defaults (an empty mapping)."""
        if not isinstance(data, dict):
            return data
        empty = {
            key: {}
            for name, field in cls.model_fields.items()
            if _SECTION in field.metadata and data.get(key := field.alias or name) is None
        }
        return {**data, **empty} if empty else data

    @property
    def text(self) -> str:
        """The YAML the spec was read from, or (built or changed in code) its YAML with every key."""
        return self._text or self.to_yaml()

    def to_yaml(self) -> str:
        """The spec as YAML with every key, defaults included."""
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)

    def with_changes(self, **changes) -> Self:
        """A copy with some keys changed, validated again (``error`` with one line when the change is not
        valid). A section's changes are a mapping merged into it, e.g. ``canary={"interval_seconds": 2}``.
        What the spec carries besides its keys (e.g. a model project's code) is kept; its ``text`` is the new
        spec's YAML."""
        data = self.model_dump(by_alias=True)
        for key, value in changes.items():
            value = _plain(value)
            data[key] = {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
        origin = f"{type(self).__name__.removesuffix('Spec').lower()} spec"
        changed = validate(type(self), data, origin, self.error, self.error_suffix)
        for name, value in (self.__pydantic_private__ or {}).items():
            if name != "_text":
                setattr(changed, name, value)
        return changed


def _plain(value):
    """Plain data of a changed value (a spec inside it is its mapping, validated again with the rest)."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def repeated(values) -> list[str]:
    """The values that occur more than once, sorted (for a key that lists names, each once)."""
    values = [str(v) for v in values]
    return sorted({v for v in values if values.count(v) > 1})


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
    "Input should be a valid tuple": "must be a list",
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
        raise error(f"{origin}: {one_line(model, exc)}{suffix}") from None


def one_line(model: type[BaseModel], exc: ValidationError) -> str:
    """What a ``ValidationError`` of ``model`` says, in one line a person reads (the first problem, and how
    many more there are)."""
    errors = _one_per_key([_clean(model, e) for e in exc.errors(include_url=False)])
    shown = _first(errors)
    if shown[0]["type"] == "extra_forbidden":  # a misspelt key also leaves its right spelling missing
        errors = [e for e in errors if not (e["type"] == "missing" and e["loc"][:-1] == shown[0]["loc"][:-1])]
    if shown[0]["type"] == "missing":
        text = "missing key(s) " + ", ".join(key_path(e["loc"]) for e in shown)
    else:
        text = describe_error(model, shown[0])
    more = f" (and {len(errors) - len(shown)} more problem(s))" if len(errors) > len(shown) else ""
    return f"{text}{more}"


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


def parse(model: type[S], text: str, origin: str, shape: str, empty_ok: bool = False) -> S:
    """The spec ``model`` a YAML text holds (its ``text`` kept), or the model's ``error`` with one line
    (``yaml_mapping``, ``validate``)."""
    doc = yaml_mapping(text, origin, shape, model.error, empty_ok)
    spec = validate(model, doc, origin, model.error, model.error_suffix)
    spec._text = text
    return spec


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
        spec = document(kind)
        lines += ["", f"## {kind}: {file}", "", " ".join((spec.__doc__ or "").split()), "", *key_rows(spec)]
    return "\n".join(lines) + "\n"


def key_rows(spec: type[BaseModel]) -> list[str]:
    """The reference table of a spec: a row per key (nested keys as paths), from its JSON Schema."""
    schema = spec.model_json_schema()
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    _rows(schema, schema.get("$defs", {}), "", lines)
    return lines
