"""``kfrelease manifests check``: what would go wrong on a real cluster, found in the manifests on disk.

Each check is a named function of a ``CheckContext`` returning ``Finding``s; ``CHECKS`` lists them in the
order they run. A new finding class is one function and one line in ``CHECKS`` (``register_check``).
The context builds each overlay with the real ``kubectl kustomize`` and reads the generated files as
committed, so the checks see what a platform engineer would apply, not what the renderers would produce now.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError
from kfrelease.images.project import IMAGE_ENV, executors, is_by_digest
from kfrelease.k8s.policy import release_checks as rc
from kfrelease.k8s.policy.istio import upstream_sidecars
from kfrelease.k8s.policy.rbac import upstream_cluster_roles
from kfrelease.k8s.policy.schemas import SchemaValidationError, validate, yaml_loader
from kfrelease.k8s.render.kubeflow import DEFAULT_CLASS_ANNOTATION, EBS_CSI, OAUTH2_PROXY_EKS_OVERLAY


@dataclass(frozen=True)
class Finding:
    """One problem: its class (the check's name), where it is, and what is wrong and how to fix it."""

    check: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.message}"


@dataclass
class CheckContext:
    """What the checks read: the manifests directory, and optionally compiled pipeline packages and the image
    they must run (``--compiled``, ``--image``)."""

    root: Path
    compiled: Path | None = None
    image: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @functools.cached_property
    def sources(self):
        from kfrelease.k8s.render.tree import Sources  # heavy: protobuf

        return Sources.load(self.root)

    @property
    def environments(self):
        return self.sources.envs.environments

    def overlay(self, env: str) -> list[dict]:
        """``kubectl kustomize overlays/<env>``: the documents the runbook re-applies."""
        if env not in self._cache:
            self._cache[env] = kustomize(self.root / "overlays" / env)
        return self._cache[env]

    def yaml_docs(self, rel: str) -> list[dict]:
        path = self.root / rel
        if not path.is_file():
            return []
        return [d for d in yaml.load_all(path.read_text(), Loader=yaml_loader()) if d]


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise ConfigError("kubectl is needed to build the overlays (`kubectl kustomize`); install it first")
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        raise ConfigError(f"kubectl kustomize {directory} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [d for d in yaml.load_all(proc.stdout, Loader=yaml_loader()) if d]


Check = Callable[[CheckContext], list[Finding]]
CHECKS: list[tuple[str, Check]] = []


def register_check(name: str):
    """Decorator: add a check (its name is the finding class) to ``CHECKS``."""

    def add(fn: Check) -> Check:
        CHECKS.append((name, fn))
        return fn

    return add


def _where(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}".replace(" /", " ")


@register_check("stale")
def check_stale(ctx: CheckContext) -> list[Finding]:
    """Generated files that differ from their sources (edited by hand, or sources changed without a render)."""
    from kfrelease.k8s.render.tree import check_tree  # heavy: protobuf

    return [
        Finding("stale", str(ctx.root / rel), "differs from what `kfrelease manifests render` generates; re-render")
        for rel in check_tree(ctx.root, ctx.sources)
    ]


@register_check("schema")
def check_schema(ctx: CheckContext) -> list[Finding]:
    """Every document of each overlay, bootstrap and client-namespace Sidecar file against the Kubernetes and CRD schemas, KServe kinds
    against the environment's declared KServe version and its admission rules."""
    out = []
    for name, env in ctx.environments.items():
        for where, docs in (
            (f"overlays/{name}", ctx.overlay(name)),
            (f"bootstrap/{name}/release.yaml", ctx.yaml_docs(f"bootstrap/{name}/release.yaml")),
            (f"bootstrap/{name}/monitoring.yaml", ctx.yaml_docs(f"bootstrap/{name}/monitoring.yaml")),
            (f"eks/{name}/mesh-clients.yaml", ctx.yaml_docs(f"eks/{name}/mesh-clients.yaml")),
        ):
            for doc in docs:
                try:
                    validate(doc, kserve=env.kserve)
                except SchemaValidationError as exc:
                    out.append(Finding("schema", f"{where}: {_where(doc)}", f"KServe {env.kserve_version}: {exc}"))
    return out


#: What the release owns after the bootstrap: re-applying an overlay that carries them resets a release.
RELEASE_OWNED = {("serving.kserve.io", "InferenceService"), ("networking.istio.io", "VirtualService")}


@register_check("release-owned-in-overlay")
def check_release_owned(ctx: CheckContext) -> list[Finding]:
    out = []
    for name in ctx.environments:
        for doc in ctx.overlay(name):
            if (doc["apiVersion"].rpartition("/")[0], doc["kind"]) in RELEASE_OWNED:
                out.append(
                    Finding(
                        "release-owned-in-overlay",
                        f"overlays/{name}: {_where(doc)}",
                        "the release drives this object after the bootstrap; re-applying the overlay would reset it "
                        "(move it to bootstrap/<env>/, created once)",
                    )
                )
    return out


@register_check("storage-class")
def check_storage_class(ctx: CheckContext) -> list[Finding]:
    """EKS >= 1.30 marks no StorageClass default: PVCs without a class stay Pending unless the overlay has one
    (from the aws-ebs-csi-driver add-on of the eksctl config)."""
    out = []
    for name in ctx.environments:
        docs = ctx.overlay(name)
        defaults = [
            d
            for d in docs
            if d["kind"] == "StorageClass"
            and (d["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true"
        ]
        if len(defaults) != 1:
            out.append(
                Finding(
                    "storage-class",
                    f"overlays/{name}",
                    f"{len(defaults)} default StorageClass(es); EKS >= 1.30 has none of its own, so "
                    "PVCs without a class stay Pending: render exactly one (kfrelease.k8s.render.kubeflow)",
                )
            )
        elif defaults[0].get("provisioner") != EBS_CSI:
            out.append(
                Finding(
                    "storage-class",
                    f"overlays/{name}: {_where(defaults[0])}",
                    f"provisioner {defaults[0].get('provisioner')!r} is not {EBS_CSI}",
                )
            )
        addons = {a.get("name") for a in (ctx.yaml_docs(f"eks/{name}/cluster.yaml") or [{}])[0].get("addons", [])}
        if "aws-ebs-csi-driver" not in addons:
            out.append(
                Finding(
                    "storage-class",
                    f"eks/{name}/cluster.yaml",
                    "no aws-ebs-csi-driver add-on: nothing provisions the EBS volumes",
                )
            )
    return out


@register_check("image-digest")
def check_image_digest(ctx: CheckContext) -> list[Finding]:
    """Every step of every compiled package (``--compiled DIR``) runs the project image by digest (``--image``
    when given) and hands it on in ``KFRELEASE_IMAGE``."""
    if ctx.compiled is None:
        return []
    out = []
    packages = sorted(ctx.compiled.glob("*.yaml"))
    if not packages:
        return [Finding("image-digest", str(ctx.compiled), "no compiled package (*.yaml) to check")]
    for path in packages:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for name, container in executors(docs[0] if docs else {}).items():
            image = container.get("image", "")
            where = f"{path.name}: executor {name}"
            if not is_by_digest(image):
                out.append(Finding("image-digest", where, f"image {image!r} is not named by digest"))
            elif ctx.image and image != ctx.image:
                out.append(Finding("image-digest", where, f"image {image} is not the pushed {ctx.image}"))
            env = {e.get("name"): e.get("value") for e in container.get("env", [])}
            if env.get(IMAGE_ENV) != image:
                out.append(
                    Finding(
                        "image-digest",
                        where,
                        f"{IMAGE_ENV} is {env.get(IMAGE_ENV)!r}, not its own image: a step that compiles a "
                        "pipeline would compile it on another image",
                    )
                )
    return out


@register_check("m2m-auth")
def check_m2m_auth(ctx: CheckContext) -> list[Finding]:
    """CI's EKS-issued token is accepted only by oauth2-proxy's m2m-dex-and-eks overlay trusting this
    cluster's OIDC issuer; KFP must be reachable from the internet for GitHub-hosted runners."""
    out = []
    for name, env in ctx.environments.items():
        rel = f"eks/{name}/kubeflow/oauth2-proxy/kustomization.yaml"
        docs = ctx.yaml_docs(rel)
        resources = (docs[0] if docs else {}).get("resources", [])
        if not any(OAUTH2_PROXY_EKS_OVERLAY in r for r in resources):
            out.append(
                Finding(
                    "m2m-auth",
                    rel,
                    f"does not build {OAUTH2_PROXY_EKS_OVERLAY}: Kubeflow would refuse the CI's EKS-issued token",
                )
            )
        if not env.oidc_issuer.startswith(f"https://oidc.eks.{env.region}.amazonaws.com/id/"):
            out.append(
                Finding(
                    "m2m-auth",
                    f"environments.yaml ({name})",
                    f"oidc_issuer {env.oidc_issuer!r} is not this cluster's EKS issuer; set it from "
                    "`aws eks describe-cluster --query cluster.identity.oidc.issuer`",
                )
            )
        ingresses = [
            d
            for d in ctx.overlay(name)
            if d["kind"] == "Ingress" and any(r.get("host") == env.kubeflow_host for r in d["spec"].get("rules", []))
        ]
        if not ingresses:
            out.append(
                Finding(
                    "m2m-auth",
                    f"overlays/{name}",
                    f"no Ingress for kubeflow_host {env.kubeflow_host!r}: GitHub-hosted runners cannot reach KFP",
                )
            )
        elif not (ingresses[0]["metadata"].get("annotations") or {}).get("alb.ingress.kubernetes.io/certificate-arn"):
            out.append(
                Finding(
                    "m2m-auth",
                    f"overlays/{name}: {_where(ingresses[0])}",
                    "no ACM certificate: the CI's bearer token would cross the internet without TLS",
                )
            )
    return out


@register_check("release-path")
def check_release_path(ctx: CheckContext) -> list[Finding]:
    """RBAC, the release driver's rights over a whole release and a rollback, and the AuthorizationPolicies
    under global-deny-all (``kfrelease.k8s.policy.release_checks``), on what is applied: overlay + bootstrap, with
    the groups the committed eksctl access entries map."""
    out = []
    for name, env in ctx.environments.items():
        docs = ctx.overlay(name) + ctx.yaml_docs(f"bootstrap/{name}/release.yaml")
        config = (ctx.yaml_docs(f"eks/{name}/cluster.yaml") or [{}])[0]
        groups = {
            g
            for e in (config.get("accessConfig") or {}).get("accessEntries") or []
            for g in e.get("kubernetesGroups", [])
        }
        spec = ctx.sources.spec
        # Kubeflow's ClusterRoles of the environment's release, with the committed backports applied over them
        backports = {d["metadata"]["name"]: d for d in ctx.yaml_docs(f"eks/{name}/kubeflow/backports.yaml")}
        roles = [backports.get(d["metadata"]["name"], d) for d in upstream_cluster_roles(env.kubeflow_version)]
        messages = rc.rbac_findings(docs, spec, groups, kubeflow_roles=roles) + rc.driver_findings(
            docs, spec, env.production_version, env.kserve_version, kubeflow_roles=roles
        )
        # the cluster's Sidecars beyond the overlay: Kubeflow's mesh-wide default and the client namespaces'
        sidecars = upstream_sidecars(env.kubeflow_version) + ctx.yaml_docs(f"eks/{name}/mesh-clients.yaml")
        try:
            messages += rc.mesh_findings(docs, spec, env.mesh_clients, sidecars)
        except ValueError as exc:  # a field the Istio evaluator does not know: it never guesses
            messages.append(f"could not evaluate the mesh: {exc}")
        out += [Finding("release-path", f"overlays/{name}", m) for m in messages]
    return out


def run_checks(ctx: CheckContext, only: list[str] | None = None) -> list[Finding]:
    """Every registered check (or those named in ``only``), in order; a check that cannot run is a finding."""
    unknown = set(only or []) - {n for n, _ in CHECKS}
    if unknown:
        raise ConfigError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(n for n, _ in CHECKS)}")
    findings = []
    for name, check in CHECKS:
        if only and name not in only:
            continue
        try:
            findings += check(ctx)
        except ConfigError as exc:  # e.g. an overlay that no longer builds: report it, run the other checks
            findings.append(Finding(name, str(ctx.root), f"could not check: {exc}"))
    return findings
