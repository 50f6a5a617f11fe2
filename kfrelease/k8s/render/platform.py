"""Kubeflow side of the cluster: Profiles and namespaces, IRSA service accounts, RBAC, kfp-launcher, PodDefaults.

Who may do what with pipeline runs (KFP multi-user authorizes every API call with a SubjectAccessReview on
resources of the group ``pipelines.kubeflow.org``; verbs as in kubeflow/pipelines
``manifests/kustomize/base/installs/multi-user/view-edit-cluster-roles.yaml``):

- data scientists get Kubeflow's standard ``kubeflow-view`` in the release namespace: ``runs`` get, list,
  readArtifact; experiments get, list; Argo ``workflows`` none. They cannot create, terminate, retry,
  delete or archive a release run;
- the CI service account ``kfrelease-ci`` gets ``kfrelease-run-submitter``: create and read runs,
  experiments, pipelines and versions; nothing that stops a run. Nobody on the team can stop a run: only a
  new merge starts a new one;
- the model code (train: the merge's; score-champion: production's) runs as ``kfrelease-untrusted-step``,
  which holds only what the Argo executor and the KFP launcher need; the release steps run as
  ``kfrelease-release-driver`` (the driver's Role in the serving namespace); only the hand-over step gets a KFP
  API token (``step_identities``).

Over 500 lines on purpose: it is the one list of the Kubeflow-side objects and of who may do what, read as a
whole when reviewing access (each function renders one kind of object; the evaluators are ``authz`` and
``mesh``, the workloads ``workloads``).
"""

from __future__ import annotations

import json

from kfrelease.access.policy import AccessPolicy
from kfrelease.access.render import bucket_name
from kfrelease.k8s.environments import (
    CI_GROUP,
    CI_SERVICE_ACCOUNT,
    DATA_NS,
    MONITORING_NS,
    PROFILE_SA,
    RELEASE_NS,
    SCIENCE_NS,
    Environment,
    Team,
    iam_role_name,
)
from kfrelease.kfp.submit import IN_CLUSTER_HOST, TOKEN_AUDIENCE, TOKEN_DIR
from kfrelease.monitoring.pushauth import PUSH_SECRET

RBAC = "rbac.authorization.k8s.io"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
PART_OF = {"app.kubernetes.io/part-of": "kfrelease"}

RUN_SUBMITTER = "kfrelease-run-submitter"
CI_TOKEN_ROLE = "kfrelease-ci-token"


def role_placements(serving_ns: str) -> dict[str, tuple[str, str, bool]]:
    """Access-policy role -> (namespace, service account, via a Kubeflow Profile)."""
    return {
        "data-engineer": (DATA_NS, PROFILE_SA, True),
        "data-scientist": (SCIENCE_NS, PROFILE_SA, True),
        "pipeline": (RELEASE_NS, PROFILE_SA, True),
        "serving": (serving_ns, "kfrelease-serving", False),
        "monitoring": (MONITORING_NS, "kfrelease-monitoring", False),
    }


def placed_roles(policy: AccessPolicy) -> list[str]:
    """The access-policy roles with a service account (or Profile) of their own: all but ``RELEASE_ROLE``."""
    return [role for role in policy.roles if role != RELEASE_ROLE]


def _meta(
    name: str,
    namespace: str | None = None,
    labels: dict | None = None,
    annotations: dict | None = None,
):
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**PART_OF, **(labels or {})}
    if annotations:
        meta["annotations"] = annotations
    return meta


def profile(name: str, owner: str, env: Environment, role: str, workspace: str | None = None) -> dict:
    """A Kubeflow Profile whose ``default-editor`` service account assumes the role's IAM role (IRSA).

    ``annotateOnly: true``: the profile controller only annotates the service account; the role and its
    trust policy are created by eksctl (``iam.serviceAccounts`` with ``roleOnly``).
    """
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Profile",
        "metadata": _meta(name, labels={"kfrelease.io/role": role}),
        "spec": {
            "owner": {"kind": "User", "name": owner},
            "plugins": [
                {
                    "kind": "AwsIamForServiceAccount",
                    "spec": {
                        "awsIamRole": env.role_arn(iam_role_name(role, workspace)),
                        "annotateOnly": True,
                    },
                }
            ],
        },
    }


