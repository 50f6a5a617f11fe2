"""A small Kubernetes RBAC evaluator: which subject may use which verb on which resource in a namespace.

It reads Roles, ClusterRoles (with aggregation rules, resolved like the controller does), RoleBindings and
ClusterRoleBindings, plus the bindings the Kubeflow profile controller creates for each Profile (owner ->
``kubeflow-admin`` as ``namespaceAdmin``; service accounts ``default-editor`` -> ``kubeflow-edit`` and
``default-viewer`` -> ``kubeflow-view``). A binding to a role it does not know fails loudly, so it can never
under-approximate by silence. Kubernetes RBAC only allows (no deny rules): a request is allowed when any
rule of any bound role matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RBAC = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Subject:
    kind: str  # User, Group, ServiceAccount
    name: str
    namespace: str = ""
    groups: tuple[str, ...] = ()

    def identities(self) -> set[tuple[str, str, str]]:
        """Every (kind, name, namespace) a binding subject may name to match this requester."""
        ids = {
            (
                self.kind,
                self.name,
                self.namespace if self.kind == "ServiceAccount" else "",
            )
        }
        groups = set(self.groups) | {"system:authenticated"}
        if self.kind == "ServiceAccount":
            groups |= {
                "system:serviceaccounts",
                f"system:serviceaccounts:{self.namespace}",
            }
        ids |= {("Group", g, "") for g in groups}
        return ids


def user(name: str, *groups: str) -> Subject:
    return Subject("User", name, groups=tuple(groups))


def service_account(namespace: str, name: str) -> Subject:
    return Subject("ServiceAccount", name, namespace)


@dataclass
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: list[tuple[str, str, str]] = field(default_factory=list)
    origin: str = ""


class RBACModel:
    def __init__(self, docs: list[dict]):
        self.cluster_roles: dict[str, dict] = {}
        self.roles: dict[tuple[str, str], dict] = {}
        self.bindings: list[Binding] = []
        for d in docs:
            kind, meta = d.get("kind"), d.get("metadata") or {}
            if kind == "ClusterRole":
                self.cluster_roles[meta["name"]] = d
            elif kind == "Role":
                self.roles[(meta["namespace"], meta["name"])] = d
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                ns = meta.get("namespace", "") if kind == "RoleBinding" else ""
                subjects = [
                    (
                        s["kind"],
                        s["name"],
                        s.get("namespace", ns) if s["kind"] == "ServiceAccount" else "",
                    )
                    for s in d.get("subjects") or []
                ]
                ref = d["roleRef"]
                self.bindings.append(
                    Binding(
                        ns,
                        ref["kind"],
                        ref["name"],
                        subjects,
                        f"{kind} {ns}/{meta['name']}",
                    )
                )
            elif kind == "Profile":
                ns = meta["name"]
                owner = d["spec"]["owner"]
                self.bindings += [
                    Binding(
                        ns,
                        "ClusterRole",
                        "kubeflow-admin",
                        [(owner["kind"], owner["name"], "")],
                        f"Profile {ns} owner (namespaceAdmin)",
                    ),
                    Binding(
                        ns,
                        "ClusterRole",
                        "kubeflow-edit",
                        [("ServiceAccount", "default-editor", ns)],
                        f"Profile {ns} default-editor",
                    ),
                    Binding(
                        ns,
                        "ClusterRole",
                        "kubeflow-view",
                        [("ServiceAccount", "default-viewer", ns)],
                        f"Profile {ns} default-viewer",
                    ),
                ]

    def cluster_role_rules(
        self, name: str, seen: frozenset = frozenset()
    ) -> list[dict]:
        if name not in self.cluster_roles:
            raise KeyError(
                f"ClusterRole {name!r} is bound but not defined (rendered or vendored upstream)"
            )
        role = self.cluster_roles[name]
        agg = role.get("aggregationRule")
        if not agg:
            return list(role.get("rules") or [])
        rules = []
        for other_name, other in self.cluster_roles.items():
            if other_name == name or other_name in seen:
                continue
            labels = (other.get("metadata") or {}).get("labels") or {}
            for sel in agg.get("clusterRoleSelectors") or []:
                if all(
                    labels.get(k) == v
                    for k, v in (sel.get("matchLabels") or {}).items()
                ):
                    rules += self.cluster_role_rules(other_name, seen | {name})
                    break
        return rules

    def _rules(self, b: Binding) -> list[dict]:
        if b.role_kind == "ClusterRole":
            return self.cluster_role_rules(b.role_name)
        key = (b.namespace, b.role_name)
        if key not in self.roles:
            raise KeyError(f"{b.origin} refers to Role {key} which is not defined")
        return list(self.roles[key].get("rules") or [])

    def why(
        self,
        who: Subject,
        verb: str,
        group: str,
        resource: str,
        namespace: str,
        name: str = "",
    ) -> list[str]:
        """The bindings that allow the request (empty: denied)."""
        ids = who.identities()
        reasons = []
        for b in self.bindings:
            if b.namespace not in ("", namespace):
                continue
            if not ids & set(b.subjects):
                continue
            for rule in self._rules(b):
                if _matches(rule, verb, group, resource, name):
                    reasons.append(f"{b.origin} -> {b.role_kind} {b.role_name}")
                    break
        return reasons

    def allowed(
        self,
        who: Subject,
        verb: str,
        group: str,
        resource: str,
        namespace: str,
        name: str = "",
    ) -> bool:
        return bool(self.why(who, verb, group, resource, namespace, name))

    def subjects(self, namespace: str) -> set[Subject]:
        """Every subject named by a binding that applies in ``namespace``."""
        out = set()
        for b in self.bindings:
            if b.namespace in ("", namespace):
                for kind, name, ns in b.subjects:
                    out.add(Subject(kind, name, ns))
        return out


def _matches(rule: dict, verb: str, group: str, resource: str, name: str) -> bool:
    if "nonResourceURLs" in rule and not rule.get("resources"):
        return False
    verbs, groups, resources = (
        rule.get("verbs") or [],
        rule.get("apiGroups") or [],
        rule.get("resources") or [],
    )
    names = rule.get("resourceNames") or []
    return (
        ("*" in verbs or verb in verbs)
        and ("*" in groups or group in groups)
        and ("*" in resources or resource in resources)
        and (not names or name in names)
    )
