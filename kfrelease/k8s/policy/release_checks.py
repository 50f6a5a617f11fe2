"""Checks of one environment's rendered documents against what the release needs on the cluster; each returns
findings (empty: fine). Finding classes: RBAC (who can stop a run, group bindings that never apply, what the
merged model code's identity holds), the driver's rights against the operations of a whole release, and the
mesh's AuthorizationPolicies against the flows of the data path. ``kfrelease manifests check`` runs them
as its ``release-path`` check (``kfrelease.k8s.policy.checks``)."""

from __future__ import annotations

from kfrelease.k8s.driver.kserve import GROUPS, PLURALS, DriverForbidden, InMemoryObjects, KServeTrafficDriver
from kfrelease.k8s.environments import CI_SERVICE_ACCOUNT, PROFILE_SA, RELEASE_NS
from kfrelease.k8s.policy import istio
from kfrelease.k8s.policy.istio import upstream_sidecars
from kfrelease.k8s.policy.rbac import (
    RBACModel,
    Requester,
    environment_cluster_roles,
    kfp_requester,
    requester_of,
    service_account,
)
from kfrelease.k8s.render import mesh
from kfrelease.k8s.render.egress import mesh_client_sidecars
from kfrelease.k8s.render.eks import cluster_config
from kfrelease.k8s.render.inference import predictor_identity, staging_name
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA, UNTRUSTED_SA
from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficState

KFP = "pipelines.kubeflow.org"
STOP = ("terminate", "delete", "retry", "archive")


def rbac_findings(
    docs: list[dict], spec: RolloutSpec, access_groups: set[str] | None = None, *, kubeflow_roles: list[dict]
) -> list[str]:
    """Nobody but the platform's own identities can stop a release run; no binding names a group no EKS
    access entry maps (``access_groups``); the untrusted steps' identity holds no write outside its minimum;
    nobody but the Profile's owner may impersonate the release driver. ``kubeflow_roles``: Kubeflow's ClusterRoles
    as the cluster holds them (``rbac.environment_cluster_roles(kubeflow_version)``)."""
    rbac = RBACModel(docs + kubeflow_roles)
    out = []
    for b in rbac.bindings:
        for s in b.subjects:
            if s.get("kind") == "Group" and s["name"] not in (access_groups or set()):
                out.append(
                    f"RBAC: {b.origin} binds group {s['name']!r}, which no EKS access entry maps and KFP's "
                    "SubjectAccessReview never carries (bind users or service accounts)"
                )
    allowed_to_stop = {
        f"{s['kind']} {s['name']}"
        for s in rbac.subjects(RELEASE_NS)
        if s["kind"] in ("User", "ServiceAccount")
        for verb in STOP
        if _kfp_allowed(rbac, s, verb)
    }
    expected = {f"ServiceAccount {PROFILE_SA}"}  # the trusted pipeline steps (kubeflow-edit, profile controller)
    owners = {
        f"User {(d.get('spec') or {}).get('owner', {}).get('name')}"
        for d in docs
        if d.get("kind") == "Profile" and d["metadata"]["name"] == RELEASE_NS
    }
    for who in sorted(allowed_to_stop - expected - owners):
        out.append(f"RBAC: {who} may stop release runs in {RELEASE_NS} (terminate/delete/retry/archive)")
    impersonators = {
        f"{s['kind']} {s['name']}": requester_of(s, s["bound_in"])
        for s in rbac.subjects(RELEASE_NS)
        if s["kind"] in ("User", "ServiceAccount")
    }
    for who, requester in sorted(impersonators.items()):
        why = rbac.why(requester, "impersonate", "", "serviceaccounts", RELEASE_NS, RELEASE_DRIVER_SA)
        if why and who not in owners:
            out.append(
                f"RBAC: {who} may impersonate the release driver ({RELEASE_NS}/{RELEASE_DRIVER_SA}) and use its "
                f"Role with no pod the admission policies see: {'; '.join(why)}; Kubeflow before 26.03 grants it "
                "through kubeflow-edit: apply manifests/eks/<env>/kubeflow/backports.yaml (kubectl apply "
                "--server-side --force-conflicts --field-manager=kfrelease)"
            )
    untrusted = service_account(RELEASE_NS, UNTRUSTED_SA)
    for verb, group, resource in (
        ("terminate", KFP, "runs"),
        ("delete", KFP, "runs"),
        ("delete", "argoproj.io", "workflows"),
        ("delete", "", "pods"),
        ("create", "", "pods/exec"),
    ):
        who = kfp_requester(untrusted) if group == KFP else untrusted
        if rbac.allowed(who, verb, group, resource, RELEASE_NS):
            out.append(
                f"RBAC: the untrusted steps' service account may {verb} {resource} in {RELEASE_NS}: "
                + "; ".join(rbac.why(who, verb, group, resource, RELEASE_NS))
            )
    for verb in ("patch", "delete"):
        if rbac.allowed(untrusted, verb, "serving.kserve.io", "inferenceservices", spec.serving.namespace):
            out.append(f"RBAC: the untrusted steps' service account may {verb} InferenceServices")
    ci = kfp_requester(service_account(RELEASE_NS, CI_SERVICE_ACCOUNT))
    if not rbac.allowed(ci, "create", KFP, "runs", RELEASE_NS):
        out.append(f"RBAC: the CI service account cannot create runs in {RELEASE_NS}")
    return out


