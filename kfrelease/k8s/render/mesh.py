"""The Istio ALLOW policies of the serving namespace, and an evaluator of Istio authorization.

Kubeflow installs a mesh-wide ``global-deny-all`` (kubeflow/manifests
``common/istio/istio-install/base/deny_all_authorizationpolicy.yaml``: ``spec: {}`` in the root namespace
``istio-system``, an ALLOW policy without rules, which applies to every workload and matches nothing). A
Profile namespace gets ``ns-owner-access-istio`` from the profile controller; the serving namespace is no
Profile, so every request into it is denied until a policy of its own allows it. ``serving_policies``
renders those, one per workload kind, each allowing only the flows the release needs:

| to | from | ports, paths |
| --- | --- | --- |
| predictors (``component: predictor``, KServe's pod label) | the ingress gateway (clients, and Envoy's mirror of them to the shadow), the pods of the environment's ``mesh_clients`` namespaces (their own sidecars route and mirror), Knative's local gateway, the Knative activator, the Knative autoscaler | model API paths on the queue-proxy (8012, Serverless), the KServe agent (9081, logger on) or the model server (8080, raw); local gateway: model API paths on the queue-proxy; activator: the queue-proxy (probes); autoscaler: the queue-proxy metrics (9090) |
| log sink | the predictors' service account (the KServe agent runs in the predictor pod) | ``POST`` on 8080 |
| feedback | the ingress gateway when the environment declares ``label_sources`` (their requests; the gateway admits no one else there: ``feedback_gateway_policy``), the pods of the ``mesh_clients`` namespaces (through their own sidecars) | ``POST /v1/feedback`` on 8080 |
| all three | anyone: Prometheus (kube-prometheus-stack, no sidecar) scrapes in plain text, so it has no peer identity to name | ``GET /metrics`` on 8080 |

Ports are the workload's (container) ports, as Istio matches them on the inbound side; principals are
``<trust domain>/ns/<ns>/sa/<sa>`` (the workloads of kubeflow/manifests: gateway
``istio-system/istio-ingressgateway-service-account``; ``knative-local-gateway`` (Serverless): ``LOCAL_GATEWAY``;
activator ``knative-serving/activator``; autoscaler ``knative-serving/controller``: ``serving-core.yaml``).

At the ingress gateway, ``replay_gateway_policy`` (a DENY in ``istio-system``) keeps the release
VirtualService's ``replay`` route (``x-kfrelease-replay``: production's predictor alone, for the canary's
labelled accuracy check) to the release driver: KFP runs workflow pods without a sidecar
(``sidecar.istio.io/inject: "false"``, kubeflow/pipelines#14468), so the release step has no mesh identity
and reaches production through the gateway in plain text, with its projected service-account token as its
identity. The gateway validates that token with Kubeflow's ``istio-system/m2m-token-issuer``
RequestAuthentication (kubeflow/manifests ``common/oauth2-proxy/components/istio-m2m/requestauthentication.yaml``,
identical at v1.11.0 and 26.03; its issuer and ``audiences`` patched by
``kfrelease.k8s.render.kubeflow.oauth2_proxy_kustomization``): the request principal is ``<issuer>/<sub>``,
``sub`` being ``system:serviceaccount:<ns>:<sa>``. A request with an ``Authorization`` header skips
oauth2-proxy (``authorizationpolicy.istio-ingressgateway-oauth2-proxy.yaml``: CUSTOM only
``when request.headers[authorization] notValues ["*"]``) and must then carry a verified token
(``authorizationpolicy.istio-ingressgateway-require-jwt.yaml``: DENY ``notRequestPrincipals: ["*"]``).

They are evaluated as Istio does by ``kfrelease.k8s.policy.istio``.
"""

from __future__ import annotations

from collections.abc import Mapping

from kfrelease.k8s.render.inference import REPLAY_HEADER
from kfrelease.k8s.render.platform import PART_OF

