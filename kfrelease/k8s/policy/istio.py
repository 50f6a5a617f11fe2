"""Istio authorization evaluated on rendered documents (no mesh needed).

``allowed(policies, request)`` evaluates a request as Istio does
(https://istio.io/latest/docs/reference/config/security/authorization-policy/; istio/istio
``pilot/pkg/security/authz``): CUSTOM is not used here; a matching DENY policy denies; with no ALLOW policy
applying to the workload the request is allowed; otherwise some ALLOW policy must match. A policy applies to
a workload when it is in the root namespace or the workload's namespace and its selector (if any) matches the
workload's labels. A policy without rules matches nothing; a rule ``{}`` matches everything; within a rule
``from``, ``to`` and ``when`` must all match, each list matching when any entry does; within an entry every
field given must match. Strings match exactly, by prefix (``abc*``), suffix (``*abc``) or presence (``*``).
A field it does not know raises, so it never allows by ignoring a condition.

Egress scope (``Sidecar``, https://istio.io/latest/docs/reference/config/networking/sidecar/): a sidecar proxy
loads only the services and VirtualServices its ``Sidecar`` lists in ``egress.hosts`` (``<namespace>/<dnsName>``;
namespace ``*`` any, ``.`` the workload's own, ``~`` none; dnsName ``*``, ``*.<suffix>`` or a name). Each workload
has one: a Sidecar of its namespace whose ``workloadSelector`` selects it, else its namespace's selector-less
one, else the root namespace's selector-less one, else none (every namespace). A request to a host outside that
scope leaves through Envoy's PassthroughCluster in plain text, so the destination sees no peer identity
(kubeflow/manifests ``common/istio/README.md``, "Istio Sidecar Egress"); ``peer`` says which principal a call
arrives with, and ``imports`` whether a VirtualService routes the caller's requests.

Peer authentication (``PeerAuthentication``, https://istio.io/latest/docs/reference/config/security/peer_authentication/):
``mtls_mode`` is the mode a workload's port accepts: the oldest policy of the workload's namespace whose selector
selects it (its ``portLevelMtls`` for that port first), else the namespace's selector-less one, else the root
namespace's, else ``PERMISSIVE``; ``UNSET`` inherits from the next level. ``knative_pod_probe`` is what Knative's
activator / autoscaler make of their plain-text pod-IP request (review eks3 N1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from kfrelease.k8s.render.egress import kubeflow_sidecars
from kfrelease.k8s.render.mesh import ROOT_NS, principal
from kfrelease.resources import resource_dir


@dataclass(frozen=True)
class Workload:
    namespace: str
    labels: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Request:
    """One request as the destination's sidecar sees it. ``principal`` is the peer's mTLS identity (None for
    a caller without a sidecar: plain text carries no identity, so it has no namespace either)."""

    to: Workload
    port: int
    path: str = "/"
    method: str = "GET"
    principal: str | None = None
    headers: dict = field(default_factory=dict, hash=False)
    #: ``<iss>/<sub>`` of the request's JWT verified by a RequestAuthentication (None: no verified token)
    request_principal: str | None = None

    @property
    def source_namespace(self) -> str | None:
        if not self.principal:
            return None
        parts = self.principal.split("/")
        return parts[2] if len(parts) >= 5 and parts[1] == "ns" else None


def _match(value: str | None, patterns: list[str]) -> bool:
    if value is None:
        return False
    for p in patterns:
        if p == "*" or p == value:
            return True
        if p.endswith("*") and value.startswith(p[:-1]):
            return True
        if p.startswith("*") and value.endswith(p[1:]):
            return True
    return False


_SOURCE = {
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "requestPrincipals",
    "notRequestPrincipals",
}
_OPERATION = {"ports", "notPorts", "paths", "notPaths", "methods", "notMethods"}


def _source_matches(src: dict, req: Request) -> bool:
    unknown = set(src) - _SOURCE
    if unknown:
        raise ValueError(f"AuthorizationPolicy source field(s) {sorted(unknown)} are not evaluated here")
    checks = {
        "principals": lambda v: _match(req.principal, v),
        "notPrincipals": lambda v: not _match(req.principal, v),
        "namespaces": lambda v: _match(req.source_namespace, v),
        "notNamespaces": lambda v: not _match(req.source_namespace, v),
        "requestPrincipals": lambda v: _match(req.request_principal, v),
        "notRequestPrincipals": lambda v: not _match(req.request_principal, v),
    }
    return all(checks[k](v) for k, v in src.items())


def _operation_matches(op: dict, req: Request) -> bool:
    unknown = set(op) - _OPERATION
    if unknown:
        raise ValueError(f"AuthorizationPolicy operation field(s) {sorted(unknown)} are not evaluated here")
    port, path = str(req.port), req.path.split("?")[0]
    checks = {
        "ports": lambda v: port in v,
        "notPorts": lambda v: port not in v,
        "paths": lambda v: _match(path, v),
        "notPaths": lambda v: not _match(path, v),
        "methods": lambda v: _match(req.method, v),
        "notMethods": lambda v: not _match(req.method, v),
    }
    return all(checks[k](v) for k, v in op.items())


def _condition_matches(cond: dict, req: Request) -> bool:
    key = cond["key"]
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers[") : -1].lower()
        value = next((v for k, v in req.headers.items() if k.lower() == name), None)
    elif key == "source.namespace":
        value = req.source_namespace
    elif key == "source.principal":
        value = req.principal
    elif key == "request.auth.principal":
        value = req.request_principal
    elif key == "destination.port":
        value = str(req.port)
    else:
        raise ValueError(f"AuthorizationPolicy condition key {key!r} is not evaluated here")
    ok = True
    if "values" in cond:
        ok = _match(value, cond["values"])
    if "notValues" in cond:
        ok = ok and not _match(value, cond["notValues"])
    return ok


def _rule_matches(rule: dict, req: Request) -> bool:
    unknown = set(rule) - {"from", "to", "when"}
    if unknown:
        raise ValueError(f"AuthorizationPolicy rule field(s) {sorted(unknown)} are not evaluated here")
    if "from" in rule and not any(_source_matches(f["source"], req) for f in rule["from"]):
        return False
    if "to" in rule and not any(_operation_matches(t["operation"], req) for t in rule["to"]):
        return False
    return all(_condition_matches(c, req) for c in rule.get("when") or [])


def applies(policy: dict, workload: Workload) -> bool:
    ns = policy["metadata"]["namespace"]
    if ns not in (ROOT_NS, workload.namespace):
        return False
    spec = policy.get("spec") or {}
    if "targetRef" in spec or "targetRefs" in spec:
        raise ValueError("AuthorizationPolicy targetRef(s) are not evaluated here")
    labels = (spec.get("selector") or {}).get("matchLabels")
    return not labels or all(workload.labels.get(k) == v for k, v in labels.items())


def decide(policies: list[dict], req: Request) -> tuple[bool, str]:
    """(allowed, why): Istio's decision on ``req`` under ``policies``."""
    applying = [p for p in policies if p.get("kind") == "AuthorizationPolicy" and applies(p, req.to)]
    by_action: dict[str, list[dict]] = {}
    for p in applying:
        by_action.setdefault((p.get("spec") or {}).get("action", "ALLOW"), []).append(p)
    if by_action.get("CUSTOM"):
        raise ValueError("CUSTOM AuthorizationPolicies are not evaluated here")
    for p in by_action.get("DENY", []):
        if any(_rule_matches(r, req) for r in (p.get("spec") or {}).get("rules") or []):
            return False, f"denied by DENY policy {p['metadata']['namespace']}/{p['metadata']['name']}"
    allows = by_action.get("ALLOW", [])
    if not allows:
        return True, "no ALLOW policy applies to the workload"
    for p in allows:
        if any(_rule_matches(r, req) for r in (p.get("spec") or {}).get("rules") or []):
            return True, f"allowed by {p['metadata']['namespace']}/{p['metadata']['name']}"
    names = ", ".join(f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in allows)
    return False, f"no rule of the ALLOW policies that apply ({names}) matches"