def _kfp_allowed(rbac: RBACModel, subject: dict, verb: str) -> bool:
    return rbac.allowed(kfp_requester(requester_of(subject, subject["bound_in"])), verb, KFP, "runs", RELEASE_NS)


class _RBACObjects:
    """The rendered objects in memory, answering ``can`` from RBAC for one requester."""

    def __init__(self, docs: list[dict], rbac: RBACModel, who: Requester):
        self.objects, self.rbac, self.who = InMemoryObjects(docs), rbac, who

    def __getattr__(self, name):
        return getattr(self.objects, name)

    def can(self, verb: str, ref: dict) -> bool:
        name = "" if verb == "create" else ref.get("name", "")
        return self.rbac.allowed(self.who, verb, GROUPS[ref["kind"]], PLURALS[ref["kind"]], ref["namespace"], name)


def driver_findings(
    docs: list[dict],
    spec: RolloutSpec,
    production: str,
    kserve_version: str,
    domain: str | None = None,
    *,
    kubeflow_roles: list[dict],
) -> list[str]:
    """Every operation of a whole release (shadow, each canary step, promotion) and of a rollback, planned
    against the rendered objects, is allowed to the release steps' service account."""
    rbac = RBACModel(docs + kubeflow_roles)
    candidate = "V0.0.0-check"
    uris = {production: "oci://check/production", candidate: "oci://check/candidate"}
    formats = {}
    for d in docs:  # production's URI and format as rendered, so the plan patches only what a release changes
        if d.get("kind") == "InferenceService":
            uris[production] = d["spec"]["predictor"]["model"]["storageUri"]
            formats[production] = d["spec"]["predictor"]["model"]["modelFormat"]["name"]
    shadow = TrafficState(primary=production, shadow=candidate, mirror_percent=spec.shadow.mirror_percent)
    steps = [TrafficState(primary=production, canary=candidate, canary_weight=w) for w in spec.canary.steps]
    out = []
    for name, states in (
        ("release", [shadow, *steps, TrafficState(primary=candidate)]),
        ("rollback", [shadow, steps[0], steps[0].with_canary(candidate, 0), TrafficState(primary=production)]),
    ):
        objects = _RBACObjects(docs, rbac, service_account(RELEASE_NS, RELEASE_DRIVER_SA))
        driver = KServeTrafficDriver(
            spec, uris, objects, holder=candidate, kserve_version=kserve_version, domain=domain, model_formats=formats
        )
        try:
            driver.check_rights(states)
        except DriverForbidden as exc:
            out.append(f"driver rights ({name}): {exc}")
    return out