SECURITY_API = "security.istio.io/v1"
ROOT_NS = "istio-system"
TRUST_DOMAIN = "cluster.local"
INGRESS_GATEWAY = f"{TRUST_DOMAIN}/ns/istio-system/sa/istio-ingressgateway-service-account"
KNATIVE_ACTIVATOR = f"{TRUST_DOMAIN}/ns/knative-serving/sa/activator"
#: The pods behind ``knative-local-gateway`` in Kubeflow's install: ``example/kustomization.yaml`` (v1.11.0, 26.03)
#: takes ``common/knative/knative-serving/overlays/gateways``, whose ``gateway-selector-in-istio-system.yaml`` points
#: that Service at ``app: cluster-local-gateway`` (``common/istio/cluster-local-gateway/base/cluster-local-gateway.yaml``:
#: ``serviceAccountName: cluster-local-gateway-service-account``). In Serverless a request the ingress gateway (or an
#: in-mesh client) sends to a predictor's host reaches its queue-proxy from there whenever the activator is not in
#: the path (spare capacity above ``target-burst-capacity``).
LOCAL_GATEWAY = f"{TRUST_DOMAIN}/ns/istio-system/sa/cluster-local-gateway-service-account"
KNATIVE_AUTOSCALER = f"{TRUST_DOMAIN}/ns/knative-serving/sa/controller"
#: KServe's pod label of every predictor pod (``pkg/constants/constants.go`` ``KServiceComponentLabel``).
PREDICTOR_SELECTOR = {"component": "predictor"}
#: queue-proxy (Knative), KServe agent (``InferenceServiceDefaultAgentPortStr``), model server.
PREDICTOR_PORTS = ["8012", "9081", "8080"]
MODEL_PATHS = ["/v1/models/*", "/v2/models/*"]
HTTP_PORT = "8080"
FEEDBACK_PATH = "/v1/feedback"


#: The ingress gateway's pod labels (kubeflow/manifests ``common/istio/istio-install/base``: the selector of
#: Kubeflow's own gateway policies, ``gateway_authorizationpolicy.yaml``).
GATEWAY_SELECTOR = {"app": "istio-ingressgateway", "istio": "ingressgateway"}
REPLAY_POLICY = "kfrelease-production-replay"
FEEDBACK_GATEWAY_POLICY = "kfrelease-label-sources"


def principal(namespace: str, service_account: str) -> str:
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def request_principal(issuer: str, namespace: str, service_account: str) -> str:
    """Istio's request principal of a Kubernetes service-account token (``<iss>/<sub>``; a projected token's
    ``sub`` is ``system:serviceaccount:<ns>:<sa>``)."""
    return f"{issuer}/system:serviceaccount:{namespace}:{service_account}"


def replay_gateway_policy(issuer: str, driver_ns: str, driver_sa: str) -> dict:
    """DENY at the ingress gateway: a request carrying the replay header
    (``kfrelease.k8s.render.inference.REPLAY_HEADER``) from anyone whose verified token is not the release
    driver's (no token at all included: ``notRequestPrincipals`` matches a request without one). Istio
    evaluates DENY before ALLOW (and before Kubeflow's ``istio-ingressgateway`` ALLOW ``{}``), so no other
    policy can open it."""
    return {
        "apiVersion": SECURITY_API,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": REPLAY_POLICY, "namespace": ROOT_NS, "labels": dict(PART_OF)},
        "spec": {
            "selector": {"matchLabels": dict(GATEWAY_SELECTOR)},
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"notRequestPrincipals": [request_principal(issuer, driver_ns, driver_sa)]}}],
                    "when": [{"key": f"request.headers[{REPLAY_HEADER}]", "values": ["*"]}],
                }
            ],
        },
    }


def feedback_gateway_policy(issuer: str, sources: tuple[str, ...] = ()) -> dict:
    """DENY at the ingress gateway: ground truth (``/v1/feedback``, on every host the gateway serves) from anyone
    whose verified token is not a declared label source's (``Environment.label_sources``, ``<ns>/<sa>``:
    request principal ``<issuer>/system:serviceaccount:<ns>:<sa>``), a request without a token included.
    Kubeflow's own gateway policies let any verified token through (kubeflow/manifests@v1.11.0 and @26.03
    ``common/oauth2-proxy/components/istio-external-auth/authorizationpolicy.istio-ingressgateway-require-jwt.yaml``:
    DENY only ``notRequestPrincipals: ["*"]``; ``requestauthentication.dex-jwt.yaml``: every Dex user;
    ``components/istio-m2m/requestauthentication.yaml``: every token of the cluster's issuer whose audience the
    pod's author chose; ``common/istio/istio-install/base/gateway_authorizationpolicy.yaml``: ALLOW ``{}``), so
    without this any Kubeflow user, or any pod with a projected token for ``pipelines.kubeflow.org``, could post
    both gates' ground truth. With no source declared, no one may post it through the gateway."""
    rule: dict = {"to": [{"operation": {"paths": [FEEDBACK_PATH, f"{FEEDBACK_PATH}/*"]}}]}
    if sources:
        principals = [request_principal(issuer, *s.split("/", 1)) for s in sources]
        rule = {"from": [{"source": {"notRequestPrincipals": principals}}], **rule}
    return {
        "apiVersion": SECURITY_API,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": FEEDBACK_GATEWAY_POLICY, "namespace": ROOT_NS, "labels": dict(PART_OF)},
        "spec": {"selector": {"matchLabels": dict(GATEWAY_SELECTOR)}, "action": "DENY", "rules": [rule]},
    }