def allowed(policies: list[dict], req: Request) -> bool:
    return decide(policies, req)[0]


_EGRESS = {"hosts"}
_SIDECAR_SPEC = {"egress", "workloadSelector"}


def _selects(sidecar: dict, workload: Workload) -> bool:
    labels = ((sidecar["spec"].get("workloadSelector") or {}).get("labels")) or {}
    return all(workload.labels.get(k) == v for k, v in labels.items())


def effective_sidecar(sidecars: list[dict], workload: Workload) -> dict | None:
    """The Sidecar Istio applies to ``workload`` (None: no Sidecar, every namespace is in scope)."""
    own = [s for s in sidecars if s.get("kind") == "Sidecar" and s["metadata"]["namespace"] == workload.namespace]
    for s in sidecars:
        unknown = set(s.get("spec") or {}) - _SIDECAR_SPEC
        if unknown:
            raise ValueError(f"Sidecar {s['metadata']['name']} field(s) {sorted(unknown)} are not evaluated here")
    selected = [s for s in own if s["spec"].get("workloadSelector") and _selects(s, workload)]
    if len(selected) > 1:  # Istio: "the behavior of the system is undefined"
        raise ValueError(f"several Sidecars select {workload}: {[s['metadata']['name'] for s in selected]}")
    if selected:
        return selected[0]
    for ns in (workload.namespace, ROOT_NS):
        default = [
            s
            for s in sidecars
            if s.get("kind") == "Sidecar" and s["metadata"]["namespace"] == ns and not s["spec"].get("workloadSelector")
        ]
        if len(default) > 1:
            raise ValueError(f"namespace {ns} has several Sidecars without workloadSelector (undefined in Istio)")
        if default:
            return default[0]
    return None


