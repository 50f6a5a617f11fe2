"""Kubeflow side of the cluster: Profiles and namespaces, IRSA service accounts, RBAC, kfp-launcher, PodDefaults.

Who may do what with pipeline runs (KFP multi-user authorizes every API call with a SubjectAccessReview on
resources of the group ``pipelines.kubeflow.org``; verbs as in kubeflow/pipelines
``manifests/kustomize/base/installs/multi-user/view-edit-cluster-roles.yaml``):

- data scientists get Kubeflow's standard ``kubeflow-view`` in the release namespace: ``runs`` get, list,
  readArtifact; experiments get, list; Argo ``workflows`` none. They cannot create, terminate, retry,
  delete or archive a release run;
- the CI service account ``kfrelease-ci`` gets ``kfrelease-run-submitter``: create and read runs,
  experiments, pipelines and versions; nothing that stops a run. Nobody on the team can stop a run: only a
  new merge starts a new one (DESIGN.md).
"""

from __future__ import annotations

import json

from kfrelease.access.policy import AccessPolicy
from kfrelease.access.render import bucket_name
from kfrelease.k8s.environments import (
    CI_GROUP,
    CI_SERVICE_ACCOUNT,
    DATA_ENGINEERS_GROUP,
    DATA_NS,
    DATA_SCIENTISTS_GROUP,
    MONITORING_NS,
    PROFILE_SA,
    RELEASE_NS,
    SCIENCE_NS,
    Environment,
    Team,
    iam_role_name,
)

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


def profile(
    name: str, owner: str, env: Environment, role: str, workspace: str | None = None
) -> dict:
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


def pod_default(
    role: str, ns: str, env: Environment, service_account_name: str
) -> dict:
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


def pipeline_pods_env(
    role: str, ns: str, env: Environment, registry: str | None = None, kfp_api: bool = False
) -> dict:
    """PodDefault ``pipeline-pods-env``: every pod of a pipeline run (Argo labels each with
    ``workflows.argoproj.io/workflow``) gets the role's object-store settings, so components'
    ``store_for(role)`` reach S3 with the Profile's IRSA credentials. With ``registry``, also where the
    containerize step pushes ModelCar images and the auth file skopeo reads (``REGISTRY_AUTH_FILE``)."""
    spec: dict = {
        "desc": f"Pipeline pods: object store as the {role!r} role (IRSA)",
        "selector": {
            "matchExpressions": [
                {"key": "workflows.argoproj.io/workflow", "operator": "Exists"}
            ]
        },
        "env": s3_env(env, role),
    }
    if registry:
        spec["env"] = spec["env"] + [
            {"name": "KFRELEASE_IMAGE_REGISTRY", "value": registry},
            {"name": "REGISTRY_AUTH_FILE", "value": f"{REGISTRY_AUTH_DIR}/auth.json"},
        ]
        spec["volumes"] = [
            {"name": "registry-auth", "configMap": {"name": REGISTRY_AUTH}}
        ]
        spec["volumeMounts"] = [
            {"name": "registry-auth", "mountPath": REGISTRY_AUTH_DIR, "readOnly": True}
        ]
    if kfp_api:
        # The training pipeline's deploy-staging step submits the release pipeline as a new run
        # (kfrelease.release.handover): Kubeflow's in-cluster pattern, a projected token with audience
        # pipelines.kubeflow.org read by kfp.Client via KF_PIPELINES_SA_TOKEN_PATH (as the access-ml-pipeline
        # PodDefault does), as the Profile's default-editor, which may create runs in its own namespace.
        from kfrelease.kfp_submit import IN_CLUSTER_HOST, TOKEN_AUDIENCE, TOKEN_DIR

        spec["env"] = spec["env"] + [
            # the release pipeline's steps drive KServe/Istio traffic, not the local gateway (release/run.py)
            {"name": "KFRELEASE_TARGET", "value": "cluster"},
            {"name": "KFRELEASE_KFP_HOST", "value": IN_CLUSTER_HOST},
            {"name": "KFRELEASE_NAMESPACE", "value": ns},
            {"name": "KF_PIPELINES_SA_TOKEN_PATH", "value": f"{TOKEN_DIR}/token"},
        ]
        spec["volumes"] = spec.get("volumes", []) + [{
            "name": "kfp-api-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "path": "token", "expirationSeconds": 7200, "audience": TOKEN_AUDIENCE}}]},
        }]
        spec["volumeMounts"] = spec.get("volumeMounts", []) + [
            {"name": "kfp-api-token", "mountPath": TOKEN_DIR, "readOnly": True}
        ]
    return {
        "apiVersion": "kubeflow.org/v1alpha1",
        "kind": "PodDefault",
        "metadata": _meta("pipeline-pods-env", ns),
        "spec": spec,
    }


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
                    "resources": ["experiments", "pipelines", "pipelineversions"],
                    "verbs": ["create", "get", "list"],
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


