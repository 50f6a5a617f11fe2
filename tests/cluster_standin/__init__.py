"""A stand-in for the Kubernetes API server of an EKS cluster with Kubeflow and KServe.

It is a stand-in because the Kubernetes API cannot run on these machines. It enforces what the real one would
for the operations kfrelease sends, and says so when it cannot:

- **Authentication**: a requester is a user name and groups (``kfrelease.k8s.policy.rbac.Requester``): service
  accounts as the token authenticator presents them, IAM principals only through an EKS access entry.
- **Authorization**: RBAC from the Roles/ClusterRoles/Bindings it holds: the rendered ones, the Kubeflow profile
  controller's bindings and Kubeflow's ClusterRoles (``kubeflow_roles``, stored as Kubeflow's install applies them,
  field manager ``kubectl``; default: the shipped Kubeflow release's roles with kfrelease's backports, as the
  runbook leaves them), aggregation settled as the controller manager does (``kfrelease.k8s.policy.rbac.RBACModel``),
  re-read after every write of one of them; each verb is checked on the object's name as the request names it
  (``create`` has no name). ``kfp`` answers KFP's SubjectAccessReview, which carries the user only;
  ``access_review`` answers ``authorization.k8s.io/v1`` ``SubjectAccessReview`` and ``LocalSubjectAccessReview``
  from the same RBAC, as the API server does (kubernetes/api ``authorization/v1/types.go``; the namespace rule of
  kubernetes ``pkg/registry/authorization/localsubjectaccessreview/rest.go``). Every refusal is a 403
  ``Forbidden`` and is recorded in ``refused``.
- **Admission**: every object written is checked against its schema (``kfrelease.k8s.policy.schemas.validate``: the
  vendored CRD schemas, the Kubernetes OpenAPI for built-in kinds), once per validator given (one per
  supported KServe version); a failure is a 422 and nothing is stored. Pods are mutated by the Kubeflow
  PodDefault webhook as ``components/admission-webhook/main.go`` does (selector and namespace match, env /
  volume conflicts refuse the pod, ``serviceAccountName`` overwritten). ``create_pod``/``update_pod``/``connect``
  then apply the ServiceAccount token and EKS IRSA mutations and the bound ValidatingAdmissionPolicies
  (``kfrelease.k8s.policy.admission``, on a real CEL interpreter): a denial is a 422 (403 for ``exec``). Every
  other create, replace, merge patch, server-side apply (``UPDATE``, with ``oldObject``) and delete (``DELETE``:
  ``object`` null, ``oldObject`` the object) goes through the bound policies too.
- **Namespaces**: a namespaced object is refused (404 ``NotFound``) unless its namespace exists: a
  ``Namespace`` or Kubeflow ``Profile`` applied, or one of the namespaces an EKS cluster with Kubeflow,
  KServe and kube-prometheus-stack already has (``INSTALLED_NAMESPACES``).
- **Objects as the server returns them**: every stored object gets ``metadata.uid``, ``creationTimestamp``
  (RFC 3339) and ``generation``; a Lease's ``acquireTime``/``renewTime`` are ``MicroTime`` and are stored as
  the server writes them (``2026-01-01T10:00:00.123456Z``; a value that is not RFC 3339 is a 422), and
  ``StandInObjects.get`` hands a Lease through the ``kubernetes`` client's typed ``V1Lease`` exactly as
  ``KubernetesObjects.get`` does (so the driver reads ``...+00:00`` as it would on a real cluster).
- **Writes**: ``metadata.resourceVersion`` on every write; ``replace`` with a stale one is a 409; ``create``
  of an existing object is a 409, and so is a create while a deleted object's finalizers still hold it
  (``delete`` of an object with ``metadata.finalizers`` only sets ``deletionTimestamp``; it goes when a
  write empties them); ``create`` with ``metadata.resourceVersion`` set is refused as etcd3's store refuses
  it (``resourceVersion should not be set on objects to be created``, k8s.io/apiserver
  ``pkg/storage/etcd3/store.go``). ``patch`` is a JSON merge patch (RFC 7386: ``null`` deletes a key, objects
  merge, anything else replaces). ``apply`` is server-side apply: each field manager owns the fields it
  applied, applying a field another manager owns with a different value is a 409 conflict unless forced
  (then ownership moves), fields a manager stops applying are removed unless another manager owns them, and a
  merge patch makes its manager the owner of the fields it sets (lists are atomic, as for CRDs without
  ``x-kubernetes-list-type: map``).

What it still does not enforce (a real cluster would): ``fieldValidation`` (it always validates strictly,
as ``Strict`` does; the server's default for a client that sends none, ``Warn``, prunes unknown fields of
custom resources silently, which is why ``KubernetesObjects`` sends ``Strict``); server-side apply of
``x-kubernetes-list-type: map`` lists as maps (lists are atomic here); admission webhooks other than
KServe's validation rules and Kubeflow's PodDefault mutation (Istio's, Knative's, KServe's defaulting);
controllers (no InferenceService ever becomes Ready, no Deployment or Pod is created from it, no garbage
collection by owner references); watches, ``generateName``, label selectors beyond equality, quotas and
LimitRanges; authentication itself (a requester is given, never derived from a token).
"""

