"""``KServeTrafficDriver``: the ``TrafficDriver`` of a cluster. It moves a release by patching the KServe
InferenceService(s) and the Istio VirtualService that ``kfrelease.k8s.render.inference`` renders from the rollout
spec: ``traffic_patches`` gives JSON merge patches (``kubectl patch --type merge``), objects to create (the
staging shadow) and to delete (it again).

Rollback in Serverless mode first sets ``canaryTrafficPercent: 0`` (KServe's instant rollback: all traffic
back to the last revision that had 100 %, no new revision; KServe docs, "Canary rollout strategy"), then rolls the
spec forward to the production version *keeping* ``canaryTrafficPercent: 0`` until the revision that creates is
ready, and only then removes it. Removing it with the spec would give the new revision 100 % at once, and Knative
routes a ``latestRevision`` target to the latest *ready* revision, the candidate's, until the new one is ready
(kserve v0.20.0 ``reconcilers/knative/ksvc_reconciler.go`` lines 132-161: no percent, the latest target gets 100).
In RawDeployment (Standard) mode the ``spec.canary`` entry's ``trafficPercent`` goes to 0 first, then the entry
is removed.

Nothing is half moved by a refusal: before the first write of a move the driver asks the API server whether
it may do every operation of it (``SelfSubjectAccessReview``; ``check_rights`` asks for a whole release up
front), and sends nothing when one is refused. Creates go first, deletes last, so the object that answers
clients is never the one missing.

One release per model at a time: the driver holds the model's ``coordination.k8s.io`` Lease
(``ClusterReleaseLock``) from its first move to the move that leaves one version serving, renewing it on each
move, while the release waits (``wait``, readiness waits) and from the lock's renewal thread whatever the step
does meanwhile (every ``RENEW_INTERVAL_SECONDS`` of a ``LEASE_DURATION_SECONDS`` Lease); a second release of the same model is refused before it sends anything
(``Conflict``), and a release whose renewal finds the Lease taken moves nothing more (``LeaseLost``). The traffic
state is recorded on the VirtualService (``kfrelease.io/traffic-state``), so a re-run after an eviction
starts from ``current()`` as the cluster holds it, and the same candidate's re-run takes its lock back.

The objects go through a small ``ClusterObjects`` interface: ``KubernetesObjects`` (the ``kubernetes``
client, in a pod with its service account) or ``InMemoryObjects`` (the objects held in memory, no
authorization; the tests' cluster stand-in in ``tests/cluster_standin`` enforces RBAC and schemas).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.k8s.driver.lease import (
    LEASE_DURATION_SECONDS,
    RENEW_INTERVAL_SECONDS,
    ClusterReleaseLock,
    LeaseLost,
    lease_as_dict,
    now_utc,
)
from kfrelease.k8s.driver.patches import apply_merge_patch, apply_plan, traffic_patches
from kfrelease.k8s.driver.readiness import unready
from kfrelease.k8s.environments import PROFILE_SA, RELEASE_NS
from kfrelease.k8s.render.inference import (
    DEFAULT_KSERVE_VERSION,
    LOGGED_CANARY_LABEL,
    production_name,
    recorded_state,
    release_service_name,
)
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA
from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficState

log = logging.getLogger(__name__)

PLURALS = {
    "InferenceService": "inferenceservices",
    "VirtualService": "virtualservices",
    "Lease": "leases",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
}
GROUPS = {
    "InferenceService": "serving.kserve.io",
    "VirtualService": "networking.istio.io",
    "Lease": "coordination.k8s.io",
    "Service": "",
    "ServiceAccount": "",
}
#: What the driver lists: the release's own objects of each kind (a Service only when it is a canary's
#: ``render.inference.logged_canary_service``: the model's ``<model>-release`` Service is the platform's).
RELEASE_KINDS = (
    ("serving.kserve.io/v1beta1", "InferenceService", ""),
    ("networking.istio.io/v1", "VirtualService", ""),
    ("v1", "Service", "kfrelease.io/logged-canary=true"),
)


#: Every write asks the server to refuse unknown or duplicate fields (``fieldValidation=Strict``). A client that
#: sends none gets the server's default, ``Warn``, which prunes the fields a CRD's schema does not know and
#: answers 200 (Kubernetes API conventions, "Field validation", GA in 1.27): a field of KServe 0.20 sent to
#: an older KServe would vanish silently instead of failing the move.
STRICT = {"field_validation": "Strict"}


class DriverForbidden(KfreleaseError):
    """The release driver's service account may not do an operation a move needs; nothing was sent."""


