"""Load and check the declarative access policy (``policy.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError

ACTIONS = ("read", "write", "list")


@dataclass(frozen=True)
class AccessPolicy:
    buckets: dict[str, str]
    roles: dict[str, dict[str, frozenset[str]]]  # role -> bucket -> actions
    descriptions: dict[str, str]

    def allows(self, role: str, bucket: str, action: str) -> bool:
        return action in self.roles.get(role, {}).get(bucket, frozenset())

    def matrix(self) -> dict[tuple[str, str, str], bool]:
        """Every role x bucket x action and whether it is allowed."""
        return {(r, b, a): self.allows(r, b, a) for r in self.roles for b in self.buckets for a in ACTIONS}


def _default_path() -> Path:
    return Path(str(resources.files("kfrelease.access") / "policy.yaml"))


def load_policy(path: str | Path | None = None) -> AccessPolicy:
    """Read and check a policy file (default: the packaged ``policy.yaml``)."""
    path = Path(path) if path else _default_path()
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"access policy {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"access policy {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("buckets"), dict) or not isinstance(doc.get("roles"), dict):
        raise ConfigError(f"access policy {path} must have mappings 'buckets' and 'roles'")
    buckets = {str(k): str(v or "") for k, v in doc["buckets"].items()}
    roles: dict[str, dict[str, frozenset[str]]] = {}
    descriptions = {}
    for role, body in doc["roles"].items():
        grants = (body or {}).get("grants") or {}
        descriptions[role] = (body or {}).get("description", "")
        roles[role] = {}
        for bucket, actions in grants.items():
            if bucket not in buckets:
                raise ConfigError(
                    f"access policy {path}: role {role!r} names bucket {bucket!r}, which is not under 'buckets' "
                    f"({', '.join(buckets)})"
                )
            bad = [a for a in actions if a not in ACTIONS]
            if bad:
                raise ConfigError(
                    f"access policy {path}: role {role!r} bucket {bucket!r} has unknown action(s) {bad}; "
                    f"use {', '.join(ACTIONS)}"
                )
            roles[role][bucket] = frozenset(actions)
    return AccessPolicy(buckets=buckets, roles=roles, descriptions=descriptions)