def mesh_findings(
    docs: list[dict], spec: RolloutSpec, clients: tuple[str, ...] = (), sidecars: list[dict] = ()
) -> list[str]:
    """Each flow of the data path is allowed under Kubeflow's global-deny-all (requests and the shadow's
    mirrored copies from the ingress gateway and from each in-mesh client namespace), and a pod of another
    namespace reaches no serving workload directly. A caller with a sidecar presents its identity only when its
    egress scope lists the serving namespace: ``sidecars`` are the cluster's Sidecars beyond ``docs``'
    (Kubeflow's mesh-wide default, the client namespaces'); ``kfrelease.k8s.render.egress``."""
    ns = spec.serving.namespace
    policies = istio.upstream_policies() + [d for d in docs if d.get("kind") == "AuthorizationPolicy"]
    predictor = istio.Workload(ns, dict(mesh.PREDICTOR_SELECTOR))
    sink = istio.Workload(ns, {"app.kubernetes.io/name": "kfrelease-logsink"})
    feedback = istio.Workload(ns, {"app.kubernetes.io/name": "kfrelease-feedback"})
    outsider = mesh.principal("kfrelease-science", PROFILE_SA)
    predict = f"/v1/models/{spec.model}:predict"
    scope = list(sidecars) + [d for d in docs if d.get("kind") == "Sidecar"]

    plain: dict[str, str] = {}  # principal -> why its caller's sidecar sends in plain text

    def sent(namespace: str, labels: dict, sa: str, to: istio.Workload) -> str | None:
        who, why = istio.peer(scope, istio.Workload(namespace, labels), sa, to)
        if who is None:
            plain[mesh.principal(namespace, sa)] = why
        return who

    # the pod labels and service accounts of Knative's Deployments (kubeflow/manifests
    # common/knative/knative-serving/base/upstream/serving-core.yaml at v1.11.0 and 26.03)
    callers = {}  # flow -> the caller's principal, had it kept its identity
    activator = sent("knative-serving", {"app": "activator", "role": "activator"}, "activator", predictor)
    autoscaler = sent("knative-serving", {"app": "autoscaler"}, "controller", predictor)
    callers["Knative activator -> predictor"] = mesh.KNATIVE_ACTIVATOR
    callers["Knative autoscaler -> queue-proxy metrics"] = mesh.KNATIVE_AUTOSCALER
    production_sa, shadow_sa = predictor_identity(spec, "production"), predictor_identity(spec, "staging")
    callers["KServe agent -> log sink"] = mesh.principal(ns, production_sa)
    callers["the shadow's KServe agent -> log sink"] = mesh.principal(ns, shadow_sa)
    needed = {
        "ingress gateway -> predictor": istio.Request(predictor, 8012, predict, "POST", mesh.INGRESS_GATEWAY),
        "ingress gateway -> raw predictor (KServe agent)": istio.Request(
            predictor, 9081, predict, "POST", mesh.INGRESS_GATEWAY
        ),
        "Knative activator -> predictor": istio.Request(predictor, 8012, predict, "POST", activator),
        "Knative autoscaler -> queue-proxy metrics": istio.Request(predictor, 9090, "/metrics", "GET", autoscaler),
        "KServe agent -> log sink": istio.Request(
            sink, 8080, "/", "POST", sent(ns, dict(mesh.PREDICTOR_SELECTOR), production_sa, sink)
        ),
        "the shadow's KServe agent -> log sink": istio.Request(
            sink, 8080, "/", "POST", sent(ns, dict(mesh.PREDICTOR_SELECTOR), shadow_sa, sink)
        ),
        "client -> feedback": istio.Request(feedback, 8080, mesh.FEEDBACK_PATH, "POST", mesh.INGRESS_GATEWAY),
        "Prometheus -> predictor metrics": istio.Request(predictor, 8080, "/metrics", "GET", None),
        "Prometheus -> log sink metrics": istio.Request(sink, 8080, "/metrics", "GET", None),
    }
    shadow = istio.Workload(ns, {**mesh.PREDICTOR_SELECTOR, "serving.kserve.io/inferenceservice": staging_name(spec)})
    for client in clients:
        who = sent(client, {}, "default", predictor)
        callers[f"in-mesh client {client} -> predictor"] = mesh.principal(client, "default")
        callers[f"in-mesh client {client}'s sidecar -> shadow (mirrored copy)"] = mesh.principal(client, "default")
        needed[f"in-mesh client {client} -> predictor"] = istio.Request(predictor, 8080, predict, "POST", who)
        needed[f"in-mesh client {client}'s sidecar -> shadow (mirrored copy)"] = istio.Request(
            shadow, 9081, predict, "POST", who
        )
    refused = {
        "a pod of another namespace -> predictor": istio.Request(predictor, 8080, predict, "POST", outsider),
        "a pod of another namespace -> log sink": istio.Request(sink, 8080, "/", "POST", outsider),
    }
    out = []
    for flow, req in needed.items():
        ok, why = istio.decide(policies, req)
        if not ok and callers.get(flow) in plain:
            why = f"{why}; it arrives without identity: {plain[callers[flow]]}"
        if not ok:
            out.append(f"AuthorizationPolicy: {flow} is denied ({why})")
    for flow, req in refused.items():
        ok, why = istio.decide(policies, req)
        if ok:
            out.append(f"AuthorizationPolicy: {flow} is allowed ({why}); allow only the flows the release needs")
    return out


def _access_groups(config: dict) -> set[str]:
    return {
        g for e in (config.get("accessConfig") or {}).get("accessEntries") or [] for g in e.get("kubernetesGroups", [])
    }


def environment_findings(src, env) -> list[str]:
    """Every finding above for one environment of ``Sources``, on what the renderers produce now (the
    overlay's documents and the one-time bootstrap)."""
    from kfrelease.k8s.render.tree import environment_documents, inference_documents  # heavy: protobuf

    docs = environment_documents(src, env) + inference_documents(src.spec, env)
    sidecars = upstream_sidecars(env.kubeflow_version) + mesh_client_sidecars(env, src.spec.serving.namespace)
    groups = _access_groups(cluster_config(env, src.policy, src.spec.serving.namespace, src.workspaces))
    roles = environment_cluster_roles(env.kubeflow_version)
    return [
        *rbac_findings(docs, src.spec, groups, kubeflow_roles=roles),
        *driver_findings(
            docs, src.spec, env.production_version, env.kserve_version, env.model_domain, kubeflow_roles=roles
        ),
        *mesh_findings(docs, src.spec, env.mesh_clients, sidecars),
    ]
