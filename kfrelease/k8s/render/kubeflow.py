"""What a Kubeflow install on EKS needs beyond Kubeflow's own manifests, and the release's one-time bootstrap.

- ``default_storage_class``: EKS >= 1.30 marks no StorageClass as default, so every PVC without a class
  (notebook workspaces, Kubeflow's MySQL and SeaweedFS) stays Pending. A gp3 class of the aws-ebs-csi-driver
  add-on (``ebs.csi.aws.com``, eksctl config) marked default; part of the kustomize base.
- ``oauth2_proxy_kustomization``: machine-to-machine access to KFP with an EKS-issued service-account token
  (the CI's ``kubectl create token kfrelease-ci``) works only with oauth2-proxy's
  ``common/oauth2-proxy/overlays/m2m-dex-and-eks`` overlay of kubeflow/manifests, whose RequestAuthentication
  ``istio-system/m2m-token-issuer`` must name the cluster's OIDC issuer
  (``https://oidc.eks.<region>.amazonaws.com/id/<id>``; the default ``m2m-dex-only`` trusts only the
  in-cluster issuer). It maps the token's ``sub`` to ``kubeflow-userid``
  (``components/istio-m2m/requestauthentication.yaml``), so KFP sees
  ``system:serviceaccount:kfrelease-release:kfrelease-ci``.
- ``kubeflow_ingress``: an internet-facing ALB with TLS in front of the istio-ingressgateway (GitHub-hosted
  runners must reach KFP); part of the kustomize base.
- ``kubeflow_amendments``: fields of Kubeflow-owned objects, applied server-side with field manager
  ``kfrelease`` (so Kubeflow's own apply keeps the rest): ``kubeflow/ml-pipeline-ui`` gets the IRSA role that
  reads the pipeline root (the UI opens the Evidently reports).
- ``kubeflow_backports``: upstream fixes an older Kubeflow release lacks, as whole objects applied over its own
  (``kubectl apply --server-side --force-conflicts --field-manager=kfrelease``). One today: kubeflow/manifests
  v1.10.x and v1.11.0 ``common/kubeflow-roles/base/cluster-roles.yaml`` ``kubeflow-kubernetes-edit`` (aggregated
  into ``kubeflow-edit``, which the profile controller binds to ``default-editor`` in every Profile namespace) grants
  ``serviceaccounts: [impersonate]``, so every step running as ``default-editor`` in ``kfrelease-release`` can
  act as ``kfrelease-release-driver`` (``--as=system:serviceaccount:...``) with no pod and no Secret, where no
  ValidatingAdmissionPolicy sees it (the request's ``userInfo`` is the impersonated one). 26.03 removed the rule
  (commit ce9d36841f5ca1bc0788f99c572feaedeced6102, "block-impersonating-serviceaccounts (#3372)", the role
  otherwise unchanged); the backport is the release's own role without it. ``rules`` is an atomic list, so only a
  forced apply takes it from Kubeflow's field manager, and re-running Kubeflow's install (``--force-conflicts``
  too) takes it back: apply the backport after every Kubeflow install; the release driver refuses to move traffic
  while ``default-editor`` may impersonate it (``KServeTrafficDriver.check_identity``).
- ``bootstrap_documents``: the production InferenceService and VirtualService at the first version. The
  release driver owns them afterwards, so they are NOT in the re-applied overlay (re-applying it would reset
  a released model to ``production_version``); ``kubectl create`` applies them once and refuses when they exist.
"""

from __future__ import annotations

import copy
from functools import cache

import yaml

from kfrelease.errors import ConfigError
from kfrelease.k8s.environments import Environment
from kfrelease.k8s.render.eks import PIPELINE_UI, PIPELINE_UI_ROLE, model_repository
from kfrelease.k8s.render.inference import render_release
from kfrelease.k8s.versions import kubeflow_ref
from kfrelease.kfp.submit import TOKEN_AUDIENCE
from kfrelease.resources import resource_dir
from kfrelease.rollout.traffic import TrafficState

FIELD_MANAGER = "kfrelease"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
EBS_CSI = "ebs.csi.aws.com"
STORAGE_CLASS = "gp3"
#: kubeflow/manifests paths (at the tag of the environment's Kubeflow release).
OAUTH2_PROXY_EKS_OVERLAY = "common/oauth2-proxy/overlays/m2m-dex-and-eks"
M2M_REQUEST_AUTHENTICATION = ("istio-system", "m2m-token-issuer")
INGRESS_GATEWAY = ("istio-system", "istio-ingressgateway")  # common/istio/istio-install/base
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
#: kubeflow/manifests ce9d368 "block-impersonating-serviceaccounts (#3372)" (in 26.03): the rule it removes from
#: ``kubeflow-kubernetes-edit``, and the commit, for the backport's annotation
IMPERSONATE_ROLE = "kubeflow-kubernetes-edit"
IMPERSONATE_RULE = {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]}
IMPERSONATE_FIX = "kubeflow/manifests ce9d36841f5ca1bc0788f99c572feaedeced6102 (#3372, in 26.03)"
BACKPORT_ANNOTATION = "kfrelease.io/backport-of"


