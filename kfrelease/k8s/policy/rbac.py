"""Kubernetes RBAC as the API server evaluates it, on rendered documents (no cluster needed).

- **Who is asking.** A requester is a user name and the groups its authenticator gave it
  (``k8s.io/apiserver`` ``user.Info``). A service account authenticates as
  ``system:serviceaccount:<ns>:<name>`` with groups ``system:serviceaccounts``,
  ``system:serviceaccounts:<ns>`` and ``system:authenticated``; an IAM principal on EKS gets the user name and
  ``kubernetesGroups`` of its access entry (eksctl ``accessConfig.accessEntries``) and nothing else; a person
  signed in to Kubeflow (Dex / oauth2-proxy) has no Kubernetes credentials at all.
- **KFP.** The Kubeflow Pipelines API server authorizes each call with a SubjectAccessReview that carries the
  user only, no groups (kubeflow/pipelines ``backend/src/apiserver/resource/resource_manager.go``
  ``IsAuthorized``: ``SubjectAccessReviewSpec{User: userIdentity, ResourceAttributes: ...}``), so a
  RoleBinding to a Group never grants a pipeline-run right: ``kfp_requester`` builds that requester.
- **Matching** (``k8s.io/kubernetes`` ``plugin/pkg/auth/authorizer/rbac/rbac.go`` and
  ``pkg/apis/rbac/v1/evaluation_helpers.go``): a binding applies when a subject names the user (``User``),
  one of its groups (``Group``) or the service account whose user name it is (``ServiceAccount``); a rule
  matches on verb, API group, resource (``resource/subresource``) and, when given, resource name; ``*``
  matches anything. RBAC only allows: a request is allowed when any rule of any applying binding matches.
- **Aggregation** (``pkg/controller/clusterroleaggregation``): a ClusterRole with an ``aggregationRule``
  gets the union of the rules of every ClusterRole selected by any of its ``clusterRoleSelectors``
  (``matchLabels`` and ``matchExpressions``), itself excluded; the controller repeats until nothing changes.
- **Profiles.** The Kubeflow profile controller binds, in each Profile's namespace, its owner to
  ``kubeflow-admin`` and the service accounts ``default-editor`` / ``default-viewer`` to ``kubeflow-edit`` /
  ``kubeflow-view`` (kubeflow/dashboard ``components/profile-controller/controllers/profile_controller.go``).

A binding to a role that is neither rendered nor vendored raises, so the evaluator never under-approximates by
silence. The vendored upstream ClusterRoles are ``schemas/kubeflow/cluster-roles/<tag>.yaml``, one file per
supported Kubeflow release: they differ (kubeflow/manifests v1.10.x and v1.11.0 ``kubeflow-kubernetes-edit``
grants ``serviceaccounts: [impersonate]``, removed in 26.03 by ce9d368 "block-impersonating-serviceaccounts
(#3372)"), so an environment is evaluated on the roles of its own ``kubeflow_version``, plus what kfrelease applies
over them (``kfrelease.k8s.render.kubeflow.kubeflow_backports``: ``environment_cluster_roles``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kfrelease.errors import ConfigError
from kfrelease.k8s.render.kubeflow import kubeflow_backports, kubeflow_cluster_roles

RBAC = "rbac.authorization.k8s.io"
SA_PREFIX = "system:serviceaccount:"


def upstream_cluster_roles(kubeflow_version: str) -> list[dict]:
    """Kubeflow's ClusterRoles (kubeflow-admin/edit/view and everything aggregated into them) as the manifests of
    that Kubeflow release install them, vendored; a release without vendored roles is a ``ConfigError``."""
    return kubeflow_cluster_roles(kubeflow_version)


def environment_cluster_roles(kubeflow_version: str) -> list[dict]:
    """The Kubeflow ClusterRoles a cluster of that release holds once kfrelease's install steps ran: the vendored
    upstream roles, each one kfrelease replaces (``kubeflow_backports``) replaced."""
    replaced = {d["metadata"]["name"]: d for d in kubeflow_backports(kubeflow_version)}
    return [replaced.get(d["metadata"]["name"], d) for d in upstream_cluster_roles(kubeflow_version)]


@dataclass(frozen=True)
class Requester:
    """A user name and the groups its authenticator gave it (``user.Info``), and the extra attributes it set (a
    token bound to a pod: ``authentication.kubernetes.io/pod-name`` ...), which admission policies read."""

    name: str
    groups: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def service_account(self) -> tuple[str, str] | None:
        if not self.name.startswith(SA_PREFIX):
            return None
        ns, _, sa = self.name[len(SA_PREFIX) :].partition(":")
        return ns, sa


def service_account(namespace: str, name: str) -> Requester:
    """A pod's service account, as the token authenticator presents it to the Kubernetes API."""
    return Requester(
        f"{SA_PREFIX}{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
    )


def kfp_requester(who: Requester) -> Requester:
    """The same identity as KFP's SubjectAccessReview carries it: the user name only, no groups."""
    return Requester(who.name)


def access_entry_requester(cluster_config: dict, principal_arn: str, session: str = "ci") -> Requester:
    """An IAM principal on EKS: the groups of its access entry in the eksctl ClusterConfig. A principal
    without an entry is not a Kubernetes user at all (``ConfigError``)."""
    for entry in (cluster_config.get("accessConfig") or {}).get("accessEntries") or []:
        if entry.get("principalARN") == principal_arn:
            name = entry.get("username") or f"{principal_arn}/{session}"
            return Requester(name, (*entry.get("kubernetesGroups", []), "system:authenticated"))
    raise ConfigError(f"no EKS access entry maps {principal_arn}; it cannot reach the Kubernetes API")