def _host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return pattern == host


def in_scope(sidecars: list[dict], source: Workload, namespace: str, host: str = "*") -> tuple[bool, str]:
    """(whether ``source``'s sidecar loads ``host`` of ``namespace``, which Sidecar decided). ``host`` ``*``
    asks for any service of the namespace (a wildcard dnsName then counts only as ``*``)."""
    sidecar = effective_sidecar(sidecars, source)
    if sidecar is None:
        return True, "no Sidecar applies (Istio's default: every namespace)"
    name = f"{sidecar['metadata']['namespace']}/{sidecar['metadata']['name']}"
    for listener in sidecar["spec"].get("egress") or []:
        unknown = set(listener) - _EGRESS
        if unknown:
            raise ValueError(f"Sidecar {name} egress field(s) {sorted(unknown)} are not evaluated here")
        for entry in listener["hosts"]:
            ns, _, dns = entry.partition("/")
            ns = source.namespace if ns == "." else ns
            if ns in ("*", namespace) and (dns == "*" or (host != "*" and _host_matches(dns, host))):
                return True, f"Sidecar {name} lists {entry}"
    return False, f"Sidecar {name} does not list {namespace}/ (plain text through PassthroughCluster)"


def peer(
    sidecars: list[dict], source: Workload, service_account: str, to: Workload, host: str = "*"
) -> tuple[str | None, str]:
    """(the principal ``to``'s sidecar sees on a call from a pod of ``source`` with a sidecar, why): its mTLS
    identity when ``host`` (a Service of ``to``'s namespace; ``*``: any) is in the caller's egress scope, else
    None (plain text)."""
    ok, why = in_scope(sidecars, source, to.namespace, host)
    return (principal(source.namespace, service_account) if ok else None), why


