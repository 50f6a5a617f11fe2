"""A data scientist's workspace: Profile (namespace ``ds-<name>``), Notebook with jupyterlab-git, volume,
object-store access as the ``data-scientist`` role (IRSA), read-only access to the release namespace and
edit access to the shared science namespace (both bound to the user's name, as KFAM does).

Source of a workspace: ``manifests/sources/workspaces/<name>.yaml`` (``name``, ``email``), written by
``kfrelease workspace add``; ``kfrelease manifests render`` renders it with everything else (its documents,
its overlay patches and its IAM role in each environment's eksctl ClusterConfig).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kfrelease.access.policy import AccessPolicy
from kfrelease.errors import ConfigError
from kfrelease.k8s.environments import PROFILE_SA, RELEASE_NS, SCIENCE_NS, Environment
from kfrelease.k8s.render.platform import (
    PART_OF,
    kfam_user_binding,
    pod_default,
    profile,
)

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ROLE = "data-scientist"


@dataclass(frozen=True)
class Workspace:
    name: str
    email: str
    storage: str = "20Gi"
    cpu: str = "1"
    memory: str = "4Gi"

    @property
    def namespace(self) -> str:
        return f"ds-{self.name}"

    def check(self, origin: str = "workspace") -> Workspace:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"{origin}: name {self.name!r} must be a DNS label: lower-case letters, digits and '-', "
                "starting with a letter, at most 30 characters (e.g. 'alice')"
            )
        if not _EMAIL.match(self.email):
            raise ConfigError(f"{origin}: email {self.email!r} is not an e-mail address (the Kubeflow user id)")
        return self


def load_workspaces(directory: Path) -> list[Workspace]:
    """Every ``<name>.yaml`` under ``directory`` (sorted by name)."""
    out = []
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
            ws = Workspace(**doc)
        except (yaml.YAMLError, TypeError) as exc:
            raise ConfigError(f"workspace file {path} is malformed ({exc}); it needs 'name' and 'email'") from None
        ws.check(str(path))
        if ws.name != path.stem:
            raise ConfigError(f"workspace file {path} declares name {ws.name!r}; rename the file to {ws.name}.yaml")
        out.append(ws)
    return out


def notebook(ws: Workspace, image: str) -> dict:
    """The Kubeflow Notebook: JupyterLab with jupyterlab-git on the workspace image, running as the
    Profile's ``default-editor`` (IRSA: the workspace's data-scientist IAM role)."""
    access_label = f"access-s3-{ROLE}"
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "Notebook",
        "metadata": {
            "name": "workspace",
            "namespace": ws.namespace,
            # The notebook controller copies the Notebook's labels to its pod: this one selects the PodDefault.
            "labels": {**PART_OF, "app": "workspace", access_label: "true"},
            "annotations": {"notebooks.kubeflow.org/creator": ws.email},
        },
        "spec": {
            "template": {
                "spec": {
                    "serviceAccountName": PROFILE_SA,
                    "containers": [
                        {
                            "name": "workspace",
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "env": [{"name": "GIT_TERMINAL_PROMPT", "value": "0"}],  # S3 settings: the PodDefault
                            "resources": {
                                "requests": {"cpu": ws.cpu, "memory": ws.memory},
                                "limits": {"cpu": ws.cpu, "memory": ws.memory},
                            },
                            "volumeMounts": [{"name": "home", "mountPath": "/home/jovyan"}],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "home",
                            "persistentVolumeClaim": {"claimName": "workspace-home"},
                        }
                    ],
                }
            }
        },
    }


def home_volume(ws: Workspace) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "workspace-home",
            "namespace": ws.namespace,
            "labels": dict(PART_OF),
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": ws.storage}},
        },
    }


def workspace_documents(ws: Workspace, env: Environment, policy: AccessPolicy):
    """Everything one data scientist needs, for one environment."""
    if ROLE not in policy.roles:
        raise ConfigError(f"the access policy has no {ROLE!r} role; workspaces run as that role")
    return [
        profile(ws.namespace, ws.email, env, ROLE, workspace=ws.name),
        pod_default(ROLE, ws.namespace, env, PROFILE_SA),
        home_volume(ws),
        notebook(ws, env.workspace_image),
        # as KFAM binds a Profile contributor: by user name, the only subject KFP's SubjectAccessReview carries
        *kfam_user_binding(ws.email, RELEASE_NS, "view"),
        *kfam_user_binding(ws.email, SCIENCE_NS, "edit"),
    ]


__all__ = ["Workspace", "load_workspaces", "workspace_documents"]