from __future__ import annotations

import base64
import copy
import datetime as _dt
import json
import threading
import uuid as _uuid
from collections.abc import Callable, Iterable

from kfrelease.errors import Conflict
from kfrelease.k8s.driver.kserve import RELEASE_KINDS, DriverForbidden, ObjectMissing
from kfrelease.k8s.driver.lease import lease_as_dict
from kfrelease.k8s.driver.patches import apply_merge_patch
from kfrelease.k8s.policy.admission import AdmissionRequest, admit
from kfrelease.k8s.policy.rbac import (
    RBACModel,
    Requester,
    environment_cluster_roles,
    kfp_requester,
)
from kfrelease.k8s.policy.schemas import SchemaValidationError, validate
from kfrelease.k8s.render.admission import ARGO_CONTROLLER, TOKEN_DIRS
from kfrelease.k8s.render.inference import production_name

#: kind -> (API group, resource) for the kinds the release touches (others: group of apiVersion, kind + "s").
RESOURCES = {
    "InferenceService": ("serving.kserve.io", "inferenceservices"),
    "VirtualService": ("networking.istio.io", "virtualservices"),
    "Lease": ("coordination.k8s.io", "leases"),
    "AuthorizationPolicy": ("security.istio.io", "authorizationpolicies"),
    "Pod": ("", "pods"),
    "Service": ("", "services"),
    "Workflow": ("argoproj.io", "workflows"),
    "WorkflowTaskResult": ("argoproj.io", "workflowtaskresults"),
    "PodDefault": ("kubeflow.org", "poddefaults"),
    "SubjectAccessReview": ("authorization.k8s.io", "subjectaccessreviews"),
    "LocalSubjectAccessReview": ("authorization.k8s.io", "localsubjectaccessreviews"),
}


#: Namespaces an EKS cluster has once Kubeflow (its ``example/``), KServe and kube-prometheus-stack are installed.
INSTALLED_NAMESPACES = {
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "istio-system",
    "auth",
    "oauth2-proxy",
    "cert-manager",
    "knative-serving",
    "kubeflow",
    "kserve",
    "monitoring",
}
#: kinds whose objects decide RBAC (a write of one makes the stand-in re-read its RBAC)
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Profile"}
#: ``metav1.MicroTime`` fields of the kinds the release writes.
MICRO_TIMES = {"Lease": ("acquireTime", "renewTime")}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason = status, reason