def release_driver_rbac(serving_ns: str) -> list[dict]:
    """The release pipeline (``default-editor`` of the release namespace) moves traffic: it applies and
    patches the InferenceServices and the VirtualService in the serving namespace, and nothing else there."""
    return [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "Role",
            "metadata": _meta(RELEASE_DRIVER, serving_ns),
            "rules": [
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update"],
                },
                {
                    "apiGroups": ["serving.kserve.io"],
                    "resources": ["inferenceservices/status"],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": ["networking.istio.io"],
                    "resources": ["virtualservices"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update"],
                },
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta(RELEASE_DRIVER, serving_ns),
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": RELEASE_DRIVER},
            "subjects": [
                {"kind": "ServiceAccount", "name": PROFILE_SA, "namespace": RELEASE_NS}
            ],
        },
    ]


def release_rbac() -> list[dict]:
    """RoleBindings of the release namespace: CI creates runs; data scientists (group) only view."""
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
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta("kfrelease-data-scientists-view", RELEASE_NS),
            "roleRef": {
                "apiGroup": RBAC,
                "kind": "ClusterRole",
                "name": "kubeflow-view",
            },
            "subjects": [
                {"apiGroup": RBAC, "kind": "Group", "name": DATA_SCIENTISTS_GROUP}
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta("kfrelease-data-scientists-edit", SCIENCE_NS),
            "roleRef": {
                "apiGroup": RBAC,
                "kind": "ClusterRole",
                "name": "kubeflow-edit",
            },
            "subjects": [
                {"apiGroup": RBAC, "kind": "Group", "name": DATA_SCIENTISTS_GROUP}
            ],
        },
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "RoleBinding",
            "metadata": _meta("kfrelease-data-engineers-edit", DATA_NS),
            "roleRef": {
                "apiGroup": RBAC,
                "kind": "ClusterRole",
                "name": "kubeflow-edit",
            },
            "subjects": [
                {"apiGroup": RBAC, "kind": "Group", "name": DATA_ENGINEERS_GROUP}
            ],
        },
    ]


def platform_documents(
    env: Environment, policy: AccessPolicy, team: Team, serving_ns: str
) -> list[dict]:
    """Profiles, namespaces, service accounts, RBAC, kfp-launcher and PodDefaults of one environment."""
    owners = {
        "data-engineer": team.data_engineering_owner,
        "data-scientist": team.data_science_owner,
        "pipeline": team.release_owner,
    }
    docs: list[dict] = []
    placements = role_placements(serving_ns)
    for role in policy.roles:
        ns, sa, via_profile = placements[role]
        if via_profile:
            docs.append(profile(ns, owners[role], env, role))
        else:
            docs.append(namespace(ns, mesh=ns == serving_ns))
            docs.append(service_account(sa, ns, env.role_arn(iam_role_name(role))))
    docs.append(service_account(CI_SERVICE_ACCOUNT, RELEASE_NS))
    docs += cluster_roles() + release_rbac() + release_driver_rbac(serving_ns)
    # Pipelines run in the release namespace (training, release, monitoring) and in the data namespace.
    docs.append(kfp_launcher(env, RELEASE_NS, env.pipeline_root()))
    docs.append(kfp_launcher(env, DATA_NS, data_pipeline_root(env)))
    # One PodDefault per role that works in a Profile namespace: Kubeflow's PodDefault webhook acts only in
    # namespaces labelled app.kubernetes.io/part-of=kubeflow-profile (kubeflow/manifests admission-webhook
    # mutating-webhook-configuration.yaml). The serving workloads set the same variables themselves.
    for role in policy.roles:
        ns, sa, via_profile = placements[role]
        if via_profile:
            docs.append(pod_default(role, ns, env, sa))
    docs.append(registry_auth(env, RELEASE_NS))
    docs.append(pipeline_pods_env("pipeline", RELEASE_NS, env, registry=env.registry, kfp_api=True))
    docs.append(pipeline_pods_env("data-engineer", DATA_NS, env))
    return docs


def data_pipeline_root(env: Environment) -> str:
    """The data pipeline's artifacts hold raw rows, so they live in the ``raw`` bucket (data engineers only);
    the data-engineer role has no access to ``pipeline-root``, which data scientists can read."""
    return f"s3://{env.bucket_prefix}raw/kfp-artifacts"


def bucket_names(policy: AccessPolicy, env: Environment) -> list[str]:
    return [bucket_name(b, env.bucket_prefix) for b in policy.buckets]
