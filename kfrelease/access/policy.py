"""Load and check the declarative access policy (``policy.yaml``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from kfrelease.errors import ConfigError

ACTIONS = ("read", "write", "list")
#: What a grant on a key prefix (``<bucket>/<prefix>/``) may hold: SeaweedFS 4.48's identities scope writes by
#: key prefix (``Write:<bucket>/<prefix>*``) but refuse a prefix-scoped ``Read``/``List`` even where it matches
#: (tried on the running server), so reads and listings are granted per bucket on both targets.
PREFIX_ACTIONS = ("write",)


@dataclass(frozen=True)
class AccessPolicy:
    buckets: dict[str, str]
    roles: dict[str, dict[str, frozenset[str]]]  # role -> bucket -> actions
    descriptions: dict[str, str]
    #: role -> (bucket, key prefix ending in "/") -> actions, on keys under the prefix only
    prefixes: dict[str, dict[tuple[str, str], frozenset[str]]] = field(default_factory=dict)

    def allows(self, role: str, bucket: str, action: str, key: str | None = None) -> bool:
        """Whether ``role`` may ``action`` on ``bucket`` (as a whole), or, given ``key``, on that object."""
        if action in self.roles.get(role, {}).get(bucket, frozenset()):
            return True
        return key is not None and any(
            b == bucket and key.startswith(prefix) and action in actions
            for (b, prefix), actions in self.prefixes.get(role, {}).items()
        )

    def matrix(self) -> dict[tuple[str, str, str], bool]:
        """Every role x bucket x action and whether it is allowed."""
        return {(r, b, a): self.allows(r, b, a) for r in self.roles for b in self.buckets for a in ACTIONS}


def _default_path() -> Path:
    return Path(str(resources.files("kfrelease.access") / "policy.yaml"))


def _refused(path, role: str, problem: str) -> ConfigError:
    return ConfigError(f"access policy {path}: role {role!r} {problem}")


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
    prefixes: dict[str, dict[tuple[str, str], frozenset[str]]] = {}
    descriptions = {}
    for role, body in doc["roles"].items():
        grants = (body or {}).get("grants") or {}
        descriptions[role] = (body or {}).get("description", "")
        roles[role], prefixes[role] = {}, {}
        for target, actions in grants.items():
            bucket, _, prefix = str(target).partition("/")
            if bucket not in buckets:
                raise _refused(
                    path, role, f"names bucket {bucket!r}, which is not under 'buckets' ({', '.join(buckets)})"
                )
            bad = [a for a in actions if a not in ACTIONS]
            if bad:
                raise _refused(path, role, f"bucket {bucket!r} has unknown action(s) {bad}; use {', '.join(ACTIONS)}")
            if not prefix:
                roles[role][bucket] = frozenset(actions)
                continue
            if not prefix.endswith("/") or "*" in prefix or "//" in prefix or ".." in prefix.split("/"):
                raise _refused(
                    path,
                    role,
                    f"grant {target!r}: a key prefix is plain path segments ending in '/' (e.g. models/experiments/), "
                    "no wildcards",
                )
            unscoped = [a for a in actions if a not in PREFIX_ACTIONS]
            if unscoped:
                raise _refused(
                    path,
                    role,
                    f"grant {target!r}: {unscoped} cannot be scoped to a key prefix (the embedded SeaweedFS enforces "
                    f"only {', '.join(PREFIX_ACTIONS)} per prefix); grant them on the bucket {bucket!r}",
                )
            prefixes[role][(bucket, prefix)] = frozenset(actions)
    return AccessPolicy(buckets=buckets, roles=roles, descriptions=descriptions, prefixes=prefixes)


@functools.cache
def packaged_roles() -> tuple[str, ...]:
    """The roles of the packaged policy, read once per process: ``kfrelease.storage.store_for`` checks a role on
    every call, and parsing the policy each time (4 ms of CPU) was 5 CPU-s of the test workers in one suite run."""
    return tuple(load_policy().roles)
