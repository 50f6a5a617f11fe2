"""Fixtures of the manifests tests: the sources and each overlay built with the real `kubectl kustomize`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kfrelease.k8s.environments import MANIFESTS_DIR
from kfrelease.k8s.policy.schemas import yaml_loader
from kfrelease.k8s.render.tree import Sources


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed for `kubectl kustomize` (see scripts/system-deps.sh)"
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed: {proc.stderr}"
    return [d for d in yaml.load_all(proc.stdout, Loader=yaml_loader()) if d]


def upstream_cluster_roles(env: str = "staging") -> list[dict]:
    """Kubeflow's ClusterRoles as environment ``env``'s cluster holds them once the runbook ran: its Kubeflow
    release's, with ``eks/<env>/kubeflow/backports.yaml`` applied over them."""
    from kfrelease.k8s.policy.rbac import environment_cluster_roles

    return environment_cluster_roles(Sources.load(MANIFESTS_DIR).envs.environments[env].kubeflow_version)


@pytest.fixture(scope="session")
def sources() -> Sources:
    return Sources.load(MANIFESTS_DIR)


@pytest.fixture(scope="session")
def built(sources) -> dict[str, list[dict]]:
    """Environment name -> documents of `kubectl kustomize manifests/overlays/<env>`."""
    return {name: kustomize(MANIFESTS_DIR / "overlays" / name) for name in sources.envs.environments}