class DriverImpersonable(KfreleaseError):
    """Another identity may act as the release driver (impersonate its service account); nothing was sent."""


class ObjectMissing(KfreleaseError):
    """An object a move patches is not on the cluster (deleted meanwhile, e.g. by an operator)."""


class NotReady(KfreleaseError):
    """An InferenceService of the release did not become Ready in time after a move; nothing was measured."""


class ClusterObjects(Protocol):
    def list(self, spec: RolloutSpec) -> list[dict]: ...

    def get(self, ref: dict) -> dict | None: ...

    def patch(self, ref: dict) -> None: ...

    def create(self, doc: dict) -> None: ...

    def replace(self, doc: dict) -> None:
        """Update with optimistic concurrency: raises ``Conflict`` when ``metadata.resourceVersion`` is stale."""

    def delete(self, ref: dict) -> None: ...

    def can(self, verb: str, ref: dict) -> bool:
        """Whether this identity may ``verb`` the object (a SelfSubjectAccessReview)."""

    def may(self, user: str, groups: tuple[str, ...], verb: str, ref: dict) -> bool:
        """Whether another identity may ``verb`` the object (a LocalSubjectAccessReview in its namespace)."""


def _key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return (
        doc["kind"],
        meta.get("namespace", doc.get("namespace", "")),
        meta.get("name", doc.get("name")),
    )


def ref_of(doc: dict) -> dict:
    kind, ns, name = _key(doc)
    return {"apiVersion": doc["apiVersion"], "kind": kind, "namespace": ns, "name": name}


class InMemoryObjects:
    """The cluster's objects as dicts, no authorization; merge patches as RFC 7386, resourceVersions checked
    on ``replace``. Use the tests' cluster stand-in where what the API server enforces matters."""

    def __init__(self, docs: list[dict] | None = None):
        self.docs = {_key(d): copy.deepcopy(d) for d in docs or []}
        self.calls: list[tuple[str, dict]] = []
        self._rv = 0

    def _stamp(self, doc: dict) -> dict:
        self._rv += 1
        doc.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        return doc

    def list(self, spec: RolloutSpec) -> list[dict]:
        return [
            copy.deepcopy(d)
            for d in self.docs.values()
            if d["kind"] in ("InferenceService", "VirtualService")
            or (d["kind"] == "Service" and ((d["metadata"].get("labels") or {}).get(LOGGED_CANARY_LABEL)))
        ]

    def get(self, ref: dict) -> dict | None:
        doc = self.docs.get((ref["kind"], ref["namespace"], ref["name"]))
        return copy.deepcopy(doc) if doc else None

    def patch(self, ref: dict) -> None:
        key = (ref["kind"], ref["namespace"], ref["name"])
        if key not in self.docs:
            raise ObjectMissing(_missing_message(ref, "not held in memory"))
        self.docs[key] = self._stamp(apply_merge_patch(self.docs[key], ref["patch"]))
        self.calls.append(("patch", copy.deepcopy(ref)))

    def create(self, doc: dict) -> None:
        if _key(doc) in self.docs:
            raise Conflict(f"{doc['kind']} {_key(doc)[2]} already exists")
        self.docs[_key(doc)] = self._stamp(copy.deepcopy(doc))
        self.calls.append(("create", copy.deepcopy(doc)))

    def replace(self, doc: dict) -> None:
        have = self.docs.get(_key(doc))
        if have is None or have["metadata"].get("resourceVersion") != doc["metadata"].get("resourceVersion"):
            raise Conflict(f"{doc['kind']} {_key(doc)[2]} changed meanwhile")
        self.docs[_key(doc)] = self._stamp(copy.deepcopy(doc))
        self.calls.append(("replace", copy.deepcopy(doc)))

    def delete(self, ref: dict) -> None:
        self.docs.pop((ref["kind"], ref["namespace"], ref["name"]), None)
        self.calls.append(("delete", copy.deepcopy(ref)))

    def can(self, verb: str, ref: dict) -> bool:
        return True

    def may(self, user: str, groups: tuple[str, ...], verb: str, ref: dict) -> bool:
        return False  # no identities in memory: nobody else acts on these objects


