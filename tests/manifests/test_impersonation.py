"""Nobody but the release steps acts as the release driver, on the Kubeflow release each environment declares.

kubeflow/manifests v1.10.x and v1.11.0 ``common/kubeflow-roles/base/cluster-roles.yaml`` ``kubeflow-kubernetes-edit``
(aggregated into ``kubeflow-edit``, bound to ``default-editor`` in every Profile namespace) grants
``serviceaccounts: [impersonate]``; 26.03 removed it (ce9d368, "block-impersonating-serviceaccounts (#3372)").
Both shipped environments declare 1.11.0, but the RBAC evaluator used to apply 26.03's roles to every environment,
so it answered "no" where the cluster answers "yes". Now it loads the roles of the declared release
(``schemas/kubeflow/cluster-roles/<tag>.yaml``), the install applies the backport
(``manifests/eks/<env>/kubeflow/backports.yaml``), and every release step asks the API server before it moves
anything (``KServeTrafficDriver.check_identity``)."""

from __future__ import annotations

import pytest
import yaml

from kfrelease.errors import ConfigError
from kfrelease.k8s.driver.kserve import DriverImpersonable, KServeTrafficDriver, KubernetesObjects
from kfrelease.k8s.environments import MANIFESTS_DIR, PROFILE_SA, RELEASE_NS
from kfrelease.k8s.policy.rbac import (
    RBACModel,
    environment_cluster_roles,
    service_account,
    upstream_cluster_roles,
)
from kfrelease.k8s.policy.release_checks import rbac_findings
from kfrelease.k8s.render.kubeflow import IMPERSONATE_ROLE, kubeflow_backports
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents
from kfrelease.k8s.versions import KUBEFLOW_KSERVE
from tests.cluster_standin import ApiError, Cluster

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
EDITOR = service_account(RELEASE_NS, PROFILE_SA)
DRIVER = service_account(RELEASE_NS, RELEASE_DRIVER_SA)
ADMIN = service_account("kube-system", "cluster-admin-standin")
CLUSTER_ADMIN = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "standin-cluster-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "standin-cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "cluster-admin-standin", "namespace": "kube-system"}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "standin-cluster-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    },
]


@pytest.fixture(scope="module")
def docs():
    return environment_documents(SOURCES, ENV) + inference_documents(SOURCES.spec, ENV)


def impersonates(rbac: RBACModel) -> bool:
    return rbac.allowed(EDITOR, "impersonate", "", "serviceaccounts", RELEASE_NS, RELEASE_DRIVER_SA)


def kubeflow_role(roles: list[dict]) -> dict:
    return next(d for d in roles if d["metadata"]["name"] == IMPERSONATE_ROLE)


def test_on_kubeflow_1_11_without_the_backport_default_editor_may_impersonate_the_release_driver(docs):
    assert ENV.kubeflow_version == "1.11.0"
    found = rbac_findings(docs, SOURCES.spec, {"kfrelease:ci"}, kubeflow_roles=upstream_cluster_roles("1.11.0"))
    assert any(
        f.startswith(f"RBAC: ServiceAccount {PROFILE_SA} may impersonate the release driver")
        and "kubeflow-edit" in f
        and "backports.yaml" in f
        for f in found
    ), found
    assert impersonates(RBACModel(docs + upstream_cluster_roles("1.11.0")))
    assert not impersonates(RBACModel(docs + upstream_cluster_roles("26.03")))  # what the evaluator used to load


@pytest.mark.parametrize("version", sorted(KUBEFLOW_KSERVE))
def test_with_the_backport_or_on_26_03_nobody_but_the_owner_may_impersonate_it(docs, version):
    roles = environment_cluster_roles(version)
    assert not impersonates(RBACModel(docs + roles))
    found = rbac_findings(docs, SOURCES.spec, {"kfrelease:ci"}, kubeflow_roles=roles)
    assert not [f for f in found if "impersonate" in f], found


def test_the_backport_is_26_03s_role_and_only_releases_before_it_need_one():
    """ce9d368 removes exactly one rule; the rest of the role is the same at v1.11.0 and 26.03."""
    backport = kubeflow_backports("1.11.0")
    assert [d["metadata"]["name"] for d in backport] == [IMPERSONATE_ROLE]
    assert backport[0]["rules"] == kubeflow_role(upstream_cluster_roles("26.03"))["rules"]
    assert backport[0]["metadata"]["labels"] == kubeflow_role(upstream_cluster_roles("1.11.0"))["metadata"]["labels"]
    assert kubeflow_backports("26.03") == []
    for version in KUBEFLOW_KSERVE:
        assert bool(kubeflow_backports(version)) == (not version.startswith("26."))


