"""The serving namespace under Kubeflow's mesh-wide ``global-deny-all`` (kubeflow/manifests
``common/istio/istio-install/base/deny_all_authorizationpolicy.yaml``, vendored): each flow the release needs
is allowed by the rendered ALLOW policies, evaluated as Istio evaluates them (``kfrelease.k8s.policy.istio``), and
nothing wider: a pod in a data scientist's namespace reaches neither a predictor, the log sink nor feedback."""

import pytest

from kfrelease.k8s.environments import RELEASE_NS
from kfrelease.k8s.policy.istio import Request, Workload, decide, knative_pod_probe, mtls_mode, upstream_policies
from kfrelease.k8s.render.inference import REPLAY_HEADER, REPLAY_VALUE, predictor_service_account
from kfrelease.k8s.render.mesh import (
    GATEWAY_SELECTOR,
    INGRESS_GATEWAY,
    KNATIVE_ACTIVATOR,
    KNATIVE_AUTOSCALER,
    LOCAL_GATEWAY,
    ROOT_NS,
    principal,
    replay_gateway_policy,
    request_principal,
)
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA

NS = "kfrelease-serving"
PREDICTOR = Workload(NS, {"component": "predictor", "serving.kserve.io/inferenceservice": "diabetes-progression"})
SHADOW = Workload(NS, {"component": "predictor", "serving.kserve.io/inferenceservice": "diabetes-progression-staging"})
SINK = Workload(NS, {"app.kubernetes.io/name": "kfrelease-logsink"})
FEEDBACK = Workload(NS, {"app.kubernetes.io/name": "kfrelease-feedback"})
AGENT = principal(NS, predictor_service_account("diabetes-progression"))
DATA_SCIENTIST = principal("ds-ada", "default-editor")
SHOP = principal("shop", "checkout")  # a pod of a namespace the environments name in mesh_clients
PREDICT = "/v1/models/diabetes-progression:predict"

NEEDED = {
    "client via the gateway to the Serverless queue-proxy": Request(PREDICTOR, 8012, PREDICT, "POST", INGRESS_GATEWAY),
    "client via the gateway to the raw predictor's KServe agent": Request(
        PREDICTOR, 9081, PREDICT, "POST", INGRESS_GATEWAY
    ),
    "client via the gateway to a v2 endpoint": Request(PREDICTOR, 8080, "/v2/models/m/infer", "POST", INGRESS_GATEWAY),
    "Envoy's mirror to the shadow": Request(SHADOW, 9081, PREDICT, "POST", INGRESS_GATEWAY),
    "Knative activator to the queue-proxy": Request(PREDICTOR, 8012, "/", "GET", KNATIVE_ACTIVATOR),
    # review L2: with the activator out of the path, Serverless requests arrive from Kubeflow's cluster-local-gateway
    "Knative's local gateway to the queue-proxy": Request(PREDICTOR, 8012, PREDICT, "POST", LOCAL_GATEWAY),
    "Knative autoscaler scraping the queue-proxy": Request(PREDICTOR, 9090, "/metrics", "GET", KNATIVE_AUTOSCALER),
    "KServe agent to the log sink": Request(SINK, 8080, "/", "POST", AGENT),
    "client via the gateway posting ground truth": Request(FEEDBACK, 8080, "/v1/feedback", "POST", INGRESS_GATEWAY),
    # an environment's mesh_clients (``shop``): their sidecars route by the release VirtualService, both routes
    "in-mesh client predicting through its sidecar": Request(PREDICTOR, 9081, PREDICT, "POST", SHOP),
    "in-mesh client's sidecar mirroring to the shadow": Request(SHADOW, 9081, PREDICT, "POST", SHOP),
    "in-mesh client posting ground truth through its sidecar": Request(FEEDBACK, 8080, "/v1/feedback", "POST", SHOP),
    "Prometheus scraping a predictor": Request(PREDICTOR, 8080, "/metrics", "GET", None),
    "Prometheus scraping the log sink": Request(SINK, 8080, "/metrics", "GET", None),
    "Prometheus scraping feedback": Request(FEEDBACK, 8080, "/metrics", "GET", None),
}
REFUSED = {
    "a data scientist's pod calling a predictor directly": Request(PREDICTOR, 8080, PREDICT, "POST", DATA_SCIENTIST),
    "... or the queue-proxy": Request(PREDICTOR, 8012, PREDICT, "POST", DATA_SCIENTIST),
    "... or the shadow": Request(SHADOW, 9081, PREDICT, "POST", DATA_SCIENTIST),
    "... writing prediction logs": Request(SINK, 8080, "/", "POST", DATA_SCIENTIST),
    "... posting ground truth past the gateway": Request(FEEDBACK, 8080, "/v1/feedback", "POST", DATA_SCIENTIST),
    "a caller without identity predicting": Request(PREDICTOR, 8080, PREDICT, "POST", None),
    "the gateway writing prediction logs": Request(SINK, 8080, "/", "POST", INGRESS_GATEWAY),
    "the gateway to a predictor's non-model path": Request(PREDICTOR, 8080, "/debug", "GET", INGRESS_GATEWAY),
    "the activator to the model server past the queue-proxy": Request(
        PREDICTOR, 8080, PREDICT, "POST", KNATIVE_ACTIVATOR
    ),
    "a predictor posting ground truth": Request(FEEDBACK, 8080, "/v1/feedback", "POST", AGENT),
    "the local gateway past the queue-proxy": Request(PREDICTOR, 8080, PREDICT, "POST", LOCAL_GATEWAY),
    "the local gateway to the queue-proxy's metrics": Request(PREDICTOR, 9090, "/metrics", "GET", LOCAL_GATEWAY),
    "an in-mesh client writing prediction logs": Request(SINK, 8080, "/", "POST", SHOP),
    "an in-mesh client on feedback's other paths": Request(FEEDBACK, 8080, "/admin", "POST", SHOP),
}