@cache
def _vendored_roles(ref: str) -> tuple[dict, ...]:
    path = resource_dir("schemas") / "kubeflow" / "cluster-roles" / f"{ref}.yaml"
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d)


def kubeflow_cluster_roles(kubeflow_version: str) -> list[dict]:
    """Kubeflow's aggregated ClusterRoles as that release's manifests install them (vendored per tag:
    ``schemas/kubeflow/cluster-roles/<tag>.yaml``); a release without vendored roles is a ``ConfigError``."""
    ref = kubeflow_ref(kubeflow_version)
    folder = resource_dir("schemas") / "kubeflow" / "cluster-roles"
    if not (folder / f"{ref}.yaml").is_file():
        have = sorted(p.stem.removeprefix("v") for p in folder.glob("*.yaml"))
        raise ConfigError(
            f"Kubeflow {kubeflow_version}: no vendored ClusterRoles (schemas/kubeflow/cluster-roles/{ref}.yaml), "
            f"so its RBAC cannot be evaluated; use one of {', '.join(have)} or vendor that release's roles"
        )
    return copy.deepcopy(list(_vendored_roles(ref)))


def kubeflow_backports(kubeflow_version: str) -> list[dict]:
    """The upstream fixes that release lacks, as whole objects to apply over Kubeflow's (see the module
    docstring): its ``kubeflow-kubernetes-edit`` without ``serviceaccounts: [impersonate]``; none for 26.03."""
    role = next(d for d in kubeflow_cluster_roles(kubeflow_version) if d["metadata"]["name"] == IMPERSONATE_ROLE)
    rules = [r for r in role["rules"] if r != IMPERSONATE_RULE]
    if rules == role["rules"]:
        return []
    meta = role["metadata"]
    return [
        {
            "apiVersion": role["apiVersion"],
            "kind": role["kind"],
            "metadata": {
                **meta,
                "annotations": {**(meta.get("annotations") or {}), BACKPORT_ANNOTATION: IMPERSONATE_FIX},
            },
            "rules": rules,
        }
    ]


def default_storage_class() -> dict:
    """gp3 EBS volumes, encrypted, bound where the pod is scheduled, marked as the cluster default."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            "labels": {"app.kubernetes.io/part-of": "kfrelease"},
        },
        "provisioner": EBS_CSI,
        "parameters": {"type": "gp3", "encrypted": "true"},
        "reclaimPolicy": "Delete",
        "allowVolumeExpansion": True,
        "volumeBindingMode": "WaitForFirstConsumer",
    }


#: Files beside the rendered kustomizations that hold this environment's own secrets: never committed
#: (``manifests/.gitignore``), written by the platform engineer (docs/platform-engineer-eks.md, step 4).
OAUTH2_PROXY_SECRET_FILE = "oauth2-proxy.secret.env"
DEX_CLIENT_SECRET_FILE = "oidc-client.secret.env"
DEX_PASSWORDS_FILE = "dex-passwords.secret.yaml"
DEX_OVERLAY = "common/dex/overlays/oauth2-proxy"


def _kubeflow_resource(path: str, env: Environment) -> str:
    return f"https://github.com/kubeflow/manifests//{path}?ref={kubeflow_ref(env.kubeflow_version)}"


def oauth2_proxy_kustomization(env: Environment) -> dict:
    """``manifests/eks/<env>/kubeflow/oauth2-proxy/kustomization.yaml``: Kubeflow's m2m-dex-and-eks overlay at
    the environment's Kubeflow tag, with

    - its issuer replaced by the cluster's (the same patch the overlay's own kustomization.yaml carries with
      ``AWS_REGION``/``CLUSTER_ID`` placeholders);
    - ``audiences`` on the ``m2m-token-issuer`` RequestAuthentication: without them Istio accepts every token
      of the cluster's issuer (``common/oauth2-proxy/components/istio-m2m/requestauthentication.yaml`` sets
      none), so any pod's service-account token would be a KFP credential at the gateway; only tokens minted
      for ``pipelines.kubeflow.org`` (the CI's ``kubectl create token --audience``, the hand-over step's
      projected token) pass;
    - the ``oauth2-proxy`` Secret replaced from this environment's own file: the base generates it with
      Kubeflow's published client secret and cookie secret (``common/oauth2-proxy/base/kustomization.yaml``
      ``secretGenerator``), which an internet-facing ALB must not keep."""
    ns, name = M2M_REQUEST_AUTHENTICATION
    target = {
        "group": "security.istio.io",
        "version": "v1beta1",
        "kind": "RequestAuthentication",
        "name": name,
        "namespace": ns,
    }
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [_kubeflow_resource(OAUTH2_PROXY_EKS_OVERLAY, env)],
        "secretGenerator": [
            {
                "name": "oauth2-proxy",
                "namespace": "oauth2-proxy",
                "behavior": "replace",
                "type": "Opaque",
                "envs": [OAUTH2_PROXY_SECRET_FILE],
            }
        ],
        "patches": [
            {
                "patch": f"- op: replace\n  path: /spec/jwtRules/0/issuer\n  value: {env.oidc_issuer}\n"
                f"- op: add\n  path: /spec/jwtRules/0/audiences\n  value: [{TOKEN_AUDIENCE}]\n",
                "target": target,
            }
        ],
    }


def dex_kustomization(env: Environment) -> dict:
    """``manifests/eks/<env>/kubeflow/dex/kustomization.yaml``: Kubeflow's Dex at the environment's tag with
    its two published credentials replaced: the OIDC client secret it shares with oauth2-proxy
    (``common/dex/base/secret_params.env``) and the static user's password hash
    (``common/dex/base/dex-passwords.yaml``: ``user@example.com`` / ``12341234``, README "Change default user
    password"), both from this environment's own files."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [_kubeflow_resource(DEX_OVERLAY, env)],
        "secretGenerator": [
            {
                "name": "dex-oidc-client",
                "namespace": "auth",
                "behavior": "replace",
                "type": "Opaque",
                "envs": [DEX_CLIENT_SECRET_FILE],
            }
        ],
        "patches": [{"path": DEX_PASSWORDS_FILE}],
    }


