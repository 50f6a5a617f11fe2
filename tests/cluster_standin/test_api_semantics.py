"""The stand-in enforces what the Kubernetes API server would: RBAC (403), schema admission (422), optimistic
concurrency (409), JSON merge patch (RFC 7386) and server-side apply field ownership."""

import copy

import pytest

from kfrelease.k8s.policy.rbac import Requester, service_account
from kfrelease.k8s.render.inference import production_name
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents

from . import ApiError, Cluster

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
NS = SOURCES.spec.serving.namespace
NAME = production_name(SOURCES.spec)
ADMIN_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "platform-admin"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "platform-admin"},
    "subjects": [{"kind": "User", "name": "platform@example.com"}],
}
ADMIN_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "platform-admin"},
    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
}
ADMIN = Requester("platform@example.com", ("system:authenticated",))


@pytest.fixture(scope="module")
def docs():
    return environment_documents(SOURCES, ENV) + inference_documents(SOURCES.spec, ENV) + [ADMIN_ROLE, ADMIN_BINDING]


@pytest.fixture
def cluster(docs):
    return Cluster(copy.deepcopy(docs))


def test_merge_patch_follows_rfc_7386(cluster):
    doc = cluster.patch(
        ADMIN,
        "InferenceService",
        NS,
        NAME,
        {"metadata": {"labels": {"extra": "x"}}, "spec": {"predictor": {"minReplicas": 2}}},
    )
    assert doc["metadata"]["labels"]["extra"] == "x" and doc["spec"]["predictor"]["minReplicas"] == 2
    assert doc["spec"]["predictor"]["model"]["modelFormat"] == {"name": "sklearn"}  # siblings kept
    doc = cluster.patch(ADMIN, "InferenceService", NS, NAME, {"metadata": {"labels": {"extra": None}}})
    assert "extra" not in doc["metadata"]["labels"]  # null deletes
    env = [{"name": "ONLY", "value": "1"}]
    doc = cluster.patch(ADMIN, "InferenceService", NS, NAME, {"spec": {"predictor": {"model": {"env": env}}}})
    assert doc["spec"]["predictor"]["model"]["env"] == env  # a list is replaced whole


def test_writes_are_admitted_against_the_schema_and_refused_whole(cluster):
    before = copy.deepcopy(cluster.objects)
    with pytest.raises(ApiError) as err:
        cluster.patch(ADMIN, "InferenceService", NS, NAME, {"spec": {"predictor": {"canaryTraficPercent": 5}}})
    assert err.value.status == 422 and "canaryTraficPercent" in str(err.value)
    assert cluster.objects == before


def test_rbac_refusals_are_403_and_recorded(cluster):
    nobody = service_account("ds-ada", "default-editor")
    with pytest.raises(ApiError) as err:
        cluster.patch(nobody, "InferenceService", NS, NAME, {"spec": {"predictor": {"minReplicas": 9}}})
    assert err.value.status == 403 and cluster.refused == [
        f"system:serviceaccount:ds-ada:default-editor cannot patch inferenceservices.serving.kserve.io {NAME!r} in {NS}"
    ]


def test_a_stale_replace_is_a_conflict(cluster):
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "l", "namespace": NS},
        "spec": {"holderIdentity": "a"},
    }
    stored = cluster.create(ADMIN, lease)
    cluster.replace(ADMIN, {**stored, "spec": {"holderIdentity": "b"}})
    with pytest.raises(ApiError) as err:
        cluster.replace(ADMIN, {**stored, "spec": {"holderIdentity": "c"}})
    assert err.value.status == 409
    with pytest.raises(ApiError) as err:
        cluster.create(ADMIN, lease)
    assert err.value.status == 409


