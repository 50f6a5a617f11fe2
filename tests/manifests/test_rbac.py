"""RBAC of the built overlays, evaluated with the Kubeflow roles the cluster has (vendored upstream
aggregated ClusterRoles + ours + what the profile controller binds for each Profile).

KFP multi-user authorizes run operations as verbs on ``runs`` in API group ``pipelines.kubeflow.org``
(kubeflow/pipelines ``view-edit-cluster-roles.yaml``); Argo ``workflows`` are the runs' Kubernetes objects.
"""

import pytest

from kfrelease.k8s.environments import (
    CI_GROUP,
    CI_SERVICE_ACCOUNT,
    DATA_SCIENTISTS_GROUP,
    PROFILE_SA,
    RELEASE_NS,
)

from .conftest import upstream_cluster_roles
from .rbac_eval import RBACModel, service_account, user

KFP = "pipelines.kubeflow.org"
ARGO = "argoproj.io"
STOP_OR_START = ["create", "terminate", "delete", "retry", "archive", "unarchive"]
WORKFLOW_WRITES = ["create", "update", "patch", "delete", "deletecollection"]


@pytest.fixture(scope="module", params=["staging", "production"])
def model(request, built):
    return request.param, RBACModel(built[request.param] + upstream_cluster_roles())


def data_scientists(sources):
    """Each workspace owner, as the Kubeflow user, also a member of the data scientists' group."""
    assert sources.workspaces, (
        "the manifests should carry at least one example workspace"
    )
    return [user(ws.email, DATA_SCIENTISTS_GROUP) for ws in sources.workspaces]


def test_a_data_scientist_cannot_start_stop_retry_delete_or_archive_a_release_run(
    model, sources
):
    env, rbac = model
    for ds in data_scientists(sources):
        for verb in STOP_OR_START:
            assert not rbac.allowed(ds, verb, KFP, "runs", RELEASE_NS), (
                f"{env}: {ds.name} may {verb} runs: {rbac.why(ds, verb, KFP, 'runs', RELEASE_NS)}"
            )
        for verb in WORKFLOW_WRITES:
            assert not rbac.allowed(ds, verb, ARGO, "workflows", RELEASE_NS), (
                f"{env}: {ds.name} may {verb} workflows: {rbac.why(ds, verb, ARGO, 'workflows', RELEASE_NS)}"
            )
        for verb in ("create", "delete", "disable", "enable"):  # recurring runs
            assert not rbac.allowed(ds, verb, KFP, "jobs", RELEASE_NS)
        assert not rbac.allowed(
            ds, "create", "", "serviceaccounts/token", RELEASE_NS, CI_SERVICE_ACCOUNT
        )


def test_a_data_scientist_can_view_release_runs_experiments_and_artifacts(
    model, sources
):
    env, rbac = model
    for ds in data_scientists(sources):
        for verb in ("get", "list", "readArtifact"):
            assert rbac.allowed(ds, verb, KFP, "runs", RELEASE_NS), (
                f"{env}: {ds.name} cannot {verb} runs"
            )
        for verb in ("get", "list"):
            assert rbac.allowed(ds, verb, KFP, "experiments", RELEASE_NS)
        # ... and experiments freely in their own workspace (they own that Profile).
        own = f"ds-{ds.name.split('@')[0]}"
        assert rbac.allowed(ds, "create", KFP, "runs", own), (
            f"{env}: {ds.name} cannot experiment in {own}"
        )


def test_the_group_alone_gives_view_only(model):
    _, rbac = model
    someone = user("new-hire@example.com", DATA_SCIENTISTS_GROUP)
    assert rbac.allowed(someone, "get", KFP, "runs", RELEASE_NS)
    assert not any(
        rbac.allowed(someone, v, KFP, "runs", RELEASE_NS) for v in STOP_OR_START
    )


def test_only_the_ci_service_account_creates_runs_and_it_cannot_stop_them(
    model, sources
):
    env, rbac = model
    ci = service_account(RELEASE_NS, CI_SERVICE_ACCOUNT)
    assert rbac.allowed(ci, "create", KFP, "runs", RELEASE_NS), (
        f"{env}: the CI cannot create runs"
    )
    assert rbac.allowed(ci, "create", KFP, "pipelineversions", RELEASE_NS)
    for verb in ("terminate", "delete", "retry", "archive"):
        assert not rbac.allowed(ci, verb, KFP, "runs", RELEASE_NS), (
            f"{env}: the CI may {verb} runs"
        )
    for verb in WORKFLOW_WRITES:
        assert not rbac.allowed(ci, verb, ARGO, "workflows", RELEASE_NS)
    # Who else can create a run in the release namespace: only the pipeline runs' own service account
    # and the break-glass Profile owner (a platform account, not a person on the team).
    creators = {
        (s.kind, s.name)
        for s in rbac.subjects(RELEASE_NS)
        if rbac.allowed(s, "create", KFP, "runs", RELEASE_NS)
    }
    assert creators == {
        ("ServiceAccount", CI_SERVICE_ACCOUNT),
        ("ServiceAccount", PROFILE_SA),
        ("User", sources.envs.team.release_owner),
    }, f"{env}: unexpected run creators {creators}"
    print(f"\n{env}: may create runs in {RELEASE_NS}: {sorted(creators)}")
    team = {ws.email for ws in sources.workspaces} | {
        sources.envs.team.data_engineering_owner,
        sources.envs.team.data_science_owner,
    }
    assert sources.envs.team.release_owner not in team