def namespace(name: str, mesh: bool) -> dict:
    """A plain namespace; ``mesh``: Istio sidecars (serving: the VirtualService mirror and KServe need them;
    monitoring stays outside so kube-prometheus-stack's Prometheus can scrape the Pushgateway)."""
    labels = {"istio-injection": "enabled" if mesh else "disabled"}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(name, labels=labels),
    }


def service_account(name: str, ns: str, role_arn: str | None = None) -> dict:
    doc = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, ns)}
    if role_arn:
        doc["metadata"]["annotations"] = {IRSA_ANNOTATION: role_arn}
    return doc


def s3_env(env: Environment, role: str) -> list[dict]:
    """The environment that points ``kfrelease.storage`` at Amazon S3 with IRSA credentials."""
    return [
        {"name": "KFRELEASE_S3_ENDPOINT", "value": "s3.amazonaws.com"},
        {"name": "KFRELEASE_S3_SECURE", "value": "true"},
        {"name": "KFRELEASE_S3_REGION", "value": env.region},
        {"name": "KFRELEASE_BUCKET_PREFIX", "value": env.bucket_prefix},
        {"name": "KFRELEASE_ROLE", "value": role},
    ]


def pod_default(role: str, ns: str, env: Environment, service_account_name: str) -> dict:
    """PodDefault ``access-s3-<role>``: pods labelled with it run as the role's IRSA service account."""
    name = f"access-s3-{role}"
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": _meta(name, ns),
        "spec": {
            "desc": f"Object store access as the {role!r} role of the kfrelease access policy (IRSA)",
            "selector": {"matchLabels": {name: "true"}},
            "serviceAccountName": service_account_name,
            "env": s3_env(env, role),
        },
    }


REGISTRY_AUTH = "kfrelease-registry-auth"
REGISTRY_AUTH_DIR = "/etc/kfrelease/registry"


def registry_auth(env: Environment, ns: str) -> dict:
    """containers-auth.json for skopeo: ECR credentials from ``docker-credential-ecr-login`` (Debian
    ``amazon-ecr-credential-helper`` in the project image), which uses the pod's IRSA credentials."""
    auth = {"credHelpers": {env.registry: "ecr-login"}}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(REGISTRY_AUTH, ns),
        "data": {"auth.json": json.dumps(auth, indent=2) + "\n"},
    }


#: The Prometheus the release steps query on a cluster: the ``prometheus-operated`` Service that the
#: Prometheus operator creates beside its Prometheus (kube-prometheus-stack, installed in ``monitoring``;
#: prometheus-operator ``pkg/prometheus/server/operator.go`` governing Service).
CLUSTER_PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"