def ingress_hosts(env: Environment) -> list[str]:
    """The host rules of the ALB: Kubeflow's host and the models' release hosts ``<model>.<model_domain>``
    (``kfrelease.k8s.render.inference.client_hosts``). A Kubernetes Ingress wildcard stands for exactly one DNS
    label (``*.foo.com`` matches ``bar.foo.com``, not ``baz.bar.foo.com``: networking.k8s.io/v1
    ``IngressRule.host``), as does an ACM certificate's."""
    return [env.kubeflow_host, f"*.{env.model_domain}"]


def kubeflow_ingress(env: Environment) -> dict:
    """An internet-facing ALB in front of Kubeflow's istio-ingressgateway (AWS Load Balancer Controller, IRSA in
    the eksctl config), so GitHub-hosted runners reach KFP at ``https://<kubeflow_host>/pipeline`` and clients
    reach the models at their hosts (``ingress_hosts``); any other host gets the ALB's 404. TLS ends at the ALB
    with the ACM certificate ``certificate_arn``, which must cover every host rule (the docs request it with
    those names as subject alternative names); oauth2-proxy's ``FORCE_HTTPS`` cookies and the CI's bearer
    token need HTTPS. The ALB forwards HTTP to the gateway's port 80, where Kubeflow's ``kubeflow-gateway``
    listens for every host, and checks the gateway's readiness on its status port (15021)."""
    gw_ns, gw_name = INGRESS_GATEWAY
    alb = "alb.ingress.kubernetes.io/"
    backend = {
        "paths": [
            {
                "path": "/",
                "pathType": "Prefix",
                "backend": {"service": {"name": gw_name, "port": {"number": 80}}},
            }
        ]
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "kubeflow",
            "namespace": gw_ns,
            "labels": {"app.kubernetes.io/part-of": "kfrelease"},
            "annotations": {
                f"{alb}scheme": "internet-facing",
                f"{alb}target-type": "ip",
                f"{alb}listen-ports": '[{"HTTPS": 443}]',
                f"{alb}certificate-arn": env.certificate_arn,
                f"{alb}ssl-redirect": "443",
                f"{alb}healthcheck-port": "15021",
                f"{alb}healthcheck-path": "/healthz/ready",
            },
        },
        "spec": {
            "ingressClassName": "alb",
            "rules": [{"host": host, "http": backend} for host in ingress_hosts(env)],
        },
    }


def kubeflow_amendments(env: Environment) -> list[dict]:
    """Partial objects for ``kubectl apply --server-side --field-manager=kfrelease``: only these fields of
    objects Kubeflow's manifests own (its own apply keeps the rest)."""
    ui_ns, ui_name = PIPELINE_UI
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": ui_name,
                "namespace": ui_ns,
                "annotations": {IRSA_ANNOTATION: env.role_arn(PIPELINE_UI_ROLE)},
            },
        },
    ]


def bootstrap_documents(spec, env: Environment) -> list[dict]:
    """The production InferenceService and VirtualService serving ``env.production_version`` (created once)."""
    uri = f"oci://{env.registry}/{model_repository(spec.model)}:{env.production_version}"
    return render_release(
        spec,
        TrafficState(primary=env.production_version),
        {env.production_version: uri},
        kserve_version=env.kserve_version,
        domain=env.model_domain,
    )