def _policy(name: str, ns: str, selector: dict, rules: list[dict]) -> dict:
    return {
        "apiVersion": SECURITY_API,
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "labels": dict(PART_OF)},
        "spec": {"selector": {"matchLabels": selector}, "action": "ALLOW", "rules": rules},
    }


def predictor_peer_authentication(ns: str) -> dict:
    """STRICT mTLS on the predictor pods, except the model server's port that Prometheus scrapes (review eks3 N1).

    In Serverless, Knative's activator and autoscaler first address each predictor pod by its IP (Kubeflow's
    ``config-network``: ``mesh-compatibility-mode: "auto"``, ``enable-mesh-pod-addressability: "false"``:
    kubeflow/manifests v1.11.0 and 26.03 ``common/knative/knative-serving/base/upstream/serving-core.yaml``). A
    sidecar sends a request addressed to a bare pod IP through Envoy's PassthroughCluster in plain text, so it
    arrives without a peer identity; under PERMISSIVE ``kfrelease-predictors`` answers 403, which Knative reads as
    "no mesh" (knative.dev/networking ``IsPotentialMeshErrorResponse``: 502/503 only) and so never falls back to
    the ``-private`` ClusterIP (knative/serving knative-v1.16.2 and knative-v1.21.1
    ``pkg/activator/net/revision_backends.go`` ``checkDests``: "if notMesh { return }";
    ``pkg/autoscaler/metrics/stats_scraper.go`` ``scrapePods``: "0 pods scraped, but did not see a mesh-related
    error"). Under STRICT the destination refuses the plain-text connection; the caller's sidecar (an HTTP
    listener: the ``-private`` Service names 8012 ``http-istio`` and 9090 ``http-autometric``, knative/serving
    ``pkg/reconciler/serverlessservice/resources/services.go``) answers 503, a mesh error to both, and both fall
    back to the ClusterIP, which their Sidecars (``kfrelease.k8s.render.egress``) send in mTLS with their own
    principal. 8080 stays PERMISSIVE: the PodMonitor scrapes the model server there from a Prometheus without a
    sidecar (``_scrape`` admits only ``GET /metrics`` without identity; everything else on 8080 needs a principal
    already). The kubelet's HTTP probes are rewritten to the sidecar's agent (Istio's default
    ``rewriteAppHTTPProbe``), so STRICT does not break readiness."""
    return {
        "apiVersion": SECURITY_API,
        "kind": "PeerAuthentication",
        "metadata": {"name": "kfrelease-predictors", "namespace": ns, "labels": dict(PART_OF)},
        "spec": {
            "selector": {"matchLabels": dict(PREDICTOR_SELECTOR)},
            "mtls": {"mode": "STRICT"},
            "portLevelMtls": {HTTP_PORT: {"mode": "PERMISSIVE"}},
        },
    }


def _scrape() -> dict:
    return {"to": [{"operation": {"methods": ["GET"], "ports": [HTTP_PORT], "paths": ["/metrics"]}}]}