def pipeline_pods_env(role: str, ns: str, env: Environment, registry: str | None = None) -> dict:
    """PodDefault ``pipeline-pods-env``: every pod of a pipeline run (Argo labels each with
    ``workflows.argoproj.io/workflow``) gets the role's object-store settings, so components'
    ``store_for(role)`` reach S3 with the Profile's IRSA credentials. With ``registry``, also where the
    containerize step pushes ModelCar images and the auth file skopeo reads (``REGISTRY_AUTH_FILE``)."""
    spec: dict = {
        "desc": f"Pipeline pods: object store as the {role!r} role (IRSA)",
        "selector": {"matchExpressions": [{"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]},
        "env": s3_env(env, role),
    }
    if registry:
        spec["env"] = spec["env"] + [
            {"name": "KFRELEASE_IMAGE_REGISTRY", "value": registry},
            {"name": "REGISTRY_AUTH_FILE", "value": f"{REGISTRY_AUTH_DIR}/auth.json"},
        ]
        spec["volumes"] = [{"name": "registry-auth", "configMap": {"name": REGISTRY_AUTH}}]
        spec["volumeMounts"] = [{"name": "registry-auth", "mountPath": REGISTRY_AUTH_DIR, "readOnly": True}]
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": _meta("pipeline-pods-env", ns),
        "spec": spec,
    }


# --- which pipeline step runs as whom --------------------------------------------------------------
#
# KFP runs every pod of a run as the run's service account (``default-editor`` in a Profile namespace, which
# the profile controller binds to ``kubeflow-edit``: runs terminate/delete, Argo workflows ``*``, pods
# delete/exec). kfp-kubernetes 2.17.3 has no per-task service account (its API: pod labels/annotations,
# volumes, secrets, node selectors, tolerations, image pull, security context, timeouts), so the steps carry a
# pod label (``kfp.kubernetes.add_pod_label``; KFP's Argo compiler copies it to the pod template:
# kubeflow/pipelines ``backend/src/v2/compiler/argocompiler/container.go`` ``extendPodMetadata``) and a
# Kubeflow PodDefault selected by that label sets the pod's ``serviceAccountName`` (the admission webhook
# overwrites it: kubeflow/kubeflow ``components/admission-webhook/main.go`` ``applyPodDefaultsOnPod``).
# A label is the run author's to write, so it only *asks*: the release namespace's ValidatingAdmissionPolicy admits
# a pod as ``kfrelease-release-driver`` only if it runs a release component unchanged (``kfrelease.k8s.render.admission``).

STEP_LABEL = "kfrelease.io/step-identity"
#: train and score-champion run model code (the merge's ``estimator.class``, ``build:``; production's pickle): no KFP
#: token, no kubeflow-edit, no driver rights (evaluate is trusted and refuses pickles, KFRELEASE_REFUSE_PICKLE).
UNTRUSTED = "untrusted"
#: the release steps (preflight, shadow gate, canary rollout): the release driver's Role in serving.
RELEASE_DRIVER_STEP = "release-driver"
#: the step that hands over to the release pipeline (deploy-staging): a projected KFP API token.
KFP_SUBMITTER_STEP = "kfp-submitter"
UNTRUSTED_SA = "kfrelease-untrusted-step"
RELEASE_DRIVER_SA = "kfrelease-release-driver"
PIPELINE_STEP_ROLE = "kfrelease-pipeline-step"
#: Their IAM roles (IRSA; eksctl trusts one service account per role), no ECR push (only containerize pushes,
#: as default-editor): the release driver's has the pipeline role's S3 policy and the release role's (``RELEASE_ROLE``,
#: the only writer of the ``releases`` bucket); the untrusted steps' only
#: their own step records and the KFP artifacts, no curated data (``kfrelease.k8s.render.eks.untrusted_step_policy``):
#: no registry write, so the merged model code cannot register, stage or promote anything itself.
STEP_IAM_ROLES = {
    UNTRUSTED_SA: "kfrelease-pipeline-untrusted-step",
    RELEASE_DRIVER_SA: "kfrelease-pipeline-release-driver",
}
#: The access-policy role of the release steps alone (bucket ``releases``: the shadow gate's verdicts); it has no
#: service account of its own: the release driver's IAM role holds it with the pipeline role's grants
#: (``kfrelease.k8s.render.eks.cluster_config``), so ``default-editor`` cannot write what the rollout step trusts.
RELEASE_ROLE = "release"


def pipeline_step_role(ns: str) -> dict:
    """What any pipeline pod's own token must be able to do, and nothing more: the Argo emissary executor
    reports outputs as ``workflowtaskresults`` (argoproj/argo-workflows
    ``manifests/quick-start/base/executor/emissary/executor-role.yaml``) and the KFP launcher reads the
    ``kfp-launcher`` ConfigMap (kubeflow/pipelines ``backend/src/v2/config/env.go`` ``FetchLauncherConfigMap``)."""
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "Role",
        "metadata": _meta(PIPELINE_STEP_ROLE, ns),
        "rules": [
            {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["kfp-launcher"]},
        ],
    }


def step_identities(env: Environment, ns: str) -> list[dict]:
    """The service accounts of the untrusted steps and of the release steps (each with its IRSA role:
    ``STEP_IAM_ROLES``), the minimal step Role bound to both, and the PodDefaults that select them.

    The untrusted pods keep a Kubernetes token of their own service account (the Argo executor in the same
    pod needs it, and a PodDefault cannot remove the token volume the ServiceAccount admission plugin adds
    before the webhook runs); it can only write ``workflowtaskresults`` and read ``kfp-launcher``. They get
    no KFP API token (audience pipelines.kubeflow.org): only ``kfp_api_access`` mounts one."""
    docs = [service_account(sa, ns, env.role_arn(role)) for sa, role in STEP_IAM_ROLES.items()]
    docs.append(pipeline_step_role(ns))
    docs.append(
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(PIPELINE_STEP_ROLE, ns),
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": PIPELINE_STEP_ROLE},
            "subjects": [
                {"kind": "ServiceAccount", "name": sa, "namespace": ns} for sa in (UNTRUSTED_SA, RELEASE_DRIVER_SA)
            ],
        }
    )
    for step, sa, desc in (
        (UNTRUSTED, UNTRUSTED_SA, "merged model code (train, score-champion): no KFP token, no kubeflow-edit"),
        (RELEASE_DRIVER_STEP, RELEASE_DRIVER_SA, "release steps: the release driver's rights in the serving namespace"),
    ):
        spec: dict = {
            "desc": f"Pipeline steps running {desc}",
            "selector": {"matchLabels": {STEP_LABEL: step}},
            "serviceAccountName": sa,
        }
        if step == RELEASE_DRIVER_STEP:  # the release steps patch the InferenceService, not the local gateway
            spec["env"] = [
                {"name": "KFRELEASE_TARGET", "value": "cluster"},
                # the canary's traffic checks query the cluster's Prometheus (kfrelease.release.checks)
                {"name": "KFRELEASE_PROMETHEUS_URL", "value": CLUSTER_PROMETHEUS_URL},
                # what the driver renders must be what this cluster runs: its KServe (deployment mode values,
                # spec.canary) and its model domain (the VirtualService's hosts, as the bootstrap rendered them)
                {"name": "KFRELEASE_KSERVE_VERSION", "value": env.kserve_version},
                {"name": "KFRELEASE_SERVING_DOMAIN", "value": env.model_domain},
                # the gates count only the labels of declared sources, the feedback service's own declaration
                {"name": "KFRELEASE_LABEL_SOURCES", "value": label_sources_value(env)},
                # what one model's predictors may ask of the serving nodes (review eks5 S4; preflight checks it)
                {"name": "KFRELEASE_SERVING_LIMITS", "value": env.serving_limits.as_json()},
            ]
            replay = replay_access()
            spec["env"] += replay["env"]
            spec["volumes"], spec["volumeMounts"] = replay["volumes"], replay["volumeMounts"]
        docs.append(
            {
                "apiVersion": "kubeflow.org/v1alpha1",
                "kind": "PodDefault",
                "metadata": _meta(f"kfrelease-{step}-step", ns),
                "spec": spec,
            }
        )
    return docs


