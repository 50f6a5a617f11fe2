"""The release driver's Services are only the logged canary Services of a release (review eks3 N2).

Its Role may create, patch and delete Services in the serving namespace (the ``<model>-<version>-logged`` Service of
a KServe 0.20 canary has the version in its name, so RBAC cannot name it). Whoever may write a Service may set
``externalIPs`` (CVE-2020-8554) or ``type: LoadBalancer``; ValidatingAdmissionPolicy ``kfrelease-driver-services``
(``kfrelease.k8s.render.admission.driver_service_policy``) admits the driver's Service writes only in the rendered
shape. Evaluated on cel-python (``kfrelease.k8s.policy.admission``) and on the stand-in API server."""

from __future__ import annotations

import copy

import pytest

from kfrelease.k8s.environments import RELEASE_NS
from kfrelease.k8s.policy.admission import AdmissionRequest, admit
from kfrelease.k8s.policy.rbac import service_account
from kfrelease.k8s.render.admission import DRIVER_SERVICES_POLICY
from kfrelease.k8s.render.inference import logged_canary_service, production_name, release_service_name
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents
from tests.cluster_standin import ApiError, Cluster

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
SPEC = SOURCES.spec
NS = SPEC.serving.namespace
DRIVER = service_account(RELEASE_NS, RELEASE_DRIVER_SA)
CANARY = "V1.2.0"


@pytest.fixture(scope="module")
def docs():
    return environment_documents(SOURCES, ENV) + inference_documents(SPEC, ENV)


def logged() -> dict:
    return logged_canary_service(SPEC, CANARY, ENV.kserve_version)


def denials(docs, operation, obj, old=None, who=DRIVER.name) -> list[str]:
    req = AdmissionRequest(operation, "services", NS, who, obj, old)
    return [str(d) for d in admit(docs, req) if d.policy == DRIVER_SERVICES_POLICY]


def changed(**spec) -> dict:
    svc = logged()
    svc["spec"].update(spec)
    return svc


def relabelled(**labels) -> dict:
    svc = logged()
    svc["metadata"]["labels"].update(labels)
    return svc


def test_the_rendered_logged_canary_service_is_admitted(docs):
    assert ENV.kserve.has_canary_list, "the environment's KServe has spec.canary (0.20)"
    assert denials(docs, "CREATE", logged()) == []
    assert denials(docs, "UPDATE", logged(), logged()) == []
    assert denials(docs, "DELETE", None, logged()) == []


@pytest.mark.parametrize(
    "service",
    [
        changed(externalIPs=["10.100.0.10"]),
        changed(type="LoadBalancer"),
        changed(type="NodePort"),
        changed(selector={"app": "kfrelease-feedback"}),
        changed(
            selector={"app": f"isvc.{production_name(SPEC)}-{CANARY.lower().replace('.', '-')}-predictor", "x": "y"}
        ),
        changed(ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
        relabelled(**{"kfrelease.io/model": "another-model"}),
        relabelled(**{"kfrelease.io/version": "v9-9-9"}),
        {**logged(), "metadata": {**logged()["metadata"], "name": "kfrelease-feedback"}},
    ],
    ids=[
        "externalIPs",
        "LoadBalancer",
        "NodePort",
        "selector-other-pods",
        "selector-extra-key",
        "past-the-agent",
        "model-not-served",
        "name-not-the-version",
        "not-logged-name",
    ],
)
def test_any_other_service_by_the_driver_is_refused(docs, service):
    for operation, old in (("CREATE", None), ("UPDATE", logged())):
        assert denials(docs, operation, service, old), f"{operation} was admitted"


def test_the_driver_deletes_only_logged_canary_services_and_others_are_not_bound(docs):
    release = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == release_service_name(SPEC))
    assert denials(docs, "DELETE", None, release)
    assert denials(docs, "CREATE", changed(type="LoadBalancer"), who="system:serviceaccount:kubeflow:kserve") == []


def test_the_stand_in_refuses_the_drivers_other_service_writes(docs):
    """On the stand-in API server (its admission runs the bound policies on every write): the driver's Role
    allows each of these writes; the policy refuses them, and the rendered one goes through."""
    cluster = Cluster(docs, kserve=ENV.kserve_version)
    with pytest.raises(ApiError, match=f"{DRIVER_SERVICES_POLICY}.*externalIPs"):
        cluster.create(DRIVER, changed(externalIPs=["10.100.0.10"]))
    cluster.create(DRIVER, logged())
    name = logged()["metadata"]["name"]
    with pytest.raises(ApiError, match=DRIVER_SERVICES_POLICY):
        cluster.patch(DRIVER, "Service", NS, name, {"spec": {"type": "LoadBalancer"}})
    with pytest.raises(ApiError, match=DRIVER_SERVICES_POLICY):
        cluster.patch(DRIVER, "Service", NS, name, {"spec": {"selector": {"app": "kfrelease-feedback"}}})
    with pytest.raises(ApiError, match=DRIVER_SERVICES_POLICY):
        cluster.delete(DRIVER, "Service", NS, release_service_name(SPEC))
    assert copy.deepcopy(cluster.objects[("Service", NS, name)]["spec"]) == logged()["spec"]
    cluster.delete(DRIVER, "Service", NS, name)
    assert ("Service", NS, name) not in cluster.objects
