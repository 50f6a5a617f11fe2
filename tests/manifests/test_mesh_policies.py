"""The serving namespace under Kubeflow's mesh-wide ``global-deny-all`` (kubeflow/manifests
``common/istio/istio-install/base/deny_all_authorizationpolicy.yaml``, vendored): each flow the release needs
is allowed by the rendered ALLOW policies, evaluated as Istio evaluates them (``kfrelease.k8s.policy.istio``), and
nothing wider: a pod in a data scientist's namespace reaches neither a predictor, the log sink nor feedback."""

import pytest

from kfrelease.k8s.policy.istio import Request, Workload, decide, upstream_policies
from kfrelease.k8s.render.inference import PREDICTOR_SERVICE_ACCOUNT
from kfrelease.k8s.render.mesh import INGRESS_GATEWAY, KNATIVE_ACTIVATOR, KNATIVE_AUTOSCALER, principal

NS = "kfrelease-serving"
PREDICTOR = Workload(NS, {"component": "predictor", "serving.kserve.io/inferenceservice": "diabetes-progression"})
SHADOW = Workload(NS, {"component": "predictor", "serving.kserve.io/inferenceservice": "diabetes-progression-staging"})
SINK = Workload(NS, {"app.kubernetes.io/name": "kfrelease-logsink"})
FEEDBACK = Workload(NS, {"app.kubernetes.io/name": "kfrelease-feedback"})
AGENT = principal(NS, PREDICTOR_SERVICE_ACCOUNT)
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
    with pytest.raises(ValueError, match="requestPrincipals"):
        decide([{**allow_any, "spec": {"rules": [{"from": [{"source": {"requestPrincipals": ["*"]}}]}]}}], get)
