"""The EKS environments (``manifests/sources/environments.yaml``) and the names every manifest agrees on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError
from kfrelease.k8s.versions import KUBEFLOW_KSERVE, KServeVersion, kserve_version
from kfrelease.resources import resource_path

#: The checkout's manifests folder (``kfrelease manifests render`` writes here by default); in an installed
#: wheel, its packaged copy (read-only use: the sources). Its hand-written sources are under ``sources/``
#: (``environments.yaml``, ``workspaces/<name>.yaml``); everything else in it is generated from them
#: (``kfrelease.k8s.render.tree.GENERATED_DIRS``).
MANIFESTS_DIR = resource_path("manifests")
SOURCES_DIR = "sources"


def environments_file(root: Path) -> Path:
    return root / SOURCES_DIR / "environments.yaml"


def workspaces_dir(root: Path) -> Path:
    return root / SOURCES_DIR / "workspaces"


#: Namespaces. The three Kubeflow Profiles own theirs; serving and monitoring are plain namespaces.
DATA_NS = "kfrelease-data"
SCIENCE_NS = "kfrelease-science"
RELEASE_NS = "kfrelease-release"
MONITORING_NS = "kfrelease-monitoring"

#: The service account of the CI (GitHub Actions) in the release namespace: the only one that creates runs.
CI_SERVICE_ACCOUNT = "kfrelease-ci"
#: Kubernetes groups that EKS access entries map IAM principals to (see the ClusterConfig).
CI_GROUP = "kfrelease:ci"
DATA_SCIENTISTS_GROUP = "kfrelease:data-scientists"
DATA_ENGINEERS_GROUP = "kfrelease:data-engineers"

#: Kubeflow runs pipeline pods and notebooks of a Profile as this service account.
PROFILE_SA = "default-editor"

PROJECT_IMAGE_NAME = "kfrelease"
WORKSPACE_IMAGE_NAME = "kfrelease-workspace"
BASE_IMAGE = f"{PROJECT_IMAGE_NAME}:base"
BASE_WORKSPACE_IMAGE = f"{WORKSPACE_IMAGE_NAME}:base"
BASE_ACCOUNT = "ACCOUNT_ID"  # placeholder in the base; every overlay replaces it
BASE_IMAGE_DIGEST = "sha256:" + "0" * 64  # placeholder in the base; every overlay replaces it
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
BASE_BUCKET_PREFIX = "BUCKET_PREFIX-"

_DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_SOURCE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class NodeGroup:
    instance_type: str
    min: int
    desired: int
    max: int


@dataclass(frozen=True)
class ServingLimits:
    """The platform's ceiling on what one model's rollout.yaml may ask of the serving node group (review eks5 S4:
    every model shares it, and nothing in KServe or Kubernetes bounds one InferenceService's ``minReplicas`` or its
    requests). Each of a model's predictors (production, canary, staging shadow) may have at most ``max_replicas``
    replicas of at most ``cpu`` and ``memory`` each; the release steps refuse a recorded spec above them before any
    traffic moves (``kfrelease.release.controller.serving_limit_problems``). Defaults: 8 replicas of 2 CPUs and
    4Gi, a quarter of a 10-node c6i.xlarge group at most."""

    max_replicas: int = 8
    cpu: str = "2"
    memory: str = "4Gi"

    def as_json(self) -> str:
        return json.dumps({"max_replicas": self.max_replicas, "cpu": self.cpu, "memory": self.memory}, sort_keys=True)


@dataclass(frozen=True)
class Environment:
    name: str
    account_id: str
    region: str
    cluster: str
    kubernetes_version: str
    bucket_prefix: str
    image_tag: str
    nodes: dict[str, NodeGroup]
    logsink_replicas: int = 1
    production_version: str = "V1.1.0"
    #: The Kubeflow release installed on the cluster and the KServe version serving runs (kfrelease/k8s/versions.py).
    kubeflow_version: str = "1.11.0"
    kserve_version: str = "0.20.0"
    #: Kubeflow's public host name (the istio-ingressgateway's NLB; CI reaches KFP at https://<host>/pipeline),
    #: the ACM certificate of that name, and the cluster's OIDC issuer (`aws eks describe-cluster --query
    #: cluster.identity.oidc.issuer`), which oauth2-proxy's m2m-dex-and-eks overlay must trust.
    kubeflow_host: str = "kubeflow.example.com"
    certificate_arn: str = ""
    oidc_issuer: str = ""
    #: The DNS domain of the models' release hosts (``<model>.<domain>``: the release's VirtualService,
    #: ``kfrelease.k8s.render.inference.client_hosts``); the ALB Ingress accepts them and the ACM certificate
    #: must cover ``*.<domain>``. Empty: ``models.<kubeflow_host>``.
    serving_domain: str = ""
    #: Namespaces whose pods call the models inside the mesh (their sidecars route by the release's
    #: VirtualService and mirror to the shadow themselves, with their own identity).
    mesh_clients: tuple[str, ...] = ()
    #: Who may post ground truth through the models' release hosts (the ingress gateway), as
    #: ``<namespace>/<serviceaccount>``: a pod of that service account posts with its projected token
    #: (audience ``pipelines.kubeflow.org``), verified at the gateway by Kubeflow's ``m2m-token-issuer``. Ground
    #: truth decides both release gates: no one else may post it from outside the mesh
    #: (``kfrelease.k8s.render.mesh.feedback_gateway_policy``), and the gates count no other label.
    label_sources: tuple[str, ...] = ()
    #: The digest of ``kfrelease:<image_tag>`` in this environment's ECR (what ci/github/kfrelease-image.yaml
    #: pushed: ``aws ecr describe-images --repository-name kfrelease --image-ids imageTag=<image_tag>``). The release
    #: steps' admission policy admits the release driver's pods only on this image (review 4 R5: any digest of the
    #: repository let an older platform release's code run as the driver); empty: no release step is admitted.
    image_digest: str = ""
    #: What one model's predictors may ask of the serving node group (``ServingLimits``; environments.yaml
    #: ``serving_limits: {max_replicas, cpu, memory}``, each optional).
    serving_limits: ServingLimits = ServingLimits()

    @property
    def platform_image(self) -> str:
        """The project image of this platform release by digest (``<registry>/kfrelease@sha256:...``), or ""."""
        return f"{self.registry}/{PROJECT_IMAGE_NAME}@{self.image_digest}" if self.image_digest else ""

    @property
    def label_source_users(self) -> tuple[str, ...]:
        """The ``kubeflow-userid`` of each declared label source: the gateway copies a verified token's ``sub``
        into it (``m2m-token-issuer``'s ``outputClaimToHeaders``), ``system:serviceaccount:<ns>:<sa>``."""
        return tuple("system:serviceaccount:" + s.replace("/", ":", 1) for s in self.label_sources)

    @property
    def model_domain(self) -> str:
        return self.serving_domain or f"models.{self.kubeflow_host}"

    @property
    def kserve(self) -> KServeVersion:
        """What this environment's KServe supports (deployment modes, spec.canary, scale metrics)."""
        return kserve_version(self.kserve_version)

    @property
    def registry(self) -> str:
        return f"{self.account_id}.dkr.ecr.{self.region}.amazonaws.com"

    @property
    def project_image(self) -> str:
        """The one project image (KFP components, ServingRuntime, log sink) in this environment's ECR."""
        return BASE_IMAGE if self.name == "base" else f"{self.registry}/{PROJECT_IMAGE_NAME}:{self.image_tag}"

    @property
    def workspace_image(self) -> str:
        return (
            BASE_WORKSPACE_IMAGE if self.name == "base" else f"{self.registry}/{WORKSPACE_IMAGE_NAME}:{self.image_tag}"
        )

    def images(self) -> dict[str, str]:
        """kustomize ``images`` entries: base image name -> this environment's image."""
        return {
            BASE_IMAGE: self.project_image,
            BASE_WORKSPACE_IMAGE: self.workspace_image,
        }

    def role_arn(self, role_name: str) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{role_name}"

    def pipeline_root(self) -> str:
        return f"s3://{self.bucket_prefix}pipeline-root/v2"


@dataclass(frozen=True)
class Team:
    release_owner: str
    data_engineering_owner: str
    data_science_owner: str
    model_repository: str
    #: The GitHub repository of kfrelease itself, whose release tags build the project image (kfrelease-image.yaml).
    platform_repository: str = "example-org/kfrelease"


@dataclass(frozen=True)
class Environments:
    team: Team
    environments: dict[str, Environment] = field(default_factory=dict)


def base_environment() -> Environment:
    """The placeholder environment the kustomize base is rendered with (overlays replace its values)."""
    return Environment(
        name="base",
        account_id=BASE_ACCOUNT,
        region="REGION",
        cluster="CLUSTER",
        kubernetes_version="1.33",
        bucket_prefix=BASE_BUCKET_PREFIX,
        image_tag="base",
        image_digest=BASE_IMAGE_DIGEST,
        nodes={},
        logsink_replicas=1,
    )


def iam_role_name(role: str, workspace: str | None = None) -> str:
    """The IAM role of an access-policy role (or of one data scientist's workspace)."""
    return f"kfrelease-{role}" if workspace is None else f"kfrelease-{role}-{workspace}"


def load_environments(path: str | Path | None = None) -> Environments:
    path = Path(path) if path else environments_file(MANIFESTS_DIR)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"environments file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"environments file {path} is not valid YAML: {exc}") from None
    try:
        team = Team(**doc["team"])
        envs = {}
        for name, body in doc["environments"].items():
            if not _DNS.match(name):
                raise ConfigError(f"{path}: environment name {name!r} must be a DNS label (a-z, 0-9, -)")
            nodes = {k: NodeGroup(**v) for k, v in body.pop("nodes").items()}
            missing = {"system", "pipelines", "serving"} - set(nodes)
            if missing:
                raise ConfigError(f"{path}: environment {name!r} lacks node group(s) {sorted(missing)}")
            body["kubeflow_version"] = str(body.get("kubeflow_version", Environment.kubeflow_version))
            body["kserve_version"] = str(body.get("kserve_version", Environment.kserve_version))
            body["mesh_clients"] = tuple(str(n) for n in body.get("mesh_clients") or ())
            body["label_sources"] = tuple(str(n) for n in body.get("label_sources") or ())
            body["serving_limits"] = ServingLimits(**(body.get("serving_limits") or {}))
            if body["serving_limits"].max_replicas < 1:
                raise ConfigError(f"{path}: environment {name!r} serving_limits.max_replicas must be at least 1")
            for source in body["label_sources"]:
                if not _LABEL_SOURCE.match(source):
                    raise ConfigError(
                        f"{path}: environment {name!r} label_sources entry {source!r} is not "
                        "<namespace>/<serviceaccount> (the pod identity that posts ground truth)"
                    )
            if body["label_sources"] and not body.get("oidc_issuer"):
                raise ConfigError(
                    f"{path}: environment {name!r} declares label_sources but no oidc_issuer; the ingress gateway "
                    "knows a label source by its token's issuer (aws eks describe-cluster --query "
                    "cluster.identity.oidc.issuer)"
                )
            env = Environment(name=name, nodes=nodes, **body)
            try:  # an unsupported KServe version is an error here, not at render time
                env.kserve  # noqa: B018
            except ConfigError as exc:
                raise ConfigError(f"{path}: environment {name!r} kserve_version: {exc}") from None
            if env.kubeflow_version not in KUBEFLOW_KSERVE:
                raise ConfigError(
                    f"{path}: environment {name!r} kubeflow_version {env.kubeflow_version!r} is not supported; "
                    f"use one of {', '.join(KUBEFLOW_KSERVE)} (kfrelease/k8s/versions.py)"
                )
            if env.image_digest and not _DIGEST.fullmatch(env.image_digest):
                raise ConfigError(
                    f"{path}: environment {name!r} image_digest {env.image_digest!r} is not sha256:<64 hex digits> "
                    f"(aws ecr describe-images --repository-name kfrelease --image-ids imageTag={env.image_tag})"
                )
            if not re.fullmatch(r"\d{12}", env.account_id):
                raise ConfigError(f"{path}: environment {name!r} account_id {env.account_id!r} is not 12 digits")
            for g, n in nodes.items():
                if not 0 <= n.min <= n.desired <= n.max:
                    raise ConfigError(f"{path}: {name} node group {g}: need 0 <= min <= desired <= max")
            envs[name] = env
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"environments file {path} is malformed ({exc}); see the comments in the file") from None
    if not envs:
        raise ConfigError(f"environments file {path} declares no environment")
    return Environments(team=team, environments=envs)