def label_sources_value(env: Environment) -> str:
    """``KFRELEASE_LABEL_SOURCES`` of the release steps: the JSON of ``mesh.label_source_declaration``."""
    # cycle: kfrelease.k8s.render.mesh imports this module
    from kfrelease.k8s.render.mesh import label_source_declaration

    return json.dumps(label_source_declaration(env.mesh_clients, env.label_source_users), sort_keys=True)


#: Where the release steps find the ingress gateway (Kubeflow's ``istio-system/istio-ingressgateway`` Service,
#: plain HTTP on port 80: kubeflow/manifests ``common/istio/istio-install/base``) and their projected token.
INGRESS_GATEWAY_URL = "http://istio-ingressgateway.istio-system.svc.cluster.local"
REPLAY_TOKEN_DIR = "/var/run/secrets/kfrelease/replay"


def replay_access() -> dict:
    """What the release steps need to ask production's predictor for its answers (the canary's labelled
    accuracy check): KFP runs them without a sidecar (kubeflow/pipelines#14468), so they go through the
    ingress gateway in plain text (``KFRELEASE_INGRESS_GATEWAY_URL``) on the release VirtualService's
    ``replay`` route, presenting a projected token of their own service account (``KFRELEASE_REPLAY_TOKEN_PATH``;
    the kubelet renews it) for the audience the gateway's ``m2m-token-issuer`` RequestAuthentication accepts
    (``kfrelease.k8s.render.kubeflow.oauth2_proxy_kustomization``). The gateway's
    ``kfrelease-production-replay`` policy admits that route for this identity only; the same token at KFP is
    the release driver, which holds no KFP right (tests/manifests/test_rbac.py)."""
    return {
        "env": [
            {"name": "KFRELEASE_INGRESS_GATEWAY_URL", "value": INGRESS_GATEWAY_URL},
            {"name": "KFRELEASE_REPLAY_TOKEN_PATH", "value": f"{REPLAY_TOKEN_DIR}/token"},
        ],
        **projected_token("kfrelease-replay-token", REPLAY_TOKEN_DIR, expiration_seconds=3600),
    }