def test_the_committed_backport_is_what_each_environment_applies():
    for name, env in SOURCES.envs.environments.items():
        path = MANIFESTS_DIR / "eks" / name / "kubeflow" / "backports.yaml"
        assert [d for d in yaml.safe_load_all(path.read_text()) if d] == kubeflow_backports(env.kubeflow_version)
        assert "--force-conflicts" in path.read_text().splitlines()[0]


def test_a_kubeflow_release_without_vendored_roles_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"Kubeflow 1\.9\.0: no vendored ClusterRoles .* use one of 1\.10\.0, "):
        upstream_cluster_roles("1.9.0")


def release_driver(cluster: Cluster) -> KServeTrafficDriver:
    return KServeTrafficDriver(SOURCES.spec, {}, cluster.client(DRIVER), holder="V9.9.9")


def test_the_release_driver_refuses_on_a_cluster_with_kubeflow_1_11s_roles_until_the_backport_is_applied(docs):
    """The stand-in holds v1.11.0's ClusterRoles as Kubeflow's install applied them (field manager ``kubectl``)
    and answers the driver's LocalSubjectAccessReview from them. The backport's ``rules`` conflict with Kubeflow's
    (an atomic list), so only a forced apply takes them; re-installing Kubeflow forces them back."""
    cluster = Cluster(docs + CLUSTER_ADMIN, kubeflow_roles=upstream_cluster_roles("1.11.0"))
    with pytest.raises(DriverImpersonable, match=r"default-editor may impersonate the release driver .*backports"):
        release_driver(cluster).check_identity()
    backport = kubeflow_backports("1.11.0")[0]
    with pytest.raises(ApiError, match=r"conflicts: rules \(owned by kubectl\)"):
        cluster.apply(ADMIN, backport, manager="kfrelease")
    cluster.apply(ADMIN, backport, manager="kfrelease", force=True)
    release_driver(cluster).check_identity()  # nothing raised: default-editor may no longer act as the driver
    cluster.apply(ADMIN, kubeflow_role(upstream_cluster_roles("1.11.0")), manager="kubectl", force=True)
    with pytest.raises(DriverImpersonable):
        release_driver(cluster).check_identity()
    assert cluster.refused == []


def test_the_preflight_asks_the_api_server_through_the_kubernetes_client(docs):
    """The same question as ``KubernetesObjects`` sends it (``create_namespaced_local_subject_access_review``)
    to the stand-in over HTTP, as the release driver: its Role in the release namespace lets it ask."""
    from kubernetes import client

    from tests.cluster_standin.http import StandInServer

    for roles, refused in ((upstream_cluster_roles("1.11.0"), True), (environment_cluster_roles("1.11.0"), False)):
        cluster = Cluster(docs, kubeflow_roles=roles)
        server = StandInServer(cluster, DRIVER)
        with server as url:
            objects = KubernetesObjects(api=client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url))))
            client.Configuration.set_default(client.Configuration(host=url))
            d = KServeTrafficDriver(SOURCES.spec, {}, objects, holder="V9.9.9")
            if refused:
                with pytest.raises(DriverImpersonable):
                    d.check_identity()
            else:
                d.check_identity()
        assert ("POST", f"/apis/authorization.k8s.io/v1/namespaces/{RELEASE_NS}/localsubjectaccessreviews") in (
            server.requests
        )
        assert cluster.refused == []


def test_a_local_subject_access_review_is_answered_only_in_its_own_namespace(docs):
    cluster = Cluster(docs)
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": RELEASE_NS},
        "spec": {
            "user": EDITOR.name,
            "groups": list(EDITOR.groups),
            "resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "kfrelease-serving"},
        },
    }
    with pytest.raises(ApiError, match="must match namespace"):
        cluster.access_review(DRIVER, review)
    review["spec"]["resourceAttributes"]["namespace"] = RELEASE_NS
    answer = cluster.access_review(DRIVER, review)
    assert answer["status"]["allowed"] and "kubeflow-edit" in answer["status"]["reason"]
    with pytest.raises(ApiError, match="403"):  # the untrusted steps may not ask
        cluster.access_review(service_account(RELEASE_NS, "kfrelease-untrusted-step"), review)