@pytest.fixture(scope="module", params=["staging", "production"])
def policies(request, built):
    return upstream_policies() + [d for d in built[request.param] if d["kind"] == "AuthorizationPolicy"]


@pytest.mark.parametrize("flow", sorted(NEEDED))
def test_each_flow_the_release_needs_is_allowed(policies, flow):
    ok, why = decide(policies, NEEDED[flow])
    assert ok, f"{flow}: {why}"


@pytest.mark.parametrize("flow", sorted(REFUSED))
def test_nothing_wider_is_allowed(policies, flow):
    ok, why = decide(policies, REFUSED[flow])
    assert not ok, f"{flow} is allowed: {why}"


def test_without_its_own_policies_the_serving_namespace_refuses_everything():
    """What the cluster did before: global-deny-all and no ALLOW policy in the serving namespace."""
    for flow, req in NEEDED.items():
        ok, why = decide(upstream_policies(), req)
        assert not ok and "global-deny-all" in why, flow


def test_the_evaluator_follows_istio_semantics():
    deny_all = upstream_policies()[0]
    allow_any = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "any", "namespace": NS},
        "spec": {"rules": [{}]},
    }
    deny_get = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "no-get", "namespace": NS},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
    }
    get, post = Request(SINK, 8080, "/x", "GET", AGENT), Request(SINK, 8080, "/x", "POST", AGENT)
    assert decide([], get)[0]  # no ALLOW policy applies: allowed
    assert not decide([deny_all], get)[0]  # an ALLOW policy without rules matches nothing
    assert decide([deny_all, allow_any], get)[0]  # a rule {} matches everything
    assert not decide([deny_all, allow_any, deny_get], get)[0] and decide([deny_all, allow_any, deny_get], post)[0]
    other_ns = {**allow_any, "metadata": {"name": "any", "namespace": "elsewhere"}}
    assert not decide([deny_all, other_ns], get)[0]  # a namespace's policy applies only there
    with pytest.raises(ValueError, match="ipBlocks"):
        decide([{**allow_any, "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}}], get)
    # a request principal comes only from a verified JWT; notRequestPrincipals matches a request without one
    # (Kubeflow's istio-ingressgateway-require-jwt denies exactly those with notRequestPrincipals: ["*"])
    need_jwt = {
        **deny_get,
        "spec": {"action": "DENY", "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]},
    }
    assert not decide([need_jwt], get)[0]
    assert decide([need_jwt], Request(SINK, 8080, "/x", "GET", None, {}, "https://iss/system:serviceaccount:a:b"))[0]


ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE"
GATEWAY = Workload(ROOT_NS, dict(GATEWAY_SELECTOR))


def test_only_the_release_driver_may_take_the_replay_route_at_the_gateway():
    """The release step (no sidecar: kubeflow/pipelines#14468) asks production through the ingress gateway with
    its projected token; ``kfrelease-production-replay`` (DENY, evaluated before Kubeflow's gateway ALLOW ``{}``)
    refuses the replay header from any other request principal, and from a request with none."""
    policies = [*upstream_policies(), replay_gateway_policy(ISSUER, RELEASE_NS, RELEASE_DRIVER_SA)]
    driver = request_principal(ISSUER, RELEASE_NS, RELEASE_DRIVER_SA)
    other = request_principal(ISSUER, "shop", "default")
    replay = {REPLAY_HEADER: REPLAY_VALUE}

    def at_gateway(headers: dict, who: str | None) -> bool:
        return decide(policies, Request(GATEWAY, 8080, PREDICT, "POST", None, headers, who))[0]

    assert at_gateway(replay, driver)
    assert not at_gateway(replay, other) and not at_gateway(replay, None)
    assert not at_gateway({"X-Kfrelease-Replay": "anything"}, other)  # any value, any case of the name
    assert at_gateway({}, other) and at_gateway({}, None)  # other requests are Kubeflow's gateway's to decide


# --- Serverless: Knative's activator and autoscaler first probe each predictor pod by its IP (review eks3 N1) ---
#
# kubeflow/manifests v1.11.0 (serving-core.yaml:8067) and 26.03 (:8010) set config-network
# mesh-compatibility-mode "auto" (enable-mesh-pod-addressability "false"): the activator probes
# http://<podIP>:8012/healthz and the autoscaler scrapes <podIP>:9090 before the -private ClusterIP, and falls back
# only when every failure is a mesh error (knative/serving knative-v1.16.2 and knative-v1.21.1
# pkg/activator/net/revision_backends.go checkDests "if notMesh { return }"; pkg/autoscaler/metrics/
# stats_scraper.go scrapePods "0 pods scraped, but did not see a mesh-related error"), i.e. 502/503
# (knative.dev/networking IsPotentialMeshErrorResponse). A pod-IP request leaves the caller's sidecar in plain text.


def test_knative_falls_back_to_the_cluster_ip_instead_of_reading_403_as_no_mesh(built):
    """Before the PeerAuthentication, both probes reached the predictor's sidecar in plain text (PERMISSIVE) and
    kfrelease-predictors answered 403: Knative kept direct pod addressing with no healthy pod (no Serverless
    prediction served, no autoscaling metrics)."""
    for env in ("staging", "production"):
        docs = upstream_policies() + [
            d for d in built[env] if d["kind"] in ("AuthorizationPolicy", "PeerAuthentication")
        ]
        for port, who in ((8012, "activator"), (9090, "autoscaler")):
            outcome, why = knative_pod_probe(docs, PREDICTOR, port)
            assert outcome == "fallback", f"{env}: Knative's {who} on {port}: {why}"
        # after the fallback, through the -private ClusterIP with their own identity (their Sidecars: egress.py)
        assert decide(docs, Request(PREDICTOR, 8012, "/healthz", "GET", KNATIVE_ACTIVATOR))[0]
        assert decide(docs, Request(PREDICTOR, 9090, "/metrics", "GET", KNATIVE_AUTOSCALER))[0]
        # Prometheus (no sidecar) still scrapes the model server in plain text: the PodMonitor's ports
        assert mtls_mode(docs, PREDICTOR, 8080) == "PERMISSIVE"
        assert decide(docs, Request(PREDICTOR, 8080, "/metrics", "GET", None))[0]
        monitor = next(
            d for d in built[env] if d["kind"] == "PodMonitor" and d["metadata"]["name"] == "kfrelease-predictors"
        )
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"user-port", "http1"}  # both 8080
    # the evaluator: under PERMISSIVE (Kubeflow's default: no PeerAuthentication in kubeflow/manifests) the same
    # probe is the 403 that stops Knative
    permissive = [d for d in docs if d["kind"] != "PeerAuthentication"]
    assert knative_pod_probe(permissive, PREDICTOR, 8012)[0] == "stuck"
    assert mtls_mode(permissive, PREDICTOR, 9090) == "PERMISSIVE"


def test_the_peer_authentication_follows_istio_precedence():
    def pa(name, ns, selector=None, mode="STRICT", ports=None):
        spec = {"mtls": {"mode": mode}}
        if selector:
            spec["selector"] = {"matchLabels": selector}
        if ports:
            spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in ports.items()}
        return {"kind": "PeerAuthentication", "metadata": {"name": name, "namespace": ns}, "spec": spec}

    assert mtls_mode([], PREDICTOR, 8012) == "PERMISSIVE"
    assert mtls_mode([pa("mesh", ROOT_NS)], PREDICTOR, 8012) == "STRICT"
    assert mtls_mode([pa("mesh", ROOT_NS), pa("ns", NS, mode="PERMISSIVE")], PREDICTOR, 8012) == "PERMISSIVE"
    ws = pa("w", NS, {"component": "predictor"}, "UNSET", {8080: "STRICT"})
    assert mtls_mode([pa("ns", NS, mode="DISABLE"), ws], PREDICTOR, 8080) == "STRICT"
    assert mtls_mode([pa("ns", NS, mode="DISABLE"), ws], PREDICTOR, 8012) == "DISABLE"  # UNSET inherits
    other = pa("o", NS, {"component": "transformer"})
    assert mtls_mode([other], PREDICTOR, 8012) == "PERMISSIVE"