def projected_token(volume: str, mount_path: str, expiration_seconds: int) -> dict:
    """A PodDefault's ``volumes`` and ``volumeMounts`` for a projected token of the pod's own service account,
    audience ``TOKEN_AUDIENCE``, read-only at ``mount_path``/token (the kubelet renews it)."""
    token = {"path": "token", "expirationSeconds": expiration_seconds, "audience": TOKEN_AUDIENCE}
    return {
        "volumes": [{"name": volume, "projected": {"sources": [{"serviceAccountToken": token}]}}],
        "volumeMounts": [{"name": volume, "mountPath": mount_path, "readOnly": True}],
    }


def kfp_api_access(ns: str) -> dict:
    """PodDefault ``kfrelease-kfp-api``: only the step that submits the release pipeline as a new run
    (deploy-staging, ``kfrelease.release.handover``) gets a projected token with audience
    pipelines.kubeflow.org, read by kfp.Client via ``KF_PIPELINES_SA_TOKEN_PATH`` (Kubeflow's in-cluster
    pattern, as its ``access-ml-pipeline`` PodDefault), as the Profile's default-editor (may create runs)."""
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": _meta("kfrelease-kfp-api", ns),
        "spec": {
            "desc": "The hand-over step: a KFP API token to submit the release pipeline",
            "selector": {"matchLabels": {STEP_LABEL: KFP_SUBMITTER_STEP}},
            "env": [
                {"name": "KFRELEASE_TARGET", "value": "cluster"},
                {"name": "KFRELEASE_KFP_HOST", "value": IN_CLUSTER_HOST},
                {"name": "KFRELEASE_NAMESPACE", "value": ns},
                {"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": f"{TOKEN_DIR}/token"},
            ],
            **projected_token("kfp-api-token", TOKEN_DIR, expiration_seconds=7200),
        },
    }


#: The monitoring steps (the monitoring pipeline's ``monitor``): the Pushgateway's push credentials.
MONITORING_STEP = "monitoring"
#: The Pushgateway's Service, as the monitoring steps reach it (no sidecar on either side: plain HTTP)
CLUSTER_PUSHGATEWAY_URL = "http://kfrelease-pushgateway.kfrelease-monitoring.svc:9091"
PUSH_CREDENTIALS_DIR = "/var/run/secrets/kfrelease/pushgateway"


def monitoring_push_access(ns: str) -> dict:
    """PodDefault ``kfrelease-monitoring-push``: only pods labelled ``kfrelease.io/step-identity: monitoring``
    (``step_label``; the monitoring pipeline's ``monitor`` step) get the Pushgateway's URL and the push credentials
    (the Secret ``kfrelease.monitoring.pushauth.PUSH_SECRET``, which the platform engineer creates). A pod has one
    value of that label, so the merged model code's steps (``untrusted``) never get them; no pod outside the
    pipelines' namespace can mount them."""
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": _meta("kfrelease-monitoring-push", ns),
        "spec": {
            "desc": "The monitoring steps: the Pushgateway and its push credentials",
            "selector": {"matchLabels": {STEP_LABEL: MONITORING_STEP}},
            "env": [
                {"name": "KFRELEASE_PUSHGATEWAY_URL", "value": CLUSTER_PUSHGATEWAY_URL},
                {"name": "KFRELEASE_PUSHGATEWAY_CREDENTIALS", "value": PUSH_CREDENTIALS_DIR},
            ],
            "volumes": [{"name": "kfrelease-pushgateway-push", "secret": {"secretName": PUSH_SECRET}}],
            "volumeMounts": [
                {"name": "kfrelease-pushgateway-push", "mountPath": PUSH_CREDENTIALS_DIR, "readOnly": True}
            ],
        },
    }


def step_label(task, identity: str):
    """Label a pipeline task's pod with the identity it runs as (see ``step_identities``); returns the task."""
    from kfp import kubernetes  # heavy: kfp

    return kubernetes.add_pod_label(task, STEP_LABEL, identity)


def kfp_launcher(env: Environment, ns: str, pipeline_root: str) -> dict:
    """The ``kfp-launcher`` ConfigMap: S3 pipeline root, credentials from the pod's IRSA environment.

    Format from kubeflow/pipelines#10625 (``providers.s3.default`` with ``credentials.fromEnv``).
    """
    providers = (
        "s3:\n"
        "  default:\n"
        '    endpoint: "s3.amazonaws.com"\n'
        f'    region: "{env.region}"\n'
        "    disableSSL: false\n"
        "    credentials:\n"
        "      fromEnv: true\n"
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta("kfp-launcher", ns),
        "data": {"defaultPipelineRoot": pipeline_root, "providers": providers},
    }