def imports(sidecars: list[dict], source: Workload, virtual_service: dict) -> tuple[bool, str]:
    """Whether ``source``'s sidecar routes by ``virtual_service`` (gateway ``mesh``): a VirtualService is loaded
    only when one of its hosts is in the caller's egress scope in the VirtualService's namespace."""
    ns = virtual_service["metadata"]["namespace"]
    why = ""
    for host in virtual_service["spec"]["hosts"]:
        ok, why = in_scope(sidecars, source, ns, host)
        if ok:
            return True, why
    return False, why


def mtls_mode(peer_authentications: list[dict], workload: Workload, port: int) -> str:
    """``STRICT``, ``PERMISSIVE`` or ``DISABLE``: what ``workload``'s sidecar accepts on ``port`` (module docstring)."""
    docs = sorted(
        (d for d in peer_authentications if d.get("kind") == "PeerAuthentication"),
        key=lambda d: (d["metadata"].get("creationTimestamp", ""), d["metadata"]["name"]),
    )

    def selects(d: dict) -> bool:
        labels = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels")
        return bool(labels) and all(workload.labels.get(k) == v for k, v in labels.items())

    def unselected(d: dict, ns: str) -> bool:
        return d["metadata"]["namespace"] == ns and not (d.get("spec") or {}).get("selector")

    levels = [
        next((d for d in docs if d["metadata"]["namespace"] == workload.namespace and selects(d)), None),
        next((d for d in docs if unselected(d, workload.namespace)), None),
        next((d for d in docs if unselected(d, ROOT_NS)), None),
    ]
    for i, d in enumerate(levels):
        if d is None:
            continue
        spec = d.get("spec") or {}
        port_level = (spec.get("portLevelMtls") or {}).get(str(port)) if i == 0 else None
        for mode in ((port_level or {}).get("mode"), (spec.get("mtls") or {}).get("mode")):
            if mode and mode != "UNSET":
                return mode
    return "PERMISSIVE"


def knative_pod_probe(docs: list[dict], to: Workload, port: int, path: str = "/healthz") -> tuple[str, str]:
    """What Knative's activator (8012) or autoscaler (9090) does with its first, pod-IP request to ``to``:
    ``direct`` (answered 2xx: it keeps addressing pods), ``fallback`` (a mesh error: the ClusterIP is tried) or
    ``stuck`` (another status: Knative concludes there is no mesh, keeps the pod IPs and never falls back).

    The request leaves the caller's sidecar by PassthroughCluster in plain text (no peer identity). Under STRICT
    the destination refuses it and the caller's sidecar answers 503 (its HTTP listener for the ``-private``
    Service's port); otherwise the destination's authorization decides (403 when refused). Knative counts only
    502/503 as mesh errors (knative.dev/networking ``IsPotentialMeshErrorResponse``; knative/serving
    ``pkg/activator/net/revision_backends.go`` ``probe``/``checkDests``, ``pkg/autoscaler/metrics/
    http_scrape_client.go`` ``scrapeError.mightBeMesh``, ``stats_scraper.go`` ``scrapePods``)."""
    mode = mtls_mode(docs, to, port)
    if mode == "STRICT":
        return "fallback", f"{mode} on {port}: plain text refused, the caller's sidecar answers 503 (a mesh error)"
    ok, why = decide(docs, Request(to=to, port=port, path=path, principal=None))
    if ok:
        return "direct", f"{mode} on {port}, {why}"
    return "stuck", f"{mode} on {port}: 403 ({why}), not a mesh error to Knative, so no ClusterIP fallback"


def upstream_sidecars(kubeflow_version: str) -> list[dict]:
    """The Sidecars Kubeflow's install applies at that release (vendored in ``schemas/kubeflow/``)."""
    return kubeflow_sidecars(kubeflow_version)


def upstream_policies() -> list[dict]:
    """Kubeflow's ``global-deny-all`` and its ingress gateway policy (vendored in ``schemas/kubeflow/``)."""
    path = resource_dir("schemas") / "kubeflow" / "istio-policies.yaml"
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