class KubernetesObjects:  # pragma: no cover - needs a Kubernetes API server
    """The InferenceServices, VirtualService and Lease of the serving namespace through the ``kubernetes``
    client (``CustomObjectsApi``, ``CoordinationV1Api``, ``AuthorizationV1Api``)."""

    def __init__(self, api=None):
        from kubernetes import client, config  # heavy: kubernetes

        if api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        self.api, self._client = api, client

    @staticmethod
    def _gv(api_version: str) -> tuple[str, str]:
        group, _, version = api_version.partition("/")
        return group, version

    def _custom(self, verb: str, api_version: str, namespace: str, kind: str, *args, **kwargs):
        """``CustomObjectsApi.<verb>_namespaced_custom_object`` for ``kind`` (its group, version and plural)."""
        group, version = self._gv(api_version)
        method = getattr(self.api, f"{verb}_namespaced_custom_object")
        return self._call(method, group, version, namespace, PLURALS[kind], *args, **kwargs)

    def _call(self, fn, *args, missing=None, **kwargs):
        """``fn``, the API server's refusals as kfrelease errors. A 404 is an answer only where the caller says
        so (``missing``: the value to return, ``get`` and ``delete``); elsewhere it is ``ObjectMissing``."""
        from kubernetes.client.exceptions import ApiException  # heavy: kubernetes

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"the API server refused a write: {exc.reason}") from None
            if exc.status == 403:
                raise DriverForbidden(f"the API server refused: {exc.reason} ({exc.body})") from None
            if exc.status == 404:
                if missing is not None:
                    return missing()
                raise ObjectMissing(f"the API server answered 404 Not Found: {exc.reason} ({exc.body})") from None
            raise

    def list(self, spec: RolloutSpec) -> list[dict]:
        out = []
        for api_version, kind, extra in RELEASE_KINDS:
            selector = f"app.kubernetes.io/part-of=kfrelease,kfrelease.io/model={production_name(spec)}"
            selector += f",{extra}" if extra else ""
            if kind == "Service":
                core = self._client.CoreV1Api()
                items = core.list_namespaced_service(spec.serving.namespace, label_selector=selector)
                out += [self._core_dict(s, "Service") for s in items.items]
                continue
            group, version = self._gv(api_version)
            items = self.api.list_namespaced_custom_object(
                group, version, spec.serving.namespace, PLURALS[kind], label_selector=selector
            )
            out += items.get("items", [])
        return out

    def _core_dict(self, obj, kind: str) -> dict:
        doc = self._client.ApiClient().sanitize_for_serialization(obj)
        doc.setdefault("apiVersion", "v1")
        doc.setdefault("kind", kind)
        return doc

    def get(self, ref: dict) -> dict | None:
        if ref["kind"] == "Lease":
            api = self._client.CoordinationV1Api()
            lease = self._call(api.read_namespaced_lease, ref["name"], ref["namespace"], missing=lambda: None)
            return None if lease is None else lease_as_dict(lease)
        if ref["kind"] == "Service":
            core = self._client.CoreV1Api()
            svc = self._call(core.read_namespaced_service, ref["name"], ref["namespace"], missing=lambda: None)
            return None if svc is None else self._core_dict(svc, "Service")
        return self._custom("get", ref["apiVersion"], ref["namespace"], ref["kind"], ref["name"], missing=lambda: None)

    def patch(self, ref: dict) -> None:
        # a dict body is sent as application/merge-patch+json by the kubernetes client for custom objects.
        # A 404 is an error: the object a move patches is gone, and reporting the move as made would route
        # traffic to a Service that no longer exists.
        try:
            if ref["kind"] == "Service":
                core = self._client.CoreV1Api()
                self._call(core.patch_namespaced_service, ref["name"], ref["namespace"], ref["patch"], **STRICT)
                return
            self._custom("patch", ref["apiVersion"], ref["namespace"], ref["kind"], ref["name"], ref["patch"], **STRICT)
        except ObjectMissing as exc:
            raise ObjectMissing(_missing_message(ref, exc)) from None

    def create(self, doc: dict) -> None:
        if doc["kind"] == "Lease":
            self._call(
                self._client.CoordinationV1Api().create_namespaced_lease, doc["metadata"]["namespace"], doc, **STRICT
            )
            return
        if doc["kind"] == "Service":
            self._call(self._client.CoreV1Api().create_namespaced_service, doc["metadata"]["namespace"], doc, **STRICT)
            return
        self._custom("create", doc["apiVersion"], doc["metadata"]["namespace"], doc["kind"], doc, **STRICT)

    def replace(self, doc: dict) -> None:
        meta = doc["metadata"]
        try:
            self._call(
                self._client.CoordinationV1Api().replace_namespaced_lease,
                meta["name"],
                meta["namespace"],
                doc,
                **STRICT,
            )
        except ObjectMissing as exc:
            raise ObjectMissing(_missing_message(ref_of(doc), exc)) from None

    def delete(self, ref: dict) -> None:
        # A 404 on delete is success: the driver deletes only the staging shadow and a canary's logged Service,
        # a move's goal is that it is gone, and a re-run after an eviction (or an operator's cleanup) may find it
        # gone already.
        if ref["kind"] == "Service":
            core = self._client.CoreV1Api()
            self._call(core.delete_namespaced_service, ref["name"], ref["namespace"], missing=lambda: None)
            return
        self._custom("delete", ref["apiVersion"], ref["namespace"], ref["kind"], ref["name"], missing=lambda: None)

    def can(self, verb: str, ref: dict) -> bool:
        c = self._client
        review = c.V1SelfSubjectAccessReview(
            spec=c.V1SelfSubjectAccessReviewSpec(
                resource_attributes=c.V1ResourceAttributes(
                    verb=verb,
                    group=GROUPS[ref["kind"]],
                    resource=PLURALS[ref["kind"]],
                    namespace=ref["namespace"],
                    name=ref.get("name") if verb != "create" else None,
                )
            )
        )
        return bool(c.AuthorizationV1Api().create_self_subject_access_review(review).status.allowed)

    def may(self, user: str, groups: tuple[str, ...], verb: str, ref: dict) -> bool:
        c = self._client
        review = c.V1LocalSubjectAccessReview(
            metadata=c.V1ObjectMeta(namespace=ref["namespace"]),
            spec=c.V1SubjectAccessReviewSpec(
                user=user,
                groups=list(groups),
                resource_attributes=c.V1ResourceAttributes(
                    verb=verb,
                    group=GROUPS[ref["kind"]],
                    resource=PLURALS[ref["kind"]],
                    namespace=ref["namespace"],
                    name=ref.get("name"),
                ),
            ),
        )
        api = c.AuthorizationV1Api()
        answer = self._call(api.create_namespaced_local_subject_access_review, ref["namespace"], review)
        return bool(answer.status.allowed)


