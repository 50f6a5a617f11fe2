"""The release-path checks (``kfrelease.k8s.policy.release_checks``, part of ``kfrelease manifests check``) find
nothing on the rendered environments and report each finding class on a broken input."""

import copy

import pytest

from kfrelease.k8s.environments import RELEASE_NS
from kfrelease.k8s.policy.rbac import environment_cluster_roles
from kfrelease.k8s.policy.release_checks import (
    driver_findings,
    environment_findings,
    mesh_findings,
    rbac_findings,
)
from kfrelease.k8s.render.platform import RELEASE_DRIVER, UNTRUSTED_SA
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
SPEC = SOURCES.spec
RBAC = "rbac.authorization.k8s.io"
ROLES = environment_cluster_roles(ENV.kubeflow_version)


@pytest.fixture(scope="module")
def docs():
    return environment_documents(SOURCES, ENV) + inference_documents(SPEC, ENV)


def binding(name, ns, role, subject):
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [subject],
    }


@pytest.mark.parametrize("env", sorted(SOURCES.envs.environments))
def test_the_rendered_environments_have_no_finding(env):
    assert environment_findings(SOURCES, SOURCES.envs.environments[env]) == []


def test_a_group_binding_and_a_person_who_can_stop_runs_are_rbac_findings(docs):
    broken = docs + [
        binding(
            "team-view", RELEASE_NS, "kubeflow-view", {"apiGroup": RBAC, "kind": "Group", "name": "data-scientists"}
        ),
        binding("ada-edit", RELEASE_NS, "kubeflow-edit", {"apiGroup": RBAC, "kind": "User", "name": "ada@example.com"}),
    ]
    found = rbac_findings(broken, SPEC, {"kfrelease:ci"}, kubeflow_roles=ROLES)
    assert any("binds group 'data-scientists'" in f for f in found), found
    assert any("User ada@example.com may stop release runs" in f for f in found), found


def test_an_untrusted_step_identity_with_kubeflow_edit_is_an_rbac_finding(docs):
    broken = docs + [
        binding(
            "oops",
            RELEASE_NS,
            "kubeflow-edit",
            {"kind": "ServiceAccount", "name": UNTRUSTED_SA, "namespace": RELEASE_NS},
        )
    ]
    found = rbac_findings(broken, SPEC, {"kfrelease:ci"}, kubeflow_roles=ROLES)
    assert any("untrusted steps' service account may terminate runs" in f for f in found), found
    assert any("may delete workflows" in f for f in found) and any("may delete pods" in f for f in found)


def test_a_driver_role_without_the_staging_delete_is_a_driver_finding(docs):
    broken = copy.deepcopy(docs)
    for d in broken:
        if d["kind"] == "Role" and d["metadata"]["name"] == RELEASE_DRIVER:
            d["rules"] = [r for r in d["rules"] if "delete" not in r["verbs"]]
    found = driver_findings(broken, SPEC, ENV.production_version, ENV.kserve_version, kubeflow_roles=ROLES)
    assert len(found) == 2 and all("delete InferenceService" in f and "staging" in f for f in found), found


def test_missing_or_too_wide_authorization_policies_are_findings(docs):
    none = [
        d for d in docs if d["kind"] != "AuthorizationPolicy" or d["metadata"]["namespace"] != SPEC.serving.namespace
    ]
    found = mesh_findings(none, SPEC)
    assert any("KServe agent -> log sink is denied" in f for f in found) and len(found) == 9, (
        found
    )  # shadow's agent too
    allow_all = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-all", "namespace": SPEC.serving.namespace},
        "spec": {"rules": [{}]},
    }
    found = mesh_findings(docs + [allow_all], SPEC)
    assert found and all("is allowed" in f for f in found), found


def test_callers_outside_the_serving_namespaces_egress_scope_are_release_path_findings(docs):
    """Review eks2 C1/H2: under Kubeflow's mesh-wide egress Sidecar the activator, the autoscaler and an in-mesh
    client reach the predictors in plain text (no principal) unless a rendered Sidecar lists the serving
    namespace; with the rendered ones nothing is denied."""
    from kfrelease.k8s.policy.istio import upstream_sidecars
    from kfrelease.k8s.render.egress import mesh_client_sidecars

    kubeflow = upstream_sidecars(ENV.kubeflow_version)
    clients = mesh_client_sidecars(ENV, SPEC.serving.namespace)
    assert mesh_findings(docs, SPEC, ENV.mesh_clients, kubeflow + clients) == []
    without = [d for d in docs if d["kind"] != "Sidecar"]
    found = mesh_findings(without, SPEC, ENV.mesh_clients, kubeflow)
    flows = {f.split(" is denied")[0].removeprefix("AuthorizationPolicy: ") for f in found}
    assert flows == {
        "Knative activator -> predictor",
        "Knative autoscaler -> queue-proxy metrics",
        *[f"in-mesh client {c} -> predictor" for c in ENV.mesh_clients],
        *[f"in-mesh client {c}'s sidecar -> shadow (mirrored copy)" for c in ENV.mesh_clients],
    }, found
    assert all("plain text" in f for f in found), found


def test_manifests_check_reports_the_release_path_classes_on_broken_files(tmp_path):
    """On disk, as ``kfrelease manifests check`` reads them: a driver Role without the staging delete, no
    AuthorizationPolicy in serving, a people's group binding."""
    import shutil

    import yaml

    from kfrelease.k8s.environments import MANIFESTS_DIR
    from kfrelease.k8s.policy.checks import CheckContext, run_checks

    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS_DIR, root)
    serving = root / "base" / "serving.yaml"
    docs = [d for d in yaml.safe_load_all(serving.read_text()) if d and d["kind"] != "AuthorizationPolicy"]
    for d in docs:
        if d["kind"] == "Role" and d["metadata"]["name"] == RELEASE_DRIVER:
            d["rules"] = [r for r in d["rules"] if "delete" not in r["verbs"]]
    docs.append(binding("team", RELEASE_NS, "kubeflow-view", {"apiGroup": RBAC, "kind": "Group", "name": "everyone"}))
    serving.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    found = [str(f) for f in run_checks(CheckContext(root), ["release-path"])]
    for finding_class in ("RBAC: ", "driver rights (release)", "driver rights (rollback)", "AuthorizationPolicy: "):
        assert any(finding_class in f for f in found), (finding_class, found)
    assert all(f.startswith("[release-path] overlays/") for f in found)
