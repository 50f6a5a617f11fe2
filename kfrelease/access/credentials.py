"""Generated S3 credentials of the embedded stack: one file per identity, mode 0600, under the data dir."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.errors import ConfigError
from kfrelease.locks import exclusive_lock

#: The stack's own identity, used only to create buckets; not a team role.
ADMIN = "stack-admin"


@dataclass(frozen=True)
class Credentials:
    identity: str
    access_key: str
    secret_key: str


def _path(settings: Settings, identity: str) -> Path:
    return settings.credentials_dir / f"{identity}.json"


def ensure_credentials(settings: Settings, identity: str) -> Credentials:
    """Return the identity's credentials, generating them once (file mode 0600)."""
    path = _path(settings, identity)
    if path.exists():
        return load_credentials(settings, identity)
    settings.credentials_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.credentials_dir, 0o700)
    creds = Credentials(identity, "KF" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"identity": identity, "access_key": creds.access_key, "secret_key": creds.secret_key}, fh)
    return creds


def load_credentials(settings: Settings, identity: str) -> Credentials:
    path = _path(settings, identity)
    try:
        doc = json.loads(path.read_text())
        return Credentials(identity, doc["access_key"], doc["secret_key"])
    except FileNotFoundError:
        raise ConfigError(
            f"no credentials for role {identity!r} at {path}; start the embedded stack with `kfrelease up` "
            f"(it generates them), or set KFRELEASE_S3_ENDPOINT and AWS credentials for an external S3"
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"credentials file {path} is unreadable ({exc}); delete it and run `kfrelease up`") from None


#: Declared label sources of the embedded stack (name -> bearer token), one file, mode 0600: the feedback
#: service counts a label only when its request carries one of these tokens (``kfrelease.collectors.feedback``).
LABEL_SOURCES = "label-sources"
#: The label source of the stack's own clients (the demo's and the tests' traffic).
DEFAULT_LABEL_SOURCE = "clients"


def label_sources_path(settings: Settings) -> Path:
    return _path(settings, LABEL_SOURCES)


def label_source_tokens(settings: Settings) -> dict[str, str]:
    """Token -> label source name, as declared under the data dir ({} when none is)."""
    path = label_sources_path(settings)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"label sources file {path} is unreadable ({exc}); delete it and run `kfrelease up`"
        ) from None
    return {token: name for name, token in (doc.get("sources") or {}).items()}


def ensure_label_source(settings: Settings, name: str = DEFAULT_LABEL_SOURCE) -> str:
    """The bearer token of label source ``name``, declaring it once (file mode 0600, written whole). Declarations
    take turns (``exclusive_lock``): two clients declaring the same source at once get the same token, where each
    would otherwise write its own and the one replaced would be refused (403) from then on."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"label source name {name!r} must be letters, digits, '-' or '_'")
    existing = {n: t for t, n in label_source_tokens(settings).items()}
    if name in existing:
        return existing[name]
    settings.credentials_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.credentials_dir, 0o700)
    path = label_sources_path(settings)
    with exclusive_lock(path.with_name(f".{path.name}.lock")):
        existing = {n: t for t, n in label_source_tokens(settings).items()}  # as the last declaration left it
        if name not in existing:
            existing[name] = secrets.token_urlsafe(30)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"sources": existing}, fh)
            os.replace(tmp, path)
    return existing[name]