def _missing_message(ref: dict, exc: Exception) -> str:
    return (
        f"{ref['kind']} {ref['namespace']}/{ref['name']} is not on the cluster ({exc}); it was deleted while "
        "the release ran. Nothing after this write was sent; re-create it (production's objects: "
        "`kubectl create -f manifests/bootstrap/<env>/release.yaml`) and run the release again"
    )


def _terminal(state: TrafficState) -> bool:
    """A state a release ends in (its Lease is released): no shadow and no canary answering (a first model
    served alone as provisional, a canary at 100 with no primary, is still being released)."""
    return not state.shadow and not (state.canary and state.canary_weight > 0)


class KServeTrafficDriver:
    """Implements ``kfrelease.rollout.traffic.TrafficDriver`` on a cluster (see the module docstring)."""

    def __init__(
        self,
        spec: RolloutSpec,
        storage_uris: Mapping[str, str],
        objects: ClusterObjects,
        logger_url: str | None = None,
        *,
        holder: str | None = None,
        kserve_version: str | None = None,
        domain: str | None = None,
        ready_timeout: float | None = None,
        model_formats: Mapping[str, str] | None = None,
        clock=now_utc,
        sleep=None,
        lease_seconds: int = LEASE_DURATION_SECONDS,
        renew_seconds: float = RENEW_INTERVAL_SECONDS,
    ):
        self.spec, self.storage_uris, self.objects, self.logger_url = spec, dict(storage_uris), objects, logger_url
        self.kserve_version = kserve_version or DEFAULT_KSERVE_VERSION
        #: each version's ``modelFormat`` (``kfrelease.registry.artifact.model_format(entry)``)
        self.model_formats = dict(model_formats or {})
        self.domain = domain
        #: seconds to wait after a move until every InferenceService it wrote is Ready (None: do not wait)
        self.ready_timeout = ready_timeout
        self._sleep = sleep or time.sleep
        self.lock = ClusterReleaseLock(objects, spec, holder, lease_seconds, clock) if holder else None
        self.clock, self.renew_seconds = clock, float(renew_seconds)
        self._holding = False  # this release holds the model's Lease (acquired, not yet released)
        self._renewed: dt.datetime | None = None
        self._lost: str | None = None  # why this release lost its Lease: it moves nothing more
        self._state: TrafficState | None = None

    # --- the model's Lease while the release waits ---------------------------------------------------
    def _acquire(self) -> None:
        if self.lock.lost and not self._lost:
            self._lost = str(self.lock.lost)
        if self._lost:
            raise LeaseLost(f"{self._lost}; nothing was sent")
        self.lock.acquire()
        self._holding, self._renewed = True, self.clock()
        self.lock.start_renewing(self.renew_seconds)  # renewed whatever the step does until released or lost

    def _release(self) -> None:
        self.lock.release()
        self._holding = False

    def renew(self, force: bool = False) -> None:
        """Renew the model's Lease if this release holds it and ``renew_seconds`` passed since the last renewal
        (``force``: now). A renewal that finds the Lease taken raises ``LeaseLost`` and the driver sends
        nothing more: the release stops moving traffic and says so."""
        if not self.lock or not self._holding:
            return
        if self.lock.lost:  # the renewal thread found the Lease taken: nothing more is sent
            self._lost, self._holding = str(self.lock.lost), False
            raise self.lock.lost
        now = self.clock()
        if not force and self._renewed and (now - self._renewed).total_seconds() < self.renew_seconds:
            return
        try:
            self.lock.renew()
        except LeaseLost as exc:
            self._lost, self._holding = str(exc), False
            log.error("%s", exc)
            raise
        self._renewed = now

    def wait(self, seconds: float, sleep=None) -> None:
        """Sleep ``seconds`` (the controller's shadow polls and canary intervals), renewing the model's Lease
        every ``renew_seconds``, so a short Lease outlives any wait of a live release."""
        sleep = sleep or self._sleep
        remaining = float(seconds)
        while remaining > 0:
            step = min(remaining, self.renew_seconds)
            sleep(step)
            remaining -= step
            self.renew()

    @property
    def _serverless(self) -> bool:
        return self.spec.serving.deployment_mode == "Serverless"

    def current(self) -> TrafficState | None:
        """The state this driver moved to, else the one the cluster's VirtualService records."""
        if self._state is None:
            for doc in self.objects.list(self.spec):
                if (
                    doc["kind"] == "VirtualService"
                    and doc["metadata"]["name"] == f"{production_name(self.spec)}-release"
                ):
                    self._state = recorded_state(doc)
        return self._state

    def _plan(self, state: TrafficState, current: list[dict] | None = None) -> dict[str, list[dict]]:
        """The moves to ``state`` from ``current`` (default: what the cluster holds now)."""
        return traffic_patches(
            self.objects.list(self.spec) if current is None else current,
            self.spec,
            state,
            self.storage_uris,
            logger_url=self.logger_url,
            kserve_version=self.kserve_version,
            domain=self.domain,
            model_formats=self.model_formats,
        )

    def _refused(self, plan: dict[str, list[dict]]) -> list[str]:
        ops = [("create", ref_of(d)) for d in plan["create"]]
        ops += [("patch", r) for r in plan["patch"]] + [("delete", r) for r in plan["delete"]]
        return [f"{verb} {r['kind']} {r['namespace']}/{r['name']}" for verb, r in ops if not self.objects.can(verb, r)]

    def check_identity(self) -> None:
        """Raise ``DriverImpersonable`` (nothing sent) when the identity of every trusted pipeline step, the release
        namespace's ``default-editor``, may impersonate the release driver's service account: it could then send
        the driver's writes itself (``kubectl --as=system:serviceaccount:...``), with no pod and no Secret the
        admission policies see. Kubeflow v1.10.x and v1.11.0 grant it through ``kubeflow-edit``; the install's
        backport removes it (``kfrelease.k8s.render.kubeflow.kubeflow_backports``), and re-installing Kubeflow puts
        it back, so every release step asks the API server (a ``LocalSubjectAccessReview`` in the release
        namespace) before it moves anything."""
        editor = f"system:serviceaccount:{RELEASE_NS}:{PROFILE_SA}"
        groups = ("system:serviceaccounts", f"system:serviceaccounts:{RELEASE_NS}", "system:authenticated")
        driver = {"apiVersion": "v1", "kind": "ServiceAccount", "namespace": RELEASE_NS, "name": RELEASE_DRIVER_SA}
        if self.objects.may(editor, groups, "impersonate", driver):
            raise DriverImpersonable(
                f"{editor} may impersonate the release driver ({RELEASE_NS}/{RELEASE_DRIVER_SA}), so any trusted "
                "step could move production traffic as it (Kubeflow before 26.03 grants serviceaccounts "
                "impersonate through kubeflow-edit); apply the backport: kubectl apply --server-side "
                "--force-conflicts --field-manager=kfrelease -f manifests/eks/<env>/kubeflow/backports.yaml; "
                "no traffic was moved"
            )

    def check_rights(self, states: list[TrafficState]) -> None:
        """Raise ``DriverForbidden`` (nothing sent) unless every move of a release is allowed: each state is
        planned against the objects it would leave behind."""
        docs = self.objects.list(self.spec)
        refused: list[str] = []
        for state in states:
            plan = self._plan(state, docs)
            refused += [r for r in self._refused(plan) if r not in refused]
            docs = apply_plan(docs, plan)
        if self.lock:
            for verb in ("get", "update"):
                if not self.objects.can(verb, self.lock.ref):
                    refused.append(f"{verb} Lease {self.lock.ref['namespace']}/{self.lock.ref['name']}")
        if refused:
            raise DriverForbidden(
                "the release driver may not " + "; ".join(refused) + "; no traffic was moved. Grant them in "
                "Role kfrelease-release-driver (`kfrelease manifests render`) or run the release step as its "
                "service account"
            )

    def _opens(self, state: TrafficState) -> bool:
        """Whether ``state`` sends requests to a predictor the current state sends none to: a new shadow
        (mirrored copies) or a canary whose share goes up from 0. Such a predictor must serve before the
        VirtualService routes to it; a move that only takes traffic away (a rollback, a canary's share to 0) or
        routes it to a predictor that already serves (a promotion, to the canary's own Deployment) writes the
        VirtualService first."""
        before = self.current() or TrafficState(primary=None)
        new_shadow = bool(state.shadow) and state.shadow != before.shadow
        new_canary = (
            bool(state.canary)
            and state.canary_weight > 0
            and not (before.canary == state.canary and before.canary_weight > 0)
        )
        return new_shadow or new_canary

    def _move(self, state: TrafficState, wait: bool = True, check: bool = True, hold: bool = False) -> None:
        """Send the writes that move to ``state`` and (``wait`` and a ``ready_timeout``) wait until each
        InferenceService written serves its spec (``readiness.unready``). A move that opens a predictor to
        traffic (``_opens``) writes the InferenceServices, waits for them, then the VirtualService, so no
        request is routed to a predictor with no pod yet (in Standard mode the VirtualService carries the
        canary's weight, and KServe's ``Ready`` does not cover the canary: ``readiness``); any other move
        writes first the object that splits the traffic (Standard: the VirtualService; Serverless: the
        InferenceService). Deletes go last. ``hold`` (Serverless): production's InferenceService keeps
        ``canaryTrafficPercent: 0``, so the revision its new spec creates gets no traffic (``_roll_back``)."""
        if self._lost:
            raise LeaseLost(f"{self._lost}; nothing was sent, traffic is where the cluster has it")
        current = self.objects.list(self.spec)
        plan = self._plan(state, current)  # raises on a bad state before anything is sent
        if hold:
            for ref in plan["patch"]:
                if ref["kind"] == "InferenceService" and ref["name"] == production_name(self.spec):
                    ref["patch"].setdefault("spec", {}).setdefault("predictor", {})["canaryTrafficPercent"] = 0
        refused = self._refused(plan) if check else []
        if refused:
            raise DriverForbidden(
                f"the release driver may not {'; '.join(refused)}; nothing was sent, traffic is "
                f"where it was ({self.current()})"
            )
        before = {(d["kind"], d["metadata"]["name"]): d for d in current}
        isvc_patches = [r for r in plan["patch"] if r["kind"] == "InferenceService"]
        other_patches = [r for r in plan["patch"] if r["kind"] != "InferenceService"]
        written = [ref_of(d) for d in plan["create"] if d["kind"] == "InferenceService"] + isvc_patches
        waiting = wait and self.ready_timeout is not None
        opens = self._opens(state)
        # in Serverless the InferenceService's canaryTrafficPercent splits the traffic (Knative), in Standard
        # mode the VirtualService's weights: a move that takes traffic away writes that object first
        serverless = self._serverless
        for doc in plan["create"]:
            self.objects.create(doc)
        if not opens:
            for ref in [] if serverless else other_patches:
                self.objects.patch(ref)
        for ref in isvc_patches:
            self.objects.patch(ref)
        if not opens and serverless:
            for ref in other_patches:
                self.objects.patch(ref)
        if opens:
            if waiting:
                self.wait_ready(written, self.ready_timeout, before)
            for ref in other_patches:
                self.objects.patch(ref)
        for ref in plan["delete"]:
            self.objects.delete(ref)
        if waiting and not opens:
            self.wait_ready(written, self.ready_timeout, before)

    def wait_ready(self, refs: list[dict], timeout: float, before: Mapping | None = None) -> None:
        """Until each InferenceService serves what the move wrote, as KServe's controller reports it
        (``kfrelease.k8s.driver.readiness.unready``: per mode, the canary's own readiness included; never
        ``status.observedGeneration``, which KServe copies from the stable predictor's Deployment or Knative
        Service), or ``NotReady`` after ``timeout`` seconds: a step never routes to, nor measures, a predictor
        that is not serving yet. ``before``: ``(kind, name) -> object`` as read before the move."""
        deadline = time.monotonic() + timeout
        pending = list(refs)
        while pending:
            still = []
            for ref in pending:
                why = unready(
                    self.objects.get(ref) or {}, (before or {}).get((ref["kind"], ref["name"])), self.kserve_version
                )
                if why:
                    still.append((ref, why))
            if not still:
                return
            if time.monotonic() >= deadline:
                ref, why = still[0]
                raise NotReady(
                    f"InferenceService {ref['namespace']}/{ref['name']} is not Ready after {timeout:g} s "
                    f"({'; '.join(why)}); see `kubectl describe inferenceservice -n {ref['namespace']} {ref['name']}`"
                )
            pending = [ref for ref, _ in still]
            self._sleep(2.0)
            self.renew()

    def apply(self, state: TrafficState) -> None:
        before = self.current()
        if self.lock:
            self._acquire()  # Conflict before anything moves when another release holds the model
        if (
            before
            and before.canary
            and before.canary_weight > 0
            and not state.canary
            and before.primary
            and state.primary == before.primary
        ):
            rollback = before.with_canary(before.canary, 0)
        else:
            rollback = None
        try:
            if rollback:  # the canary's share to 0 first (instant), then the spec back to production
                self._move(rollback)
                if self._serverless:
                    self._move(state, hold=True)
            self._move(state)
        except NotReady as exc:
            if not _terminal(state):
                self._undo(state, exc)
            # A terminal state (promotion, rollback, a first model withdrawn): its writes are sent (those a
            # timed-out first move held back, now, without waiting), so traffic is where the release wanted
            # it and only KServe is slow to report it. The Lease goes (the model's next candidate is not
            # refused until it expires), then NotReady says so.
            self._move(state, wait=False, hold=bool(rollback) and self._serverless)
            self._state = state
            if self.lock:
                self._release()
            raise NotReady(f"{exc}; the writes of {state} were all sent and the release Lease is released") from None
        self._state = state
        if self.lock and _terminal(state):
            self._release()

    def retreat(self, state: TrafficState) -> TrafficState:
        """Take traffic off the release's candidate at once, within the second a release step has after
        SIGTERM under KFP (see ``kfrelease.release.pipeline_steps.terminable``): no access reviews (a refusal
        would come from the server anyway), no readiness wait, the VirtualService written before the
        InferenceService (``_move``), then the Lease released. In Serverless a canary only goes to 0 %
        (KServe's instant rollback: Knative routes everything to the last revision rolled out at 100 %, no new
        revision); rolling the spec back to production creates a new revision, and until it is ready Knative
        would route that ``latestRevision`` target to the latest *ready* one, the candidate's. The next release
        of the model rolls the spec forward from there. Returns the state left on the cluster."""
        if self._lost:  # another release holds the model now: its traffic is that release's to move
            log.error("%s; the retreat sends nothing", self._lost)
            return self.current() or state
        before = self.current()
        target = state
        if (
            self.spec.serving.deployment_mode == "Serverless"
            and before
            and before.canary
            and before.canary_weight > 0
            and before.primary
            and state.primary == before.primary
            and not state.canary
        ):
            target = before.with_canary(before.canary, 0)
        self._move(target, wait=False, check=False)
        self._state = target
        if self.lock:
            self._release()
        return target

    def recover(self) -> TrafficState | None:
        """A release abandoned mid-way (its step killed before or during its move back: a KFP Terminate, an
        eviction, a node lost) leaves the VirtualService recording a shadow or a canary with a share while no
        live release holds the model's Lease (released, or not renewed for its duration). Before anything else
        a release step moves such traffic back to the recorded production version (``retreat``) and says so;
        returns the abandoned state, or None when there is nothing to recover (the model serves one version,
        a live release holds the Lease, or a first model serves alone with nothing to go back to)."""
        state = self.current()
        if not self.lock or state is None or _terminal(state) or not state.primary:
            return None
        lease = self.objects.get(self.lock.ref)
        holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
        if holder and (holder == self.lock.holder or not self.lock._expired(lease)):
            # a live release, or this very release's next step or re-run (its Lease may have expired between
            # two steps, or while its pod was rescheduled): it resumes from the state the cluster records
            return None
        self._acquire()  # Conflict when another release took the model meanwhile: it moves traffic itself

        log.warning(
            "the release recorded on VirtualService %s/%s (%s) was abandoned (its Lease is %s); moving all "
            "traffic back to %s first",
            self.spec.serving.namespace,
            release_service_name(self.spec),
            state,
            "free" if lease is None or not (lease.get("spec") or {}).get("holderIdentity") else "expired",
            state.primary,
        )
        self.retreat(TrafficState(primary=state.primary))
        return state

    def _undo(self, state: TrafficState, exc: NotReady) -> None:
        """A shadow or canary whose InferenceService did not become Ready in time: every request back to the
        primary (the staging shadow and the canary removed, without waiting: production did not change), the
        model's Lease released, then ``NotReady`` saying so. Left as it was, the mirror or the canary's share
        would point at a predictor that does not answer, and the Lease would block every later candidate of
        the model until it expired."""
        back = TrafficState(primary=state.primary or state.canary)
        rollback = bool(state.canary and state.primary and state.canary_weight > 0)
        if rollback:  # as a rollback: the share to 0 first
            self._move(state.with_canary(state.canary, 0), wait=False)
        # Serverless: the spec goes back with canaryTrafficPercent 0 kept (no wait here), so Knative gives the
        # new revision nothing; the model's next release removes it
        self._move(back, wait=False, hold=rollback and self._serverless)
        self._state = back
        if self.lock:
            self._release()
        raise NotReady(f"{exc}; all traffic is back on {back.primary} and the release Lease is released") from None