def label_sources(clients: tuple[str, ...] = (), users: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """The declared label sources of a cluster's mesh, as (principals, namespaces): the ingress gateway when
    the environment declares label sources outside the mesh (``users``: their ``kubeflow-userid``; the gateway
    relays only theirs, ``feedback_gateway_policy``) and the ``mesh_clients`` namespaces. The feedback
    AuthorizationPolicy admits exactly these, and the feedback service accepts and records exactly these
    (``label_source_declaration``): one declaration for both."""
    return ([INGRESS_GATEWAY] if users else []), sorted(clients)


def label_source_declaration(clients: tuple[str, ...] = (), users: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Who may label (``kfrelease.serving.feedback.LabelSources`` fields): what the feedback service is started
    with (``label_source_args``) and what the release steps' gates count (``KFRELEASE_LABEL_SOURCES``)."""
    principals, namespaces = label_sources(clients, users)
    return {"principals": principals, "namespaces": namespaces, "users": sorted(users)}


def label_source_args(clients: tuple[str, ...] = (), users: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The feedback service's arguments declaring ``label_sources``."""
    declared = label_source_declaration(clients, users)
    return (
        *[a for p in declared["principals"] for a in ("--source-principal", p)],
        *[a for n in declared["namespaces"] for a in ("--source-namespace", n)],
        *[a for u in declared["users"] for a in ("--source-user", u)],
    )


def logsink_writer_args(ns: str, writers: Mapping[str, tuple[str, tuple[str, ...]]]) -> tuple[str, ...]:
    """The log sink's arguments declaring which predictor identity may log which model's stages (``--writer
    <principal>=<model>:<stage>,...``; ``writers`` maps a predictor service account of ``ns`` to its model and
    stages: ``kfrelease.k8s.render.inference.predictor_writers``)."""
    return tuple(
        a
        for sa, (model, stages) in writers.items()
        for a in ("--writer", f"{principal(ns, sa)}={model}:{','.join(stages)}")
    )


def serving_policies(
    ns: str,
    predictor_sas: tuple[str, ...],
    logsink: str,
    feedback: str,
    clients: tuple[str, ...] = (),
    label_users: tuple[str, ...] = (),
) -> list[dict]:
    """The ALLOW policies of the serving namespace (see the module docstring), and nothing wider. ``clients``
    are the namespaces whose pods call the models inside the mesh: their sidecars apply the release's
    VirtualService (gateway ``mesh``), so both their requests and the mirrored copies Envoy sends to the
    shadow come from their own identity, not the ingress gateway's (Envoy mirrors in the router of the proxy
    that routes the request: istio/istio ``pilot/pkg/networking/core/route/route.go`` ``mirror``)."""
    from_clients, labels_from_clients = [], []
    label_principals, label_namespaces = label_sources(clients, label_users)
    if clients:
        from_clients = [
            {
                "from": [{"source": {"namespaces": sorted(clients)}}],
                "to": [{"operation": {"ports": PREDICTOR_PORTS, "paths": MODEL_PATHS}}],
            }
        ]
        # the same clients label what they were answered: the VirtualService's feedback route is applied by
        # their sidecars too (gateway ``mesh``), so the request arrives with their identity
        labels_from_clients = [
            {
                "from": [{"source": {"namespaces": label_namespaces}}],
                "to": [{"operation": {"methods": ["POST"], "ports": [HTTP_PORT], "paths": [FEEDBACK_PATH]}}],
            }
        ]
    return [
        _policy(
            "kfrelease-predictors",
            ns,
            PREDICTOR_SELECTOR,
            [
                {
                    "from": [{"source": {"principals": [INGRESS_GATEWAY]}}],
                    "to": [{"operation": {"ports": PREDICTOR_PORTS, "paths": MODEL_PATHS}}],
                },
                *from_clients,
                {
                    "from": [{"source": {"principals": [LOCAL_GATEWAY]}}],
                    "to": [{"operation": {"ports": ["8012"], "paths": MODEL_PATHS}}],
                },
                {"from": [{"source": {"principals": [KNATIVE_ACTIVATOR]}}], "to": [{"operation": {"ports": ["8012"]}}]},
                {
                    "from": [{"source": {"principals": [KNATIVE_AUTOSCALER]}}],
                    "to": [{"operation": {"ports": ["9090"]}}],
                },
                _scrape(),
            ],
        ),
        _policy(
            "kfrelease-logsink",
            ns,
            {"app.kubernetes.io/name": logsink},
            [
                {
                    "from": [{"source": {"principals": [principal(ns, sa) for sa in predictor_sas]}}],
                    "to": [{"operation": {"methods": ["POST"], "ports": [HTTP_PORT]}}],
                },
                _scrape(),
            ],
        ),
        _policy(
            "kfrelease-feedback",
            ns,
            {"app.kubernetes.io/name": feedback},
            [
                *[
                    {
                        "from": [{"source": {"principals": label_principals}}],
                        "to": [{"operation": {"methods": ["POST"], "ports": [HTTP_PORT], "paths": [FEEDBACK_PATH]}}],
                    }
                    for _ in label_principals[:1]
                ],
                *labels_from_clients,
                _scrape(),
            ],
        ),
    ]