def cluster_roles() -> list[dict]:
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": _meta(RUN_SUBMITTER),
            "rules": [
                {
                    "apiGroups": ["pipelines.kubeflow.org"],
                    "resources": ["runs"],
                    "verbs": ["create", "get", "list"],
                },
                {
                    "apiGroups": ["pipelines.kubeflow.org"],
                    "resources": ["experiments"],
                    "verbs": ["create", "get", "list"],
                },
                {
                    # read only: the CI may not upload a pipeline or a version (only the platform does)
                    "apiGroups": ["pipelines.kubeflow.org"],
                    "resources": ["pipelines", "pipelineversions"],
                    "verbs": ["get", "list"],
                },
            ],
        }
    ]


def kfam_user_binding(user: str, ns: str, role: str = "view") -> list[dict]:
    """What Kubeflow's access management (KFAM) creates for a contributor: a RoleBinding to
    ``kubeflow-<role>`` and an Istio AuthorizationPolicy letting the user's requests reach the namespace."""
    slug = "".join(c if c.isalnum() else "-" for c in user.lower())
    name = f"user-{slug}-clusterrole-{role}"
    ann = {"role": role, "user": user}
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, ns, annotations=ann),
            "roleRef": {
                "apiGroup": RBAC,
                "kind": "ClusterRole",
                "name": f"kubeflow-{role}",
            },
            "subjects": [{"apiGroup": RBAC, "kind": "User", "name": user}],
        },
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": _meta(name, ns, annotations=ann),
            "spec": {
                "action": "ALLOW",
                "rules": [
                    {
                        "from": [
                            {
                                "source": {
                                    "principals": [
                                        "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
                                    ]
                                }
                            }
                        ],
                        "when": [
                            {
                                "key": "request.headers[kubeflow-userid]",
                                "values": [user],
                            }
                        ],
                    }
                ],
            },
        },
    ]


RELEASE_DRIVER = "kfrelease-release-driver"


def release_lease_name(model_slug: str) -> str:
    """The ``coordination.k8s.io`` Lease that is a model's release lock on the cluster."""
    return f"kfrelease-release-{model_slug}"


def release_driver_rbac(serving_ns: str, models: list[str]) -> list[dict]:
    """Role ``kfrelease-release-driver`` in the serving namespace, bound to the release steps' service account
    only: exactly the operations ``kfrelease.k8s.driver.kserve`` sends for a whole release (shadow, canary
    steps, promotion, rollback) and its lock. ``models`` are DNS slugs (``kfrelease.k8s.render.inference.production_name``).

    Delete is granted on the staging InferenceServices by name only (the shadow ends by deleting it), never
    on production; the Lease verbs that name an object are limited to each model's lock (RBAC cannot limit
    ``create`` by name: the authorizer does not know the name of an object being created)."""
    staging = [f"{m}-staging" for m in models]
    leases = [release_lease_name(m) for m in models]
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": _meta(RELEASE_DRIVER, serving_ns),
            "rules": [
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices"],
                    "verbs": ["get", "list", "watch", "create", "patch"],
                },
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices"],
                    "verbs": ["delete"],
                    "resourceNames": staging,
                },
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices/status"],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": ["networking.istio.io"],
                    "resources": ["virtualservices"],
                    "verbs": ["get", "list", "watch", "create", "patch"],
                },
                # a Standard-mode canary's Service in front of its KServe agent, created and deleted with the
                # canary (``render.inference.logged_canary_service``; its name carries the version, so RBAC
                # cannot name it in advance)
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "patch"]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "verbs": ["get", "update"],
                    "resourceNames": leases,
                },
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(RELEASE_DRIVER, serving_ns),
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": RELEASE_DRIVER},
            "subjects": [{"kind": "ServiceAccount", "name": RELEASE_DRIVER_SA, "namespace": RELEASE_NS}],
        },
        # the preflight of every release step (``KServeTrafficDriver.check_identity``): may default-editor
        # impersonate the driver? A LocalSubjectAccessReview answers for this namespace only.
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": _meta(RELEASE_DRIVER, RELEASE_NS),
            "rules": [
                {"apiGroups": ["authorization.k8s.io"], "resources": ["localsubjectaccessreviews"], "verbs": ["create"]}
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(RELEASE_DRIVER, RELEASE_NS),
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": RELEASE_DRIVER},
            "subjects": [{"kind": "ServiceAccount", "name": RELEASE_DRIVER_SA, "namespace": RELEASE_NS}],
        },
    ]