def test_the_ci_identity_can_only_mint_the_ci_service_account_token(model):
    _, rbac = model
    ci_iam = user("arn:aws:sts::account:assumed-role/kfrelease-ci/github", CI_GROUP)
    assert rbac.allowed(
        ci_iam, "create", "", "serviceaccounts/token", RELEASE_NS, CI_SERVICE_ACCOUNT
    )
    assert not rbac.allowed(
        ci_iam, "create", "", "serviceaccounts/token", RELEASE_NS, PROFILE_SA
    )
    assert not rbac.allowed(ci_iam, "create", KFP, "runs", RELEASE_NS)


def test_the_evaluator_sees_grants_through_aggregation(built):
    """The evaluator is not trivially 'deny': kubeflow-edit (aggregated) grants exactly the run verbs."""
    rbac = RBACModel(
        built["staging"]
        + upstream_cluster_roles()
        + [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "probe", "namespace": RELEASE_NS},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "kubeflow-edit",
                },
                "subjects": [{"kind": "User", "name": "probe@example.com"}],
            }
        ]
    )
    probe = user("probe@example.com")
    assert all(rbac.allowed(probe, v, KFP, "runs", RELEASE_NS) for v in STOP_OR_START)
    assert rbac.allowed(probe, "delete", ARGO, "workflows", RELEASE_NS)
    with pytest.raises(KeyError):
        RBACModel(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "x", "namespace": "n"},
                    "roleRef": {"kind": "ClusterRole", "name": "unknown"},
                    "subjects": [{"kind": "User", "name": "u"}],
                }
            ]
        ).allowed(user("u"), "get", "", "pods", "n")


def test_only_the_release_pipeline_moves_serving_traffic(model, sources):
    env, rbac = model
    serving_ns = sources.spec.serving.namespace
    pipeline = service_account(RELEASE_NS, PROFILE_SA)
    for group, resource in (
        ("serving.kserve.io", "inferenceservices"),
        ("networking.istio.io", "virtualservices"),
    ):
        assert rbac.allowed(pipeline, "patch", group, resource, serving_ns), (
            f"{env}: pipeline cannot patch {resource}"
        )
        assert not rbac.allowed(pipeline, "delete", group, resource, serving_ns)
        for ds in data_scientists(sources):
            assert not rbac.allowed(ds, "patch", group, resource, serving_ns)
        ci = service_account(RELEASE_NS, CI_SERVICE_ACCOUNT)
        assert not rbac.allowed(ci, "patch", group, resource, serving_ns)


def test_release_pipeline_pods_can_hand_over_to_the_release_pipeline(model, built):
    """The training run's deploy-staging step submits the release pipeline (kfrelease.release.handover): its
    pods get a projected KFP token (audience pipelines.kubeflow.org) and the API address from the release
    namespace's PodDefault, and run as default-editor, which may create runs there."""
    env, rbac = model
    (pod_default,) = [
        d for d in built[env]
        if d["kind"] == "PodDefault" and d["metadata"]["name"] == "pipeline-pods-env"
        and d["metadata"]["namespace"] == RELEASE_NS
    ]
    spec = pod_default["spec"]
    variables = {e["name"]: e.get("value") for e in spec["env"]}
    assert variables["KFRELEASE_KFP_HOST"].startswith("http://ml-pipeline-ui.kubeflow")
    assert variables["KFRELEASE_NAMESPACE"] == RELEASE_NS
    assert variables["KFRELEASE_TARGET"] == "cluster"  # the release steps patch the InferenceService
    (volume,) = [v for v in spec["volumes"] if v["name"] == "kfp-api-token"]
    (token,) = [s["serviceAccountToken"] for s in volume["projected"]["sources"]]
    assert token["audience"] == "pipelines.kubeflow.org"
    (mount,) = [m for m in spec["volumeMounts"] if m["name"] == "kfp-api-token"]
    assert variables["KF_PIPELINES_SA_TOKEN_PATH"] == f"{mount['mountPath']}/{token['path']}"
    assert rbac.allowed(service_account(RELEASE_NS, PROFILE_SA), "create", KFP, "runs", RELEASE_NS)
    # the data namespace's pipeline pods get no KFP token: nothing there submits runs
    data_pod_defaults = [
        d for d in built[env]
        if d["kind"] == "PodDefault" and d["metadata"]["name"] == "pipeline-pods-env"
        and d["metadata"]["namespace"] != RELEASE_NS
    ]
    assert data_pod_defaults and all(
        "KF_PIPELINES_SA_TOKEN_PATH" not in {e["name"] for e in d["spec"]["env"]} for d in data_pod_defaults
    )
