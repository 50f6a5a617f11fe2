"""Validate Kubernetes documents without a cluster.

- Custom resources are checked against the ``openAPIV3Schema`` of the CRD YAML vendored under
  ``schemas/crds/<project>/`` (every ``*.yaml`` there is read; documents that are CRDs are indexed by
  group/version/kind). KServe's CRDs differ per release: they live under ``schemas/crds/kserve/<version>/``
  and a document is checked against one chosen KServe version (``kserve=``, default
  ``KFRELEASE_KSERVE_VERSION`` or the newest supported one, ``kfrelease.k8s.versions``); an
  InferenceService is also checked against that version's admission rules (deployment mode, scale
  metric, ``spec.canary``: ``KServeVersion.admission_errors``). Like ``kubectl apply --validate=strict`` (server-side field validation), a field a
  structural schema does not declare is an error, unless the schema says
  ``x-kubernetes-preserve-unknown-fields``.
- Built-in kinds are checked with ``kubernetes-validate`` (the Kubernetes OpenAPI schemas, strict mode) for
  ``KFRELEASE_KUBE_VERSION`` (default: the newest version that package ships).
- Every document needs ``metadata.name`` as a DNS-1123 subdomain.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable
from pathlib import Path

import yaml

from kfrelease.config import setting
from kfrelease.errors import ConfigError
from kfrelease.k8s.versions import KServeVersion, kserve_version, newest
from kfrelease.resources import resource_dir

KSERVE_CRDS = "kserve"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SchemaValidationError(ConfigError):
    """A Kubernetes document does not match its schema; ``errors`` lists every violation found."""

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or []


def yaml_loader():
    """PyYAML's safe loader on libyaml when PyYAML was built with it (the same documents, parsed about ten
    times faster than the pure-Python one: kustomize output and CRDs run to megabytes)."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _strict(schema: dict) -> dict:
    """A copy of a structural schema where undeclared object fields are errors (strict field validation)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    # apiVersion, kind and metadata belong to every object even when a CRD's schema omits them (Istio's
    # do); metadata is checked by the API server's ObjectMeta rules, not the CRD schema.
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = {"type": "object"}
    return schema


def vendored_crds() -> Path:
    """The vendored CRDs (``schemas/crds`` of the checkout, or the copy packaged into the wheel)."""
    return resource_dir("schemas") / "crds"


def target_kserve(kserve: str | KServeVersion | None = None) -> KServeVersion:
    if isinstance(kserve, KServeVersion):
        return kserve
    return kserve_version(kserve or setting("KFRELEASE_KSERVE_VERSION") or newest().version)


def _crd_files(root: Path, kserve: str | None) -> list[Path]:
    files = sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml"))
    if kserve is None:
        return files
    kserve_root = root / KSERVE_CRDS
    return [p for p in files if kserve_root not in p.parents] + sorted((kserve_root / kserve).glob("*.yaml"))


def crd_index(crd_dir: str | None = None, kserve: str | None = None) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema, from every CRD YAML under ``crd_dir`` (default: the
    vendored CRDs, with KServe's of version ``kserve``, default the newest supported)."""
    if crd_dir:
        return _index(str(crd_dir), None)
    return _index(str(vendored_crds()), target_kserve(kserve).crd_dir_name)


@functools.lru_cache(maxsize=8)
def _index(root: str, kserve: str | None) -> dict[tuple[str, str, str], dict]:
    index: dict[tuple[str, str, str], dict] = {}
    for path in _crd_files(Path(root), kserve):
        index.update(_file_index(str(path)))
    return index


