"""AWS side of an environment: the eksctl ClusterConfig and the CloudFormation template of what eksctl
does not make (S3 buckets, ECR repositories, the GitHub OIDC role of the CI, the image-push policy).

IRSA: one IAM role per access-policy role (and one per data-scientist workspace), created by eksctl with
``roleOnly: true`` and ``attachPolicy`` = exactly ``kfrelease access render --target aws`` for that role.
Kubernetes service accounts are annotated by the kustomize manifests (plain service accounts) or by the
Kubeflow profile controller (``AwsIamForServiceAccount`` plugin on each Profile's ``default-editor``).
"""

from __future__ import annotations

import json

from kfrelease.access.policy import AccessPolicy
from kfrelease.access.render import bucket_name, iam_policy
from kfrelease.k8s.environments import (
    CI_GROUP,
    PROFILE_SA,
    PROJECT_IMAGE_NAME,
    WORKSPACE_IMAGE_NAME,
    Environment,
    Team,
    iam_role_name,
)
from kfrelease.k8s.render.platform import (
    RELEASE_DRIVER_SA,
    RELEASE_ROLE,
    STEP_IAM_ROLES,
    UNTRUSTED_SA,
    placed_roles,
    role_placements,
)
from kfrelease.monitoring.spark_app import SPARK_IMAGE_NAME  # the Dockerfile's target spark
from kfrelease.training.steps import TRAINING_PIPELINE, UNTRUSTED_INPUT_TASKS, UNTRUSTED_STEPS, UNTRUSTED_TASKS

CI_ROLE = "kfrelease-ci"
#: The platform's reusable workflow that alone may assume the CI role (ci/github/kfrelease-train.yaml).
CI_REUSABLE_WORKFLOW = ".github/workflows/kfrelease-train.yaml"


def ci_workflow_ref(team: Team, env: Environment) -> str:
    """GitHub's ``job_workflow_ref`` claim of the platform's reusable workflow at this environment's release
    tag (``<owner>/<repo>/<path>@<ref>``: GitHub's OIDC reference, "Custom claims provided by GitHub")."""
    return f"{team.platform_repository}/{CI_REUSABLE_WORKFLOW}@refs/tags/v{env.image_tag}"


CI_S3_POLICY = "s3-trigger"
IMAGE_PUBLISHER_ROLE = "kfrelease-image-publisher"
PIPELINE_UI_ROLE = "kfrelease-pipeline-ui"
GITHUB_OIDC = "token.actions.githubusercontent.com"
#: Kubeflow Pipelines' UI server (kubeflow/pipelines manifests/kustomize/base/pipeline/ml-pipeline-ui-deployment.yaml).
PIPELINE_UI = ("kubeflow", "ml-pipeline-ui")