def test_server_side_apply_conflicts_on_a_field_another_manager_owns(cluster):
    """The release patches the production model (manager kfrelease-release); re-applying the overlay with
    server-side apply then conflicts instead of silently resetting it, unless forced."""
    overlay = copy.deepcopy(cluster.objects[("InferenceService", NS, NAME)])
    overlay["metadata"].pop("resourceVersion")
    released = "oci://r/m@sha256:" + "b" * 64
    cluster.patch(
        ADMIN,
        "InferenceService",
        NS,
        NAME,
        {"spec": {"predictor": {"model": {"storageUri": released}}}},
        manager="kfrelease-release",
    )
    with pytest.raises(ApiError) as err:
        cluster.apply(ADMIN, overlay, manager="kubectl")
    assert err.value.status == 409 and "storageUri (owned by kfrelease-release)" in str(err.value)
    assert cluster.objects[("InferenceService", NS, NAME)]["spec"]["predictor"]["model"]["storageUri"] == released
    cluster.apply(ADMIN, overlay, manager="kubectl", force=True)  # --force-conflicts: ownership moves
    doc = cluster.objects[("InferenceService", NS, NAME)]
    assert doc["spec"]["predictor"]["model"]["storageUri"] == overlay["spec"]["predictor"]["model"]["storageUri"]
    assert ("spec", "predictor", "model", "storageUri") not in cluster.managers[("InferenceService", NS, NAME)][
        "kfrelease-release"
    ]


def test_server_side_apply_removes_what_a_manager_stops_applying_unless_another_owns_it(cluster):
    key = ("InferenceService", NS, NAME)
    mine = copy.deepcopy(cluster.objects[key])
    mine["metadata"].pop("resourceVersion")
    mine["metadata"]["labels"]["owned-by-apply"] = "yes"
    cluster.apply(ADMIN, mine, manager="kubectl", force=True)
    cluster.patch(ADMIN, "InferenceService", NS, NAME, {"metadata": {"labels": {"patched": "yes"}}}, manager="other")
    del mine["metadata"]["labels"]["owned-by-apply"]
    cluster.apply(ADMIN, mine, manager="kubectl")
    labels = cluster.objects[key]["metadata"]["labels"]
    assert "owned-by-apply" not in labels and labels["patched"] == "yes"


def _config_map(ns, name="kfrelease-probe", **meta):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, **meta}, "data": {}}


def test_an_object_in_a_namespace_that_does_not_exist_is_refused(cluster):
    with pytest.raises(ApiError, match="404 NotFound: namespaces 'nowhere' not found"):
        cluster.create(ADMIN, _config_map("nowhere"))
    cluster.create(ADMIN, _config_map(NS))  # the serving namespace is applied by the overlay


def test_a_create_with_a_resource_version_is_refused_as_the_server_refuses_it(cluster):
    with pytest.raises(ApiError, match="resourceVersion should not be set on objects to be created"):
        cluster.create(ADMIN, _config_map(NS, resourceVersion="12"))


def test_an_object_held_by_a_finalizer_cannot_be_created_again_until_the_finalizer_goes(cluster):
    cluster.create(ADMIN, _config_map(NS, finalizers=["example.com/cleanup"]))
    cluster.delete(ADMIN, "ConfigMap", NS, "kfrelease-probe")
    held = cluster.get(ADMIN, "ConfigMap", NS, "kfrelease-probe")
    assert held["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiError, match="being deleted"):
        cluster.create(ADMIN, _config_map(NS))
    cluster.patch(ADMIN, "ConfigMap", NS, "kfrelease-probe", {"metadata": {"finalizers": None}})
    assert ("ConfigMap", NS, "kfrelease-probe") not in cluster.objects
    cluster.create(ADMIN, _config_map(NS))


def test_stored_objects_carry_the_servers_metadata_and_lease_times_in_its_form(cluster):
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kfrelease-release-probe", "namespace": NS},
        "spec": {"holderIdentity": "V1.2.0", "renewTime": "2026-01-01T11:00:00.5+01:00", "leaseDurationSeconds": 9},
    }
    stored = cluster.create(ADMIN, lease)
    assert stored["metadata"]["uid"] and stored["metadata"]["creationTimestamp"].endswith("Z")
    assert stored["metadata"]["generation"] == 1
    assert stored["spec"]["renewTime"] == "2026-01-01T10:00:00.500000Z"
    with pytest.raises(ApiError, match="422 Invalid: .*renewTime"):
        cluster.create(ADMIN, {**lease, "metadata": {**lease["metadata"], "name": "x"}, "spec": {"renewTime": "soon"}})