@functools.lru_cache(maxsize=64)
def _file_index(path: str) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema of the CRDs in one file (each file is parsed once)."""
    index: dict[tuple[str, str, str], dict] = {}
    with open(path, "rb") as fh:
        for doc in yaml.load_all(fh, Loader=yaml_loader()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc.get("spec", {})
            for ver in spec.get("versions", []):
                schema = (ver.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    index[(spec["group"], ver["name"], spec["names"]["kind"])] = schema
    return index


@functools.lru_cache(maxsize=64)
def _crd_validator(group: str, version: str, kind: str, crd_dir: str | None, kserve: str | None):
    import jsonschema  # optional: jsonschema (the dev extra)

    schema = crd_index(crd_dir, kserve)[(group, version, kind)]
    return jsonschema.Draft7Validator(_strict(schema))


def kube_version() -> str:
    import kubernetes_validate  # optional: kubernetes_validate (the dev extra)

    return setting("KFRELEASE_KUBE_VERSION") or kubernetes_validate.latest_version()


@functools.cache
def _kube_schema_file(filename: str, version: str):
    from kubernetes_validate import utils  # optional: kubernetes_validate (the dev extra)

    return utils.schema_contents(filename, version)


@functools.lru_cache(maxsize=256)
def _kube_validator(version: str, api_version: str, kind: str, strict: bool):
    """(the validator ``kubernetes_validate.validate`` builds for a kind, the schema version it chose), built once:
    that function re-reads and re-parses the kind's schema and the 1.3 MB ``_definitions.json`` on every call
    (most of the time of a manifests check: ~90 % of 1,264 validations). The same choice of schema version, files,
    registry and validator as kubernetes-validate 1.37.0 (kubernetes_validate/utils.py, ``validate``); a
    schema is never changed by validating with it."""
    import jsonschema  # optional: jsonschema (the dev extra)
    from kubernetes_validate import utils  # optional: kubernetes_validate (the dev extra)
    from referencing import Registry, Resource  # optional: referencing (the dev extra)

    desired = version.removeprefix("v")
    if utils.major_minor(desired) > utils.latest_version():
        raise utils.VersionNotSupportedError(version=utils.major_minor(desired))
    chosen = [v for v in utils.all_versions() if utils.major_minor(v) <= utils.major_minor(desired)][-1]
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_dir = f"v{chosen}-local" + ("-strict" if strict else "")
    try:
        schema = _kube_schema_file(f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{api}.json", desired)
    except FileNotFoundError:
        raise utils.SchemaNotFoundError(
            version=utils.major_minor(desired), kind=kind, api_version=api_version
        ) from None
    definitions = _kube_schema_file(f"kubernetes-json-schema/{schema_dir}/_definitions.json", desired)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry), utils.major_minor(chosen)


def kube_validate(doc: dict, version: str, strict: bool = True) -> str:
    """``kubernetes_validate.validate(doc, version, strict)`` with its schemas read once per process: the same
    errors (``kubernetes_validate.ValidationError``, ``SchemaNotFoundError``); returns the schema version used."""
    import jsonschema  # optional: jsonschema (the dev extra)
    from kubernetes_validate import utils  # optional: kubernetes_validate (the dev extra)

    validator, chosen = _kube_validator(version, doc["apiVersion"], doc["kind"], strict)
    try:
        validator.validate(doc)
    except jsonschema.ValidationError as exc:
        raise utils.ValidationError(exc, version=chosen) from None
    return chosen


def _where(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')} {meta.get('namespace', '')}/{meta.get('name', '?')} ({doc.get('apiVersion', '?')})"


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


def _check_object_meta(doc: dict, where: str) -> None:
    """A custom resource's metadata against the Kubernetes ObjectMeta schema (via a ConfigMap carrying it,
    strict) and the API server's label syntax (keys: optional DNS prefix + name <= 63; values <= 63)."""
    import kubernetes_validate  # optional: kubernetes_validate (the dev extra)

    kv = kube_version()
    try:
        kube_validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, kv, True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        raise SchemaValidationError(
            f"{where}: {path} does not match Kubernetes {kv} ObjectMeta: {exc.message}"
        ) from None
    for key, value in (doc["metadata"].get("labels") or {}).items():
        if not _LABEL_NAME.match(key) or len(key.rpartition("/")[2]) > 63:
            raise SchemaValidationError(f"{where}: label key {key!r} is not a valid Kubernetes label name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise SchemaValidationError(f"{where}: label {key}={value!r} is not a valid Kubernetes label value")


def validate(doc: dict, crd_dir: str | Path | None = None, kserve: str | KServeVersion | None = None) -> str:
    """Validate one document (KServe kinds against KServe ``kserve``); returns how it was validated,
    raises ``SchemaValidationError`` listing every violation."""
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        raise SchemaValidationError("a Kubernetes document needs apiVersion and kind")
    where = _where(doc)
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
        raise SchemaValidationError(
            f"{where}: metadata.name {name!r} is not a DNS-1123 name (lower case, digits, '-', '.')"
        )
    group, _, version = doc["apiVersion"].rpartition("/")
    key = (group, version, doc["kind"])
    crd_key = str(crd_dir) if crd_dir else None
    target = None if crd_dir else target_kserve(kserve)
    kserve_key = target.version if target else None
    if key in crd_index(crd_key, kserve_key):
        validator = _crd_validator(*key, crd_key, kserve_key)
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(
                validator.iter_errors(doc),
                key=lambda e: list(map(str, e.absolute_path)),
            )
        ]
        if errors:
            raise SchemaValidationError(
                f"{where} does not match its CRD schema: {'; '.join(errors[:5])}",
                errors,
            )
        _check_object_meta(doc, where)
        if target and key == ("serving.kserve.io", "v1beta1", "InferenceService"):
            errors = target.admission_errors(doc)
            if errors:
                raise SchemaValidationError("; ".join(errors), errors)
        if target and group == "serving.kserve.io":
            return f"CRD schema {group}/{version} {doc['kind']} (KServe {target.version}) + Kubernetes ObjectMeta"
        return f"CRD schema {group}/{version} {doc['kind']} + Kubernetes ObjectMeta"
    import kubernetes_validate  # optional: kubernetes_validate (the dev extra)

    kv = kube_version()
    try:
        kube_validate(doc, kv, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise SchemaValidationError(
            f"{where}: no schema for {doc['apiVersion']} {doc['kind']}: not a Kubernetes {kv} kind and no CRD under "
            f"{crd_dir or vendored_crds()} defines it"
            + (f" for KServe {target.version}" if target and group.endswith("kserve.io") else "")
            + "; vendor its CRD YAML there"
        ) from None
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path) or "<root>"
        raise SchemaValidationError(
            f"{where} does not match the Kubernetes {kv} schema: {path}: {exc.message}",
            [exc.message],
        ) from None
    return f"Kubernetes {kv} schema"


def validate_all(
    docs: Iterable[dict], crd_dir: str | Path | None = None, kserve: str | KServeVersion | None = None
) -> list[str]:
    return [validate(d, crd_dir, kserve) for d in docs]