def ci_trigger_policy(env: Environment) -> dict:
    """What ``kfrelease trigger`` does with S3 (kfrelease/training/trigger.py, run_records.py, data/publish.py): read
    the curated dataset's manifests, create and update the run record under ``models/runs/``. Nothing else:
    no write or delete of registry entries, model artifacts or datasets, and no delete at all."""
    models, curated = bucket_name("models", env.bucket_prefix), bucket_name("curated", env.bucket_prefix)
    return {
        "Version": "2012-10-17",
        "Statement": [
            # HeadObject of a missing key answers 404 only with ListBucket (else 403): stat() needs it
            {
                "Sid": "ListModelsAndCurated",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{models}", f"arn:aws:s3:::{curated}"],
            },
            {
                "Sid": "ReadCurated",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{curated}/*"],
            },
            {
                "Sid": "RunRecords",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{models}/runs/*"],
            },
        ],
    }


def untrusted_step_policy(env: Environment) -> dict:
    """What the steps that run the merged model code (train, score-champion: ``kfrelease-untrusted-step``) do with
    S3, and nothing else. No read of ``curated``: those steps see only what split hands them as KFP artifacts (the
    training rows and the held-out features, ``kfrelease.training.steps.split_step``), never the held-out labels that
    evaluate judges them with (review eks5 S3: a ``build:`` function could read the dataset version and fit on its
    test rows). They read and write their own steps' records, ``models/runs/<run>/steps/{train,score-champion}.json``
    (``kfrelease.training.run_records.step_record``), never a trusted step's (review eks6 M2). The KFP
    launcher in the same pod downloads their inputs and uploads their outputs with the pod's IRSA credentials, under
    ``<pipeline root>/kfrelease-training/<run id>/<task>/<uuid>/<output>`` (kubeflow/pipelines 2.16.0
    ``backend/src/v2/metadata/client.go`` ``GetPipeline``, ``backend/src/v2/driver/driver.go`` ``provisionOutputs``):
    so they read only split's outputs (``steps.UNTRUSTED_INPUT_TASKS``) and write only under their own tasks
    (``steps.UNTRUSTED_TASKS``) of training runs (review eks4 R6): no other task's artifacts (evaluate's report and
    held-out predictions, register's inputs), no other pipeline's. Not narrower: the run id is KFP's, known only
    at run time, and an IRSA role is one per service account (no session tag per run), so one run's untrusted step
    can still write another training run's train/score-champion outputs (what the steps after it verify by digest,
    or judge as untrusted anyway). No write of registry entries, stage events, model artifacts, run records or run
    state, datasets, monitoring results: registration is the register step's, as the pipeline role."""
    models = bucket_name("models", env.bucket_prefix)
    root = env.pipeline_root().removeprefix("s3://")  # <prefix>pipeline-root/v2
    return {
        "Version": "2012-10-17",
        "Statement": [
            # HeadObject of a missing key answers 404 only with ListBucket (else 403): stat() needs it unconditioned
            {
                "Sid": "ListModelsPipelineRoot",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{b}" for b in (models, root.split("/")[0])],
            },
            {  # their own steps' records only: a trusted step's record (split resumes from its own) is the
                # pipeline role's, so merged code cannot fake a finished split or a failed one (review eks6 M2)
                "Sid": "StepRecords",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": [f"arn:aws:s3:::{models}/runs/*/steps/{step}.json" for step in UNTRUSTED_STEPS],
            },
            {
                "Sid": "PipelineInputs",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{root}/{TRAINING_PIPELINE}/*/{task}/*" for task in UNTRUSTED_INPUT_TASKS],
            },
            {
                "Sid": "PipelineOutputs",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": [f"arn:aws:s3:::{root}/{TRAINING_PIPELINE}/*/{task}/*" for task in UNTRUSTED_TASKS],
            },
        ],
    }


def release_driver_policy(policy: AccessPolicy, env: Environment) -> dict:
    """The release driver's S3 policy: the pipeline role's (registry history, model sources, labels) and the release
    role's (``releases``: the shadow gate's verdicts, which ``pipeline_steps.require_shadow_gate`` reads). The
    pipeline role, ``default-editor``'s, cannot write ``releases``: a run as default-editor could otherwise record a
    passed gate and run the rollout component alone (review 4 R4)."""
    statements = [
        s for role in ("pipeline", RELEASE_ROLE) for s in iam_policy(policy, role, env.bucket_prefix)["Statement"]
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def pipeline_ui_policy(env: Environment) -> dict:
    """Read-only access to the KFP pipeline root for ``ml-pipeline-ui`` (IRSA), so the Kubeflow UI opens the
    Evidently HTML reports and other artifacts. The UI server reads ``s3://`` artifacts with the AWS SDK's
    default provider chain when it has no static keys (kubeflow/pipelines frontend/server/minio-helper.ts,
    ``fromNodeProviderChain``), i.e. with the web-identity credentials EKS injects for an annotated
    service account."""
    root = bucket_name("pipeline-root", env.bucket_prefix)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListPipelineRoot",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{root}"],
            },
            {
                "Sid": "ReadPipelineRoot",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{root}/*"],
            },
        ],
    }


def image_push_policy_name(env: Environment) -> str:
    return f"kfrelease-{env.name}-model-image-push"


def model_repository(model: str) -> str:
    """ECR repository of a model's ModelCar images (``kfrelease.training.steps`` pushes to ``kfrelease/<model>``)."""
    return f"kfrelease/{model}"


def cluster_config(env: Environment, policy: AccessPolicy, serving_ns: str, workspaces=()) -> dict:
    """The eksctl ``ClusterConfig`` (eksctl.io/v1alpha5) of one environment."""
    placements = role_placements(serving_ns)
    accounts = []
    for role in placed_roles(policy):
        ns, sa, _ = placements[role]
        entry = {
            "metadata": {"name": sa, "namespace": ns},
            "roleName": iam_role_name(role),
            "roleOnly": True,
            "attachPolicy": iam_policy(policy, role, env.bucket_prefix),
        }
        if role == "pipeline":  # the training pipeline pushes ModelCar images to ECR
            entry["attachPolicyARNs"] = [f"arn:aws:iam::{env.account_id}:policy/{image_push_policy_name(env)}"]
            # the release steps' own service account: the same S3 policy and the release role's (the only writer
            # of release decisions: review 4 R4), no image push; the untrusted steps' (the merged model code): only
            # what train and evaluate do (untrusted_step_policy)
            steps = {
                UNTRUSTED_SA: untrusted_step_policy(env),
                RELEASE_DRIVER_SA: release_driver_policy(policy, env),
            }
            for step_sa, step_role in STEP_IAM_ROLES.items():
                accounts.append(
                    {
                        "metadata": {"name": step_sa, "namespace": ns},
                        "roleName": step_role,
                        "roleOnly": True,
                        "attachPolicy": steps[step_sa],
                    }
                )
        accounts.append(entry)
    for ws in workspaces:
        accounts.append(
            {
                "metadata": {"name": PROFILE_SA, "namespace": ws.namespace},
                "roleName": iam_role_name("data-scientist", ws.name),
                "roleOnly": True,
                "attachPolicy": iam_policy(policy, "data-scientist", env.bucket_prefix),
            }
        )
    ui_ns, ui_sa = PIPELINE_UI
    accounts.append(
        {
            # the SA exists (Kubeflow's manifests); manifests/eks/<env>/kubeflow/amendments.yaml annotates it
            "metadata": {"name": ui_sa, "namespace": ui_ns},
            "roleName": PIPELINE_UI_ROLE,
            "roleOnly": True,
            "attachPolicy": pipeline_ui_policy(env),
        }
    )
    accounts.append(
        {
            "metadata": {"name": "cluster-autoscaler", "namespace": "kube-system"},
            "wellKnownPolicies": {"autoScaler": True},
        }
    )
    accounts.append(
        {
            # the internet-facing ALB in front of Kubeflow's ingress gateway (kfrelease.k8s.render.kubeflow.kubeflow_ingress)
            "metadata": {"name": "aws-load-balancer-controller", "namespace": "kube-system"},
            "wellKnownPolicies": {"awsLoadBalancerController": True},
        }
    )

    def nodegroup(pool: str) -> dict:
        n = env.nodes[pool]
        return {
            "name": pool,
            "instanceType": n.instance_type,
            "minSize": n.min,
            "desiredCapacity": n.desired,
            "maxSize": n.max,
            "volumeSize": 80,
            "privateNetworking": True,
            "labels": {"kfrelease.io/pool": pool},
            "propagateASGTags": True,
            "tags": {
                "k8s.io/cluster-autoscaler/enabled": "true",
                f"k8s.io/cluster-autoscaler/{env.cluster}": "owned",
                "k8s.io/cluster-autoscaler/node-template/label/kfrelease.io/pool": pool,
            },
            # No add-on policies on the node role: the cluster-autoscaler has its own IRSA role below and
            # image pushes use the pipeline's IRSA role; nodes only pull (eksctl's default node role).
            # No pod reaches the instance metadata service, so none holds the node role (review eks4 R7): eksctl
            # otherwise gives the launch template a PUT response hop limit of 2, one more than the host, which a
            # pod's own network namespace needs; this sets it to 1 and requires IMDSv2 tokens (eksctl-io/eksctl
            # v0.230.0+5 99984adb pkg/cfn/builder/nodegroup.go makeMetadataOptions, used for managed node groups
            # by managed_launch_template.go). Every group: no kfrelease pod is kept off `system` (KFP task pods
            # and predictors have no nodeSelector), so merged model code may run on any node. eksctl refuses it
            # beside iam.withAddonPolicies or a launchTemplate (pkg/apis/eksctl.io/v1alpha5/validation.go): none
            # here. What on these nodes read IMDS and what replaces it: docs/platform-engineer-eks.md step 4.
            "disablePodIMDS": True,
        }

    return {
        "apiVersion": "eksctl.io/v1alpha5",
        "kind": "ClusterConfig",
        "metadata": {
            "name": env.cluster,
            "region": env.region,
            "version": env.kubernetes_version,
            "tags": {"project": "kfrelease", "environment": env.name},
        },
        "iam": {"withOIDC": True, "serviceAccounts": accounts},
        "accessConfig": {
            "authenticationMode": "API_AND_CONFIG_MAP",
            "accessEntries": [
                {
                    "principalARN": env.role_arn(CI_ROLE),
                    "kubernetesGroups": [CI_GROUP],
                    "type": "STANDARD",
                }
            ],
        },
        "addons": [
            # NetworkPolicy enforcement stays off, as on every EKS cluster by default (the VPC CNI enforces only with
            # enableNetworkPolicy "true": docs.aws.amazon.com/eks/latest/userguide/cni-network-policy.html), said
            # here so nobody takes Kubeflow's NetworkPolicies for a boundary: Istio's policies are the boundary, and
            # turning this on cuts the ALB off (docs/platform-engineer-eks.md, "Network policies").
            {"name": "vpc-cni", "configurationValues": json.dumps({"enableNetworkPolicy": "false"})},
            {"name": "coredns"},
            {"name": "kube-proxy"},
            # PVCs (notebook workspaces, Kubeflow's MySQL and SeaweedFS) are EBS volumes; EKS >= 1.30 marks no
            # StorageClass as default, so the base renders one (kfrelease.k8s.render.kubeflow.default_storage_class)
            {
                "name": "aws-ebs-csi-driver",
                "wellKnownPolicies": {"ebsCSIController": True},
            },
        ],
        "managedNodeGroups": [nodegroup(p) for p in ("system", "pipelines", "serving")],
    }


#: What pushing an image to an ECR repository takes (skopeo/docker push: layer upload, manifest put).
ECR_PUSH_ACTIONS = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:CompleteLayerUpload",
    "ecr:DescribeImages",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
]


def github_oidc_trust(condition: dict) -> dict:
    """Trust policy of a role that GitHub Actions assumes with its OIDC token, limited by ``condition``
    (which repository and ref may assume it)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {
                    "Federated": {"Fn::Sub": f"arn:aws:iam::${{AWS::AccountId}}:oidc-provider/{GITHUB_OIDC}"}
                },
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": condition,
            }
        ],
    }


def prerequisites_template(env: Environment, policy: AccessPolicy, team: Team, models: list[str]) -> dict:
    """CloudFormation template (``aws cloudformation deploy``): buckets, ECR repositories, CI role."""
    res: dict = {}
    for bucket in policy.buckets:
        logical = "Bucket" + "".join(p.capitalize() for p in bucket.split("-"))
        res[logical] = {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "BucketName": f"{env.bucket_prefix}{bucket}",
                "VersioningConfiguration": {"Status": "Enabled"},
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True,
                    "BlockPublicPolicy": True,
                    "IgnorePublicAcls": True,
                    "RestrictPublicBuckets": True,
                },
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                },
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                "Tags": [
                    {"Key": "project", "Value": "kfrelease"},
                    {"Key": "bucket", "Value": bucket},
                ],
            },
        }
    repos = [PROJECT_IMAGE_NAME, WORKSPACE_IMAGE_NAME, SPARK_IMAGE_NAME] + [model_repository(m) for m in models]
    for repo in repos:
        logical = "Repo" + "".join(p.capitalize() for p in repo.replace("/", "-").split("-"))
        res[logical] = {
            "Type": "AWS::ECR::Repository",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "RepositoryName": repo,
                # Model versions and release tags are immutable: a tag names one digest forever.
                "ImageTagMutability": "IMMUTABLE",
                "ImageScanningConfiguration": {"ScanOnPush": True},
                "Tags": [{"Key": "project", "Value": "kfrelease"}],
            },
        }
    model_arns = [f"arn:aws:ecr:{env.region}:{env.account_id}:repository/{model_repository(m)}" for m in models]
    res["ModelImagePushPolicy"] = {
        "Type": "AWS::IAM::ManagedPolicy",
        "Properties": {
            "ManagedPolicyName": image_push_policy_name(env),
            "Description": "Push ModelCar images of registered models (attached to the pipeline IRSA role)",
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["ecr:GetAuthorizationToken"],
                        "Resource": "*",
                    },
                    {
                        "Effect": "Allow",
                        "Action": ECR_PUSH_ACTIONS,
                        "Resource": model_arns,
                    },
                ],
            },
        },
    }
    res["GitHubOIDCProvider"] = {
        "Type": "AWS::IAM::OIDCProvider",
        "Condition": "CreateGitHubOIDCProvider",
        "Properties": {
            "Url": f"https://{GITHUB_OIDC}",
            "ClientIdList": ["sts.amazonaws.com"],
            "ThumbprintList": [
                "6938fd4d98bab03faadb97b34396831e3780aea1",
                "1c58a3a8518e8759bf075b76b750d4f2df264fcd",
            ],
        },
    }
    res["CIRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": CI_ROLE,
            "Description": "GitHub Actions on pushes to main of the model repository: trigger the training pipeline",
            "AssumeRolePolicyDocument": github_oidc_trust(
                {
                    "StringEquals": {
                        f"{GITHUB_OIDC}:aud": "sts.amazonaws.com",
                        f"{GITHUB_OIDC}:sub": f"repo:{team.model_repository}:ref:refs/heads/main",
                        # only the platform's reusable workflow at this platform release may use the role
                        # (AWS STS validates GitHub's job_workflow_ref claim: provider-specific claim keys, 2026)
                        f"{GITHUB_OIDC}:job_workflow_ref": ci_workflow_ref(team, env),
                    }
                }
            ),
            "Policies": [
                {
                    "PolicyName": "describe-cluster",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": ["eks:DescribeCluster"],
                                "Resource": f"arn:aws:eks:{env.region}:{env.account_id}:cluster/{env.cluster}",
                            }
                        ],
                    },
                },
                {
                    # resolve the immutable tag of the project image to its digest (KFRELEASE_IMAGE)
                    "PolicyName": "describe-project-image",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": ["ecr:DescribeImages"],
                                "Resource": f"arn:aws:ecr:{env.region}:{env.account_id}:repository/{PROJECT_IMAGE_NAME}",
                            }
                        ],
                    },
                },
                {
                    # `kfrelease trigger`: read the curated dataset version, create the run record; no registry writes
                    "PolicyName": CI_S3_POLICY,
                    "PolicyDocument": ci_trigger_policy(env),
                },
            ],
        },
    }
    image_arns = [
        f"arn:aws:ecr:{env.region}:{env.account_id}:repository/{r}"
        for r in (PROJECT_IMAGE_NAME, WORKSPACE_IMAGE_NAME, SPARK_IMAGE_NAME)
    ]
    res["ImagePublisherRole"] = {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": IMAGE_PUBLISHER_ROLE,
            "Description": "GitHub Actions on release tags of the kfrelease repository: push the project and workspace images",
            "AssumeRolePolicyDocument": github_oidc_trust(
                {
                    "StringEquals": {f"{GITHUB_OIDC}:aud": "sts.amazonaws.com"},
                    "StringLike": {f"{GITHUB_OIDC}:sub": f"repo:{team.platform_repository}:ref:refs/tags/v*"},
                }
            ),
            "Policies": [
                {
                    "PolicyName": "push-project-images",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
                            {
                                "Effect": "Allow",
                                "Action": ECR_PUSH_ACTIONS,
                                "Resource": image_arns,
                            },
                        ],
                    },
                }
            ],
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"kfrelease {env.name}: S3 buckets, ECR repositories, CI role (what eksctl does not create)",
        "Parameters": {
            "CreateGitHubOIDCProvider": {
                "Type": "String",
                "AllowedValues": ["true", "false"],
                "Default": "true",
                "Description": "false if the account already has the token.actions.githubusercontent.com provider",
            }
        },
        "Conditions": {"CreateGitHubOIDCProvider": {"Fn::Equals": [{"Ref": "CreateGitHubOIDCProvider"}, "true"]}},
        "Resources": res,
        "Outputs": {
            "CIRoleArn": {"Value": {"Fn::GetAtt": ["CIRole", "Arn"]}},
            "ImagePublisherRoleArn": {"Value": {"Fn::GetAtt": ["ImagePublisherRole", "Arn"]}},
            "Registry": {"Value": env.registry},
        },
    }