def _micro_time(value, where: str) -> str:
    """A MicroTime as the server stores and returns it (``metav1.MicroTime``, ``RFC3339Micro``)."""
    try:
        parsed = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ApiError(422, "Invalid", f"{where}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise ApiError(422, "Invalid", f"{where}: {value!r} has no time zone")
    return parsed.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Response:
    """What ``ApiClient.deserialize`` reads: the body of an HTTP response."""

    def __init__(self, doc: dict):
        self.data = json.dumps(doc)


def typed(doc: dict, klass: str):
    """``doc`` (the server's JSON) deserialized by the ``kubernetes`` client into its model ``klass``, as a
    read through the client returns it (kubernetes-client/python ``api_client.py`` ``deserialize``)."""
    from kubernetes.client import ApiClient

    return ApiClient().deserialize(_Response(doc), klass)


def resource_of(kind: str, api_version: str = "") -> tuple[str, str]:
    if kind in RESOURCES:
        return RESOURCES[kind]
    return api_version.rpartition("/")[0], kind.lower() + "s"


def _key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def _leaves(node, prefix=()) -> dict[tuple, object]:
    """Field path -> value of every leaf (lists are atomic)."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_leaves(v, (*prefix, k)))
        return out
    return {prefix: node}


def _get(doc, path):
    for p in path:
        if not isinstance(doc, dict) or p not in doc:
            return _MISSING
        doc = doc[p]
    return doc


def _set(doc: dict, path, value) -> None:
    for p in path[:-1]:
        doc = doc.setdefault(p, {})
    doc[path[-1]] = copy.deepcopy(value)


def _remove(doc: dict, path) -> None:
    parents = []
    for p in path[:-1]:
        if not isinstance(doc, dict) or p not in doc:
            return
        parents.append((doc, p))
        doc = doc[p]
    if isinstance(doc, dict):
        doc.pop(path[-1], None)
    for parent, p in reversed(parents):  # drop maps the removal left empty
        if parent[p] == {}:
            del parent[p]


_MISSING = object()
_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


class Cluster:
    """See the module docstring. ``docs``: what the platform engineer applied (as cluster admin); ``kserve``:
    the KServe version installed (default: ``KFRELEASE_KSERVE_VERSION`` or the newest supported);
    ``kubeflow_roles``: Kubeflow's ClusterRoles as its install left them (default: the shipped environments'
    Kubeflow release with ``kubeflow/backports.yaml`` applied; ``rbac.upstream_cluster_roles(v)`` for a cluster
    without the backport)."""

    def __init__(
        self,
        docs: Iterable[dict],
        kserve: str | None = None,
        validators: Iterable[Callable[[dict], object]] | None = None,
        kubeflow_roles: Iterable[dict] | None = None,
    ):
        from kfrelease.k8s.environments import Environment

        if kubeflow_roles is None:
            kubeflow_roles = environment_cluster_roles(Environment.kubeflow_version)
        docs = [copy.deepcopy(d) for d in [*kubeflow_roles, *docs]]
        self._rbac: RBACModel | None = None
        #: one request at a time, as ``StandInObjects`` and ``StandInServer`` send them (the release Lease's
        #: renewal thread writes beside the step's own requests; the stand-in itself is not thread-safe)
        self.lock = threading.RLock()
        #: the cluster's KServe: its CRD schemas and admission rules (``kfrelease.k8s.versions``)
        self.kserve = kserve
        self.validators = list(validators) if validators is not None else [lambda d: validate(d, kserve=kserve)]
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.managers: dict[tuple[str, str, str], dict[str, set]] = {}
        self.refused: list[str] = []
        self._rv = 0
        self.namespaces = set(INSTALLED_NAMESPACES)
        self.namespaces |= {d["metadata"]["name"] for d in docs if d.get("kind") in ("Namespace", "Profile")}
        for d in docs:
            if d.get("kind") not in ("Namespace", "CustomResourceDefinition"):
                self._store(d)
                self.managers[_key(d)] = {"kubectl": set(_leaves(d)) - _IDENTITY}

    @property
    def rbac(self) -> RBACModel:
        """RBAC as the objects held now define it (re-read after a write of a role, a binding or a Profile)."""
        if self._rbac is None:
            self._rbac = RBACModel([d for (k, _, _), d in self.objects.items() if k in RBAC_KINDS])
        return self._rbac

    # --- the API server's checks -------------------------------------------------------------------
    def authorize(self, who: Requester, verb: str, kind: str, namespace: str, name: str = "", api_version: str = ""):
        group, resource = resource_of(kind, api_version)
        if not self.rbac.allowed(who, verb, group, resource, namespace, name if verb != "create" else ""):
            what = f"{who.name} cannot {verb} {resource}.{group or 'core'} {name!r} in {namespace}"
            self.refused.append(what)
            raise ApiError(403, "Forbidden", what)

    def can(self, who: Requester, verb: str, kind: str, namespace: str, name: str = "") -> bool:
        group, resource = resource_of(kind)
        return self.rbac.allowed(who, verb, group, resource, namespace, name if verb != "create" else "")

    def kfp(self, who: Requester, verb: str, resource: str, namespace: str) -> bool:
        """KFP's SubjectAccessReview (``resource_manager.go`` ``IsAuthorized``): the user name only."""
        return self.rbac.allowed(kfp_requester(who), verb, "pipelines.kubeflow.org", resource, namespace)

    def access_review(self, who: Requester, review: dict) -> dict:
        """``POST`` of an ``authorization.k8s.io/v1`` ``SubjectAccessReview`` (cluster-scoped: ``who`` needs
        ``create subjectaccessreviews``) or ``LocalSubjectAccessReview`` (``create localsubjectaccessreviews`` in
        its namespace, which ``spec.resourceAttributes.namespace`` must equal): the review with ``status.allowed``
        and ``status.reason`` for ``spec.user`` and ``spec.groups`` (kubernetes/api ``authorization/v1/types.go``
        ``SubjectAccessReviewSpec``/``SubjectAccessReviewStatus``). Not stored, as on the API server."""
        kind, spec = review.get("kind"), review.get("spec") or {}
        ns = (review.get("metadata") or {}).get("namespace", "")
        attrs = spec.get("resourceAttributes")
        if kind == "LocalSubjectAccessReview":
            self.authorize(who, "create", kind, ns, api_version="authorization.k8s.io/v1")
            if not attrs or attrs.get("namespace") != ns:
                raise ApiError(400, "BadRequest", f"spec.resourceAttributes.namespace must match namespace: {ns}")
        elif kind == "SubjectAccessReview":
            self.authorize(who, "create", kind, "", api_version="authorization.k8s.io/v1")
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({kind})")
        if not attrs:
            raise ApiError(422, "Invalid", "spec.resourceAttributes: Required (non-resource URLs are not modelled)")
        if not spec.get("user") and not spec.get("groups"):
            raise ApiError(
                422, "Invalid", 'spec.user: Invalid value: "": at least one of user or group must be specified'
            )
        asked = Requester(spec.get("user", ""), tuple(spec.get("groups") or ()))
        name = attrs.get("name") or ""
        resource = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        why = self.rbac.why(
            asked, attrs.get("verb", ""), attrs.get("group", ""), resource, attrs.get("namespace", ""), name
        )
        status = {"allowed": bool(why)}
        if why:
            status["reason"] = "RBAC: allowed by " + "; ".join(why)
        return {**copy.deepcopy(review), "status": status}

    def _admit(self, doc: dict) -> None:
        for check in self.validators:
            try:
                check(doc)
            except SchemaValidationError as exc:  # the API server's 422
                raise ApiError(422, "Invalid", str(exc)) from None

    def _store(self, doc: dict) -> dict:
        kind, ns, name = _key(doc)
        if ns and ns not in self.namespaces:
            raise ApiError(404, "NotFound", f"namespaces {ns!r} not found ({kind} {name})")
        if kind in RBAC_KINDS:
            self._rbac = None
        self._rv += 1
        doc = copy.deepcopy(doc)
        meta = doc.setdefault("metadata", {})
        old = (self.objects.get((kind, ns, name)) or {}).get("metadata") or {}
        meta["resourceVersion"] = str(self._rv)
        meta["uid"] = old.get("uid") or str(_uuid.uuid4())
        meta["creationTimestamp"] = old.get("creationTimestamp") or _dt.datetime.now(_dt.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        before = self.objects.get((kind, ns, name))
        changed = before is None or before.get("spec") != doc.get("spec")
        meta["generation"] = int(old.get("generation") or 0) + (1 if changed else 0)
        for field in MICRO_TIMES.get(kind, ()):
            value = (doc.get("spec") or {}).get(field)
            if value is not None:
                doc["spec"][field] = _micro_time(value, f"{kind} {ns}/{name} spec.{field}")
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.objects.pop((kind, ns, name), None)  # the last finalizer went: the object goes
            return doc
        self.objects[(kind, ns, name)] = doc
        return doc

    # --- verbs -------------------------------------------------------------------------------------
    def get(self, who: Requester, kind: str, namespace: str, name: str) -> dict:
        self.authorize(who, "get", kind, namespace, name)
        doc = self.objects.get((kind, namespace, name))
        if doc is None:
            raise ApiError(404, "NotFound", f"{kind} {namespace}/{name} not found")
        return copy.deepcopy(doc)

    def list(self, who: Requester, kind: str, namespace: str, labels: dict | None = None) -> list[dict]:
        self.authorize(who, "list", kind, namespace)
        out = []
        for (k, ns, _), doc in sorted(self.objects.items()):
            have = (doc.get("metadata") or {}).get("labels") or {}
            if k == kind and ns == namespace and all(have.get(a) == b for a, b in (labels or {}).items()):
                out.append(copy.deepcopy(doc))
        return out

    def create(self, who: Requester, doc: dict, manager: str = "kfrelease") -> dict:
        kind, ns, name = _key(doc)
        self.authorize(who, "create", kind, ns, name, doc.get("apiVersion", ""))
        if (kind, ns, name) in self.objects:
            held = (self.objects[(kind, ns, name)]["metadata"]).get("deletionTimestamp")
            why = " and is being deleted (its finalizers still hold it)" if held else ""
            raise ApiError(409, "AlreadyExists", f"{kind} {ns}/{name} already exists{why}")
        if (doc.get("metadata") or {}).get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        doc = copy.deepcopy(doc)
        self._admit(doc)
        self.admit(who, "CREATE", doc)  # the bound ValidatingAdmissionPolicies, as for every write
        self.managers[(kind, ns, name)] = {manager: set(_leaves(doc)) - _IDENTITY}
        stored = self._store(doc)
        self._token_controller(stored)
        return copy.deepcopy(self.objects[(kind, ns, name)]) if (kind, ns, name) in self.objects else stored

    def _token_controller(self, secret: dict) -> None:
        """kube-controller-manager's tokens controller (kubernetes ``pkg/controller/serviceaccount/
        tokens_controller.go`` ``generateTokenIfNeeded``): a ``kubernetes.io/service-account-token`` Secret whose
        annotation names an existing service account gets ``data.token``, a non-expiring token of it (here a marker
        naming the identity)."""
        if secret.get("kind") != "Secret" or secret.get("type") != "kubernetes.io/service-account-token":
            return
        meta = secret["metadata"]
        sa = (meta.get("annotations") or {}).get("kubernetes.io/service-account.name", "")
        if ("ServiceAccount", meta["namespace"], sa) in self.objects and not (secret.get("data") or {}).get("token"):
            token = base64.b64encode(f"legacy-token:system:serviceaccount:{meta['namespace']}:{sa}".encode()).decode()
            secret.setdefault("data", {})["token"] = token

    def replace(self, who: Requester, doc: dict, manager: str = "kfrelease") -> dict:
        kind, ns, name = _key(doc)
        self.authorize(who, "update", kind, ns, name)
        have = self.objects.get((kind, ns, name))
        if have is None:
            raise ApiError(404, "NotFound", f"{kind} {ns}/{name} not found")
        if doc["metadata"].get("resourceVersion") != have["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f"{kind} {ns}/{name}: the object has been modified")
        self._admit(doc)
        self.admit(who, "UPDATE", doc, have)
        self._own(manager, (kind, ns, name), have, doc)
        return self._store(doc)

    def patch(
        self, who: Requester, kind: str, namespace: str, name: str, patch: dict, manager: str = "kfrelease"
    ) -> dict:
        self.authorize(who, "patch", kind, namespace, name)
        have = self.objects.get((kind, namespace, name))
        if have is None:
            raise ApiError(404, "NotFound", f"{kind} {namespace}/{name} not found")
        new = apply_merge_patch(have, patch)
        new["metadata"].pop("resourceVersion", None)
        self._admit(new)
        self.admit(who, "UPDATE", new, have)  # the bound ValidatingAdmissionPolicies, as for every write
        self._own(manager, (kind, namespace, name), have, new)
        return self._store(new)

    def delete(self, who: Requester, kind: str, namespace: str, name: str) -> None:
        self.authorize(who, "delete", kind, namespace, name)
        have = self.objects.get((kind, namespace, name))
        if have is None:
            raise ApiError(404, "NotFound", f"{kind} {namespace}/{name} not found")
        self.admit(who, "DELETE", None, have)  # ``object`` is null on DELETE, ``oldObject`` the object
        if have["metadata"].get("finalizers"):  # graceful: the object stays until its finalizers are removed
            have["metadata"].setdefault("deletionTimestamp", _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            return
        del self.objects[(kind, namespace, name)]
        self.managers.pop((kind, namespace, name), None)
        if kind in RBAC_KINDS:
            self._rbac = None

    def apply(self, who: Requester, doc: dict, manager: str, force: bool = False) -> dict:
        """Server-side apply (``kubectl apply --server-side --field-manager=<manager> [--force-conflicts]``)."""
        kind, ns, name = key = _key(doc)
        have = self.objects.get(key)
        if have is None:
            return self.create(who, doc, manager)
        self.authorize(who, "patch", kind, ns, name)
        applied = {
            p: v for p, v in _leaves(doc).items() if p not in _IDENTITY and p[:2] != ("metadata", "resourceVersion")
        }
        owners = self.managers.setdefault(key, {})
        conflicts = [
            f"{'.'.join(map(str, p))} (owned by {m})"
            for p, v in applied.items()
            for m, fields in owners.items()
            if m != manager and p in fields and _get(have, p) != v
        ]
        if conflicts and not force:
            raise ApiError(409, "Conflict", f"apply by {manager} conflicts: {', '.join(sorted(conflicts))}")
        new = copy.deepcopy(have)
        new["metadata"].pop("resourceVersion", None)
        others = set().union(*(f for m, f in owners.items() if m != manager)) if owners else set()
        for p in owners.get(manager, set()) - set(applied) - others:
            _remove(new, p)
        for p, v in applied.items():
            _set(new, p, v)
        self._admit(new)
        self.admit(who, "UPDATE", new, have)
        for m, fields in owners.items():
            if m != manager:
                fields -= set(applied)
        owners[manager] = set(applied)
        return self._store(new)

    def _own(self, manager: str, key, old: dict, new: dict) -> None:
        """An update/patch: its manager owns every field whose value it set or changed."""
        before, after = _leaves(old), _leaves(new)
        changed = {p for p, v in after.items() if before.get(p, _MISSING) != v} - _IDENTITY
        changed = {p for p in changed if p[:2] != ("metadata", "resourceVersion")}
        owners = self.managers.setdefault(key, {})
        for m, fields in owners.items():
            if m != manager:
                fields -= changed
        owners.setdefault(manager, set()).update(changed)
        owners[manager] &= set(after)

    # --- Kubeflow's PodDefault webhook -----------------------------------------------------------------
    def admit_pod(self, pod: dict) -> dict:
        """The pod as Kubeflow's PodDefault admission webhook leaves it (``applyPodDefaultsOnPod``)."""
        from kfrelease.k8s.policy.rbac import _selector_matches

        pod = copy.deepcopy(pod)
        ns, labels = pod["metadata"]["namespace"], pod["metadata"].get("labels") or {}
        matching = [
            d
            for (k, n, _), d in sorted(self.objects.items())
            if k == "PodDefault" and n == ns and _selector_matches(d["spec"]["selector"], labels)
        ]
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for pd in matching:
            pds = pd["spec"]
            for v in pds.get("volumes") or []:
                if v["name"] in volumes and volumes[v["name"]] != v:
                    raise ApiError(
                        400, "BadRequest", f"PodDefault {pd['metadata']['name']}: volume {v['name']} conflicts"
                    )
                volumes[v["name"]] = v
            for c in spec["containers"]:
                env = {e["name"]: e for e in c.get("env") or []}
                for e in pds.get("env") or []:
                    if e["name"] in env and env[e["name"]] != e:
                        raise ApiError(
                            400, "BadRequest", f"PodDefault {pd['metadata']['name']}: env {e['name']} conflicts"
                        )
                    env[e["name"]] = e
                c["env"] = list(env.values())
                c["volumeMounts"] = (c.get("volumeMounts") or []) + [
                    m for m in pds.get("volumeMounts") or [] if m not in (c.get("volumeMounts") or [])
                ]
            if pds.get("serviceAccountName"):
                spec["serviceAccountName"] = pds["serviceAccountName"]
            if "automountServiceAccountToken" in pds:
                spec["automountServiceAccountToken"] = pds["automountServiceAccountToken"]
        spec["volumes"] = list(volumes.values())
        pod["metadata"].setdefault("annotations", {}).update(
            {f"poddefault.admission.kubeflow.org/poddefault-{pd['metadata']['name']}": "1" for pd in matching}
        )
        return pod

    def create_pod(self, who: Requester, pod: dict) -> dict:
        """``POST pods`` as ``who``: RBAC (Argo's workflow controller, ``ARGO_CONTROLLER``, holds its own
        ClusterRole, which is not modelled), then the mutations every pod gets before validation (Kubeflow's
        PodDefaults: ``admit_pod``; the ServiceAccount admission plugin's projected token; EKS's pod identity
        webhook when the service account names an IAM role: aws/amazon-eks-pod-identity-webhook
        ``pkg/handler/handler.go``), then the bound ValidatingAdmissionPolicies (``kfrelease.k8s.policy.admission``):
        a denial is 422 Invalid with the API server's wording. Returns the stored pod."""
        ns = pod["metadata"]["namespace"]
        if who.name != ARGO_CONTROLLER:
            self.authorize(who, "create", "Pod", ns)
        pod = self.admit_pod(pod)
        spec = pod["spec"]
        sa = self.objects.get(("ServiceAccount", ns, spec.get("serviceAccountName", "default")))
        mounts = [{"name": "kube-api-access", "mountPath": TOKEN_DIRS[0], "readOnly": True}]
        volumes = [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]
        role = ((sa or {}).get("metadata", {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn")
        if role:
            mounts.append({"name": "aws-iam-token", "mountPath": TOKEN_DIRS[1], "readOnly": True})
            volumes.append(
                {
                    "name": "aws-iam-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": "sts.amazonaws.com",
                                    "expirationSeconds": 86400,
                                    "path": "token",
                                }
                            }
                        ]
                    },
                }
            )
        for c in spec["containers"] + spec.get("initContainers", []):
            c["volumeMounts"] = (c.get("volumeMounts") or []) + mounts
            if role:
                c["env"] = (c.get("env") or []) + [
                    {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "regional"},
                    {"name": "AWS_ROLE_ARN", "value": role},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": f"{TOKEN_DIRS[1]}/token"},
                ]
        spec["volumes"] = (spec.get("volumes") or []) + volumes
        self.admit(who, "CREATE", pod)
        return pod

    def admit(
        self, who: Requester, operation: str, obj: dict | None, old: dict | None = None, subresource: str = ""
    ) -> None:
        """The bound ValidatingAdmissionPolicies for one request on ``obj`` (``old`` alone on DELETE; raises 422 on
        a denial)."""
        ref = obj if obj is not None else old
        kind = ref.get("kind", "Pod")
        group, resource = resource_of(kind, ref.get("apiVersion", ""))
        req = AdmissionRequest(
            operation,
            resource,
            ref["metadata"].get("namespace", ""),
            who.name,
            obj,
            old,
            subresource,
            group,
            extra=dict(who.extra),
        )
        denials = admit(list(self.objects.values()), req)
        if denials:
            self.refused.append(str(denials[0]))
            raise ApiError(422, "Invalid", str(denials[0]))

    def update_pod(self, who: Requester, pod: dict, subresource: str = "") -> dict:
        """``PUT pods/<name>[/ephemeralcontainers]`` as ``who`` (RBAC, then the UPDATE policies)."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.authorize(who, "update", "Pod", ns, name)
        self.admit(who, "UPDATE", pod, old=self.objects.get(("Pod", ns, name)), subresource=subresource)
        return pod

    def connect(self, who: Requester, namespace: str, pod: str, subresource: str = "exec") -> None:
        """``kubectl exec``/``attach``: RBAC ``create pods/<subresource>``, then the CONNECT policies."""
        if not self.rbac.allowed(who, "create", "", f"pods/{subresource}", namespace):
            raise ApiError(403, "Forbidden", f"{who.name} cannot create pods/{subresource} in {namespace}")
        options = {"kind": "PodExecOptions", "apiVersion": "v1", "metadata": {"name": pod, "namespace": namespace}}
        req = AdmissionRequest("CONNECT", "pods", namespace, who.name, options, None, subresource)
        denials = admit(list(self.objects.values()), req)
        if denials:
            self.refused.append(str(denials[0]))
            raise ApiError(403, "Forbidden", str(denials[0]))

    def client(self, who: Requester, manager: str = "kfrelease-release") -> StandInObjects:
        return StandInObjects(self, who, manager)


class StandInObjects:
    """``kfrelease.k8s.driver.kserve.ClusterObjects`` on the stand-in, as one requester (errors mapped as
    ``KubernetesObjects`` maps the real client's: 403 -> ``DriverForbidden``, 409 -> ``Conflict``, 404 ->
    None on get and delete, ``ObjectMissing`` on patch and replace)."""

    def __init__(self, cluster: Cluster, who: Requester, manager: str):
        self.cluster, self.who, self.manager = cluster, who, manager
        self.calls: list[tuple[str, dict]] = []

    def _call(self, fn, *args, **kwargs):
        try:
            with self.cluster.lock:
                return fn(*args, **kwargs)
        except ApiError as exc:
            if exc.status == 403:
                raise DriverForbidden(str(exc)) from None
            if exc.status == 409:
                raise Conflict(str(exc)) from None
            if exc.status == 404 and fn in (self.cluster.patch, self.cluster.replace):
                raise ObjectMissing(str(exc)) from None
            raise

    def list(self, spec) -> list[dict]:
        out = []
        for _, kind, extra in RELEASE_KINDS:  # as KubernetesObjects.list: the same kinds and label selectors
            labels = {"app.kubernetes.io/part-of": "kfrelease", "kfrelease.io/model": production_name(spec)}
            labels.update(dict([extra.split("=")]) if extra else {})
            out += self._call(self.cluster.list, self.who, kind, spec.serving.namespace, labels)
        return out

    def get(self, ref: dict) -> dict | None:
        try:
            doc = self._call(self.cluster.get, self.who, ref["kind"], ref["namespace"], ref["name"])
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        if ref["kind"] == "Lease":  # as KubernetesObjects.get: the client's typed V1Lease, then lease_as_dict
            return lease_as_dict(typed(doc, "V1Lease"))
        return doc

    def patch(self, ref: dict) -> None:
        self.calls.append(("patch", copy.deepcopy(ref)))
        self._call(self.cluster.patch, self.who, ref["kind"], ref["namespace"], ref["name"], ref["patch"], self.manager)

    def create(self, doc: dict) -> None:
        self.calls.append(("create", copy.deepcopy(doc)))
        self._call(self.cluster.create, self.who, doc, self.manager)

    def replace(self, doc: dict) -> None:
        self.calls.append(("replace", copy.deepcopy(doc)))
        self._call(self.cluster.replace, self.who, doc, self.manager)

    def delete(self, ref: dict) -> None:
        self.calls.append(("delete", copy.deepcopy(ref)))
        try:
            self._call(self.cluster.delete, self.who, ref["kind"], ref["namespace"], ref["name"])
        except ApiError as exc:
            if exc.status != 404:  # gone already: what the delete was for
                raise

    def can(self, verb: str, ref: dict) -> bool:
        with self.cluster.lock:
            return self.cluster.can(self.who, verb, ref["kind"], ref["namespace"], ref.get("name", ""))

    def may(self, user: str, groups: tuple[str, ...], verb: str, ref: dict) -> bool:
        """As ``KubernetesObjects.may``: a LocalSubjectAccessReview in the object's namespace."""
        from kfrelease.k8s.driver.kserve import GROUPS, PLURALS

        ns = ref["namespace"]
        attrs = {"verb": verb, "group": GROUPS[ref["kind"]], "resource": PLURALS[ref["kind"]], "namespace": ns}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "LocalSubjectAccessReview",
            "metadata": {"namespace": ns},
            "spec": {"user": user, "groups": list(groups), "resourceAttributes": {**attrs, "name": ref.get("name")}},
        }
        answer = self._call(self.cluster.access_review, self.who, review)
        return bool(answer["status"]["allowed"])
