"""ValidatingAdmissionPolicies (``admissionregistration.k8s.io/v1``) evaluated offline, as the API server does.

For one request (operation, resource, subresource, namespace, user, object), every
``ValidatingAdmissionPolicyBinding`` of the documents whose policy matches is applied in the order of
kubernetes ``staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating`` (the v1 API reference,
"validating-admission-policy-v1"): the policy's ``matchConstraints.resourceRules`` (group, version, operation,
``resource/subresource``) and the binding's ``matchResources.namespaceSelector`` select the request; any
``matchConditions`` expression that is false skips the policy; ``variables`` are evaluated in order into
``variables``; each ``validations`` expression must be true, else the request is denied with the validation's
message (``failurePolicy: Fail``: an expression that errors denies too). The expressions run on a real CEL
interpreter (cel-python), not a re-implementation of what they say.

What it does not model: ``params``/``paramKind``, ``authorizer``, ``messageExpression``, ``auditAnnotations``,
``validationActions`` other than ``Deny``, the API server's CEL cost limits and type checking against the
OpenAPI schema (an expression the server would refuse to compile is only caught by evaluating it here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import celpy

from kfrelease.errors import ConfigError
from kfrelease.k8s.policy.rbac import _selector_matches


@dataclass(frozen=True)
class AdmissionRequest:
    operation: str  # CREATE, UPDATE, DELETE, CONNECT
    resource: str  # e.g. "pods"
    namespace: str
    username: str
    object: dict | None = None
    old_object: dict | None = None
    subresource: str = ""
    group: str = ""
    version: str = "v1"
    namespace_labels: dict = field(default_factory=dict)
    #: the user's extra attributes (a token bound to a pod: ``authentication.kubernetes.io/pod-name`` ...)
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return ((self.object or self.old_object or {}).get("metadata") or {}).get("name", "")


@dataclass(frozen=True)
class Denial:
    policy: str
    binding: str
    message: str

    def __str__(self) -> str:  # the API server's wording (validating admission policy dispatcher)
        return f"ValidatingAdmissionPolicy '{self.policy}' with binding '{self.binding}' denied request: {self.message}"


_ENV = celpy.Environment()


def _substring(text, start, end=None):
    """cel-go's strings extension ``<string>.substring(start[, end])`` (code points; out of range is an error)."""
    text, start = str(text), int(start)
    end = len(text) if end is None else int(end)
    if not 0 <= start <= end <= len(text):
        raise IndexError(f"substring({start}, {end}) of a string of length {len(text)}")
    return celpy.celtypes.StringType(text[start:end])


def _last_index_of(text, sub):
    """cel-go's strings extension ``<string>.lastIndexOf(sub)`` (-1 when absent)."""
    return celpy.celtypes.IntType(str(text).rfind(str(sub)))


#: The functions of cel-go's strings extension the policies use: Kubernetes' CEL base environment has the library
#: from 1.29 (kubernetes ``staging/src/k8s.io/apiserver/pkg/cel/environment/base.go``: ``ext.Strings(ext.StringsVersion(2))``);
#: cel-python has only the standard functions.
KUBERNETES_FUNCTIONS = {"substring": _substring, "lastIndexOf": _last_index_of}


@functools.lru_cache(maxsize=512)
def _program(expression: str):
    return _ENV.program(_ENV.compile(expression), functions=KUBERNETES_FUNCTIONS)


def _rule_matches(rule: dict, req: AdmissionRequest) -> bool:
    resource = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    return (
        any(g in ("*", req.group) for g in rule.get("apiGroups", []))
        and any(v in ("*", req.version) for v in rule.get("apiVersions", []))
        and any(o in ("*", req.operation) for o in rule.get("operations", []))
        and any(
            r in ("*", resource) or (r == f"{req.resource}/*" and req.subresource) for r in rule.get("resources", [])
        )
    )


def _activation(req: AdmissionRequest) -> dict:
    request = {
        "operation": req.operation,
        "namespace": req.namespace,
        "name": req.name,
        "resource": {"group": req.group, "version": req.version, "resource": req.resource},
        "subResource": req.subresource,
        "userInfo": {"username": req.username, **({"extra": req.extra} if req.extra else {})},
    }
    return {
        "object": celpy.json_to_cel(req.object),
        "oldObject": celpy.json_to_cel(req.old_object),
        "request": celpy.json_to_cel(request),
        "namespaceObject": celpy.json_to_cel({"metadata": {"name": req.namespace, "labels": req.namespace_labels}}),
    }


def _true(expression: str, activation: dict) -> bool:
    result = _program(expression).evaluate(activation)
    if isinstance(result, Exception):
        raise result
    if not isinstance(result, celpy.celtypes.BoolType):
        raise ConfigError(f"CEL expression {expression[:80]!r}... is not a bool: {result!r}")
    return bool(result)


def _evaluate(policy: dict, binding: str, req: AdmissionRequest) -> Denial | None:
    name, spec = policy["metadata"]["name"], policy["spec"]
    activation = _activation(req)
    try:
        for cond in spec.get("matchConditions", []):
            if not _true(cond["expression"], activation):
                return None
        variables = celpy.celtypes.MapType({})
        for var in spec.get("variables", []):  # each sees the ones before it, as ``variables.<name>``
            activation["variables"] = variables
            value = _program(var["expression"]).evaluate(activation)
            if isinstance(value, Exception):
                raise value
            variables = celpy.celtypes.MapType({**variables, celpy.celtypes.StringType(var["name"]): value})
        activation["variables"] = variables
        for validation in spec.get("validations", []):
            if not _true(validation["expression"], activation):
                return Denial(
                    name, binding, validation.get("message") or f"failed expression: {validation['expression']}"
                )
    except (celpy.CELEvalError, celpy.CELParseError, TypeError, ValueError, KeyError, IndexError) as exc:
        if spec.get("failurePolicy", "Fail") == "Fail":
            return Denial(name, binding, f"expression could not be evaluated: {exc}")
    return None


def admit(docs: list[dict], req: AdmissionRequest) -> list[Denial]:
    """The denials of every bound ValidatingAdmissionPolicy of ``docs`` for ``req`` (empty: admitted)."""
    policies = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ValidatingAdmissionPolicy"}
    ns_labels = {"kubernetes.io/metadata.name": req.namespace, **req.namespace_labels}
    denials = []
    for binding in (d for d in docs if d.get("kind") == "ValidatingAdmissionPolicyBinding"):
        spec = binding["spec"]
        policy = policies.get(spec["policyName"])
        if policy is None:
            continue  # a binding of a missing policy is ignored by the API server
        if spec.get("validationActions") != ["Deny"]:
            raise ConfigError(f"binding {binding['metadata']['name']}: only validationActions [Deny] is modelled")
        selector = (spec.get("matchResources") or {}).get("namespaceSelector")
        if selector and not _selector_matches(selector, ns_labels):
            continue
        if not any(_rule_matches(r, req) for r in policy["spec"]["matchConstraints"]["resourceRules"]):
            continue
        denial = _evaluate(policy, binding["metadata"]["name"], req)
        if denial:
            denials.append(denial)
    return denials