def release_rbac() -> list[dict]:
    """RoleBindings of the release namespace: the CI service account creates runs; the CI's IAM role may
    only mint that service account's tokens.

    People get no Group binding: a person signed in to Kubeflow reaches KFP, whose SubjectAccessReview
    carries the user only (``kfrelease.k8s.policy.rbac``), and no EKS access entry maps people to a group. Each
    data scientist is bound by user name (``kfrelease.k8s.render.workspace``: view in the release namespace, edit in
    the science namespace, as KFAM binds a Profile contributor); the Profile owners are bound by the profile
    controller. Only the CI group is real: the CI role's access entry maps it (``kfrelease.k8s.render.eks``)."""
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta("kfrelease-ci-submits-runs", RELEASE_NS),
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": RUN_SUBMITTER},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": CI_SERVICE_ACCOUNT,
                    "namespace": RELEASE_NS,
                }
            ],
        },
        {
            # The CI's IAM role (GitHub OIDC) maps to this group via an EKS access entry; it may only mint
            # tokens for the CI service account (`kubectl create token kfrelease-ci`).
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": _meta(CI_TOKEN_ROLE, RELEASE_NS),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token"],
                    "verbs": ["create"],
                    "resourceNames": [CI_SERVICE_ACCOUNT],
                }
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(CI_TOKEN_ROLE, RELEASE_NS),
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": CI_TOKEN_ROLE},
            "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": CI_GROUP}],
        },
    ]


def platform_documents(env: Environment, policy: AccessPolicy, team: Team, serving_ns: str) -> list[dict]:
    """Profiles, namespaces, service accounts, RBAC, kfp-launcher and PodDefaults of one environment."""
    owners = {
        "data-engineer": team.data_engineering_owner,
        "data-scientist": team.data_science_owner,
        "pipeline": team.release_owner,
    }
    docs: list[dict] = []
    placements = role_placements(serving_ns)
    for role in placed_roles(policy):
        ns, sa, via_profile = placements[role]
        if via_profile:
            docs.append(profile(ns, owners[role], env, role))
        else:
            docs.append(namespace(ns, mesh=ns == serving_ns))
            docs.append(service_account(sa, ns, env.role_arn(iam_role_name(role))))
    docs.append(service_account(CI_SERVICE_ACCOUNT, RELEASE_NS))
    docs += cluster_roles() + release_rbac() + step_identities(env, RELEASE_NS)
    # Pipelines run in the release namespace (training, release, monitoring) and in the data namespace.
    docs.append(kfp_launcher(env, RELEASE_NS, env.pipeline_root()))
    docs.append(kfp_launcher(env, DATA_NS, data_pipeline_root(env)))
    # One PodDefault per role that works in a Profile namespace: Kubeflow's PodDefault webhook acts only in
    # namespaces labelled app.kubernetes.io/part-of=kubeflow-profile (kubeflow/manifests admission-webhook
    # mutating-webhook-configuration.yaml). The serving workloads set the same variables themselves.
    for role in placed_roles(policy):
        ns, sa, via_profile = placements[role]
        if via_profile:
            docs.append(pod_default(role, ns, env, sa))
    docs.append(registry_auth(env, RELEASE_NS))
    docs.append(pipeline_pods_env("pipeline", RELEASE_NS, env, registry=env.registry))
    docs.append(kfp_api_access(RELEASE_NS))
    docs.append(monitoring_push_access(RELEASE_NS))
    docs.append(pipeline_pods_env("data-engineer", DATA_NS, env))
    return docs


def data_pipeline_root(env: Environment) -> str:
    """The data pipeline's artifacts hold raw rows, so they live in the ``raw`` bucket (data engineers only);
    the data-engineer role has no access to ``pipeline-root``, which data scientists can read."""
    return f"s3://{env.bucket_prefix}raw/kfp-artifacts"


def bucket_names(policy: AccessPolicy, env: Environment) -> list[str]:
    return [bucket_name(b, env.bucket_prefix) for b in policy.buckets]