@dataclass
class Binding:
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: list[dict] = field(default_factory=list)
    origin: str = ""

    def applies_to(self, who: Requester) -> bool:
        for s in self.subjects:
            kind, name = s.get("kind"), s.get("name")
            if kind == "User" and name == who.name:
                return True
            if kind == "Group" and name in who.groups:
                return True
            if kind == "ServiceAccount":
                ns = s.get("namespace") or self.namespace
                if who.name == f"{SA_PREFIX}{ns}:{name}":
                    return True
        return False


def _selector_matches(sel: dict, labels: dict) -> bool:
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _aggregate(cluster_roles: dict[str, dict]) -> dict[str, list[dict]]:
    """Each ClusterRole's effective rules after the aggregation controller settled."""
    rules = {n: list(r.get("rules") or []) for n, r in cluster_roles.items()}
    changed = True
    while changed:
        changed = False
        for name, role in cluster_roles.items():
            agg = role.get("aggregationRule")
            if not agg:
                continue
            union: list[dict] = []
            for other, doc in sorted(cluster_roles.items()):
                if other == name:
                    continue
                labels = (doc.get("metadata") or {}).get("labels") or {}
                if any(_selector_matches(s, labels) for s in agg.get("clusterRoleSelectors") or []):
                    union += [r for r in rules[other] if r not in union]
            if union != rules[name]:
                rules[name], changed = union, True
    return rules


def profile_bindings(profile: dict) -> list[Binding]:
    ns, owner = profile["metadata"]["name"], profile["spec"]["owner"]
    return [
        Binding(ns, "ClusterRole", "kubeflow-admin", [dict(owner)], f"Profile {ns} owner (namespaceAdmin)"),
        Binding(
            ns,
            "ClusterRole",
            "kubeflow-edit",
            [{"kind": "ServiceAccount", "name": "default-editor"}],
            f"Profile {ns} default-editor",
        ),
        Binding(
            ns,
            "ClusterRole",
            "kubeflow-view",
            [{"kind": "ServiceAccount", "name": "default-viewer"}],
            f"Profile {ns} default-viewer",
        ),
    ]


def _rule_matches(rule: dict, verb: str, group: str, resource: str, name: str) -> bool:
    if not rule.get("resources"):
        return False  # a nonResourceURLs rule
    verbs, groups, resources = rule.get("verbs") or [], rule.get("apiGroups") or [], rule["resources"]
    names = rule.get("resourceNames") or []
    return (
        ("*" in verbs or verb in verbs)
        and ("*" in groups or group in groups)
        and ("*" in resources or resource in resources)
        and (not names or name in names)
    )


class RBACModel:
    """Roles, ClusterRoles (aggregated) and bindings of a set of documents, plus the Profiles' bindings."""

    def __init__(self, docs: list[dict]):
        cluster_roles: dict[str, dict] = {}
        self.roles: dict[tuple[str, str], list[dict]] = {}
        self.bindings: list[Binding] = []
        for d in docs:
            kind, meta = d.get("kind"), d.get("metadata") or {}
            if kind == "ClusterRole":
                cluster_roles[meta["name"]] = d
            elif kind == "Role":
                self.roles[(meta["namespace"], meta["name"])] = list(d.get("rules") or [])
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                ns = meta.get("namespace", "") if kind == "RoleBinding" else ""
                ref = d["roleRef"]
                self.bindings.append(
                    Binding(
                        ns,
                        ref["kind"],
                        ref["name"],
                        list(d.get("subjects") or []),
                        f"{kind} {ns + '/' if ns else ''}{meta['name']}",
                    )
                )
            elif kind == "Profile":
                self.bindings += profile_bindings(d)
        self.cluster_rules = _aggregate(cluster_roles)

    def _rules(self, b: Binding) -> list[dict]:
        if b.role_kind == "ClusterRole":
            if b.role_name not in self.cluster_rules:
                raise KeyError(f"{b.origin} binds ClusterRole {b.role_name!r}, which is neither rendered nor vendored")
            return self.cluster_rules[b.role_name]
        key = (b.namespace, b.role_name)
        if key not in self.roles:
            raise KeyError(f"{b.origin} refers to Role {key}, which is not defined")
        return self.roles[key]

    def why(self, who: Requester, verb: str, group: str, resource: str, namespace: str, name: str = "") -> list[str]:
        """The bindings that allow the request (empty: the API server answers 403)."""
        reasons = []
        for b in self.bindings:
            if b.namespace not in ("", namespace) or not b.applies_to(who):
                continue
            if any(_rule_matches(r, verb, group, resource, name) for r in self._rules(b)):
                reasons.append(f"{b.origin} -> {b.role_kind} {b.role_name}")
        return reasons

    def allowed(self, who: Requester, verb: str, group: str, resource: str, namespace: str, name: str = "") -> bool:
        return bool(self.why(who, verb, group, resource, namespace, name))

    def subjects(self, namespace: str) -> list[dict]:
        """Every subject named by a binding that applies in ``namespace`` (with the binding's namespace)."""
        out = []
        for b in self.bindings:
            if b.namespace in ("", namespace):
                out += [{**s, "bound_in": b.namespace} for s in b.subjects]
        return out

    def group_bindings(self) -> list[str]:
        """Bindings that name a Group (they apply only to requesters an authenticator puts in that group)."""
        return [b.origin for b in self.bindings if any(s.get("kind") == "Group" for s in b.subjects)]


def requester_of(subject: dict, bound_in: str = "") -> Requester:
    """The requester a binding subject stands for (a Group has no requester of its own)."""
    if subject["kind"] == "ServiceAccount":
        return service_account(subject.get("namespace") or bound_in, subject["name"])
    if subject["kind"] == "User":
        return Requester(subject["name"])
    raise ValueError(f"a {subject['kind']} subject is not one requester")
