"""Re-applying the overlay (the runbook's step 7, after every render) leaves what the release moved alone,
replayed on the cluster stand-in (tests/cluster_standin: the Kubernetes API cannot run here) with its
server-side-apply field ownership: the overlay carries no release-owned object, and the one-time bootstrap is
a `kubectl create`, which the API server refuses for an object that exists."""

import pytest
import yaml

from kfrelease.k8s.driver.kserve import KServeTrafficDriver
from kfrelease.k8s.environments import MANIFESTS_DIR, RELEASE_NS
from kfrelease.k8s.policy.rbac import Requester, service_account
from kfrelease.k8s.render.inference import production_name
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA
from kfrelease.rollout.traffic import TrafficState
from tests.cluster_standin import ApiError, Cluster

ADMIN = Requester("platform-admin", ())
DRIVER = service_account(RELEASE_NS, RELEASE_DRIVER_SA)
CLUSTER_ADMIN = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "test-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "test-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ADMIN.name}],
    },
]


def bootstrap(name):
    return [d for d in yaml.safe_load_all((MANIFESTS_DIR / "bootstrap" / name / "release.yaml").read_text()) if d]


@pytest.fixture
def released(sources, built):
    """A staging cluster after overlay + bootstrap, where the release moved production to a 10 % canary."""
    env = sources.envs.environments["staging"]
    spec = sources.spec
    cluster = Cluster(built["staging"] + bootstrap("staging") + CLUSTER_ADMIN, kserve=env.kserve_version)
    repo = f"oci://{env.registry}/kfrelease/{spec.model}"
    uris = {env.production_version: f"{repo}:{env.production_version}", "V1.2.0": f"{repo}@sha256:" + "b" * 64}
    driver = KServeTrafficDriver(spec, uris, cluster.client(DRIVER), holder="V1.2.0", kserve_version=env.kserve_version)
    driver.apply(TrafficState(primary=env.production_version, canary="V1.2.0", canary_weight=10))
    key = ("InferenceService", spec.serving.namespace, production_name(spec))
    assert cluster.objects[key]["spec"]["predictor"].get("canaryTrafficPercent") == 10
    return cluster, key


def test_re_applying_the_overlay_leaves_the_released_objects_alone(released, built):
    cluster, _ = released
    before = {k: v for k, v in cluster.objects.items() if k[0] in ("InferenceService", "VirtualService")}
    for doc in built["staging"]:
        cluster.apply(ADMIN, doc, manager="kubectl", force=True)  # kubectl apply --server-side --force-conflicts
    after = {k: v for k, v in cluster.objects.items() if k[0] in ("InferenceService", "VirtualService")}
    assert after == before


def test_the_bootstrap_is_refused_once_the_objects_exist(released):
    cluster, key = released
    before = cluster.objects[key]
    for doc in bootstrap("staging"):
        with pytest.raises(ApiError) as exc:
            cluster.create(ADMIN, doc, manager="kubectl")  # kubectl create -f bootstrap/<env>/release.yaml
        assert exc.value.status == 409
    assert cluster.objects[key] == before


def test_had_the_overlay_carried_the_production_objects_a_re_apply_would_reset_the_release(released):
    """The bug the bootstrap split removes: applying the rendered production InferenceService again takes its
    fields back: the Serverless spec describes the newest revision, so the 10 % canary would now run the old
    version again (a new Knative revision of V1.1.0), whatever the release had decided."""
    cluster, key = released
    model = cluster.objects[key]["spec"]["predictor"]["model"]
    assert model["storageUri"].endswith("@sha256:" + "b" * 64)  # the release's candidate
    isvc = next(d for d in bootstrap("staging") if d["kind"] == "InferenceService")
    cluster.apply(ADMIN, isvc, manager="kubectl", force=True)
    model = cluster.objects[key]["spec"]["predictor"]["model"]
    assert model["storageUri"] == isvc["spec"]["predictor"]["model"]["storageUri"]
    assert model["storageUri"].endswith(":V1.1.0")
