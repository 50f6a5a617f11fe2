"""Who may push to the Pushgateway and who may scrape it: basic auth, on the cluster and on the embedded stack.

The Pushgateway takes any metric with any labels from whoever reaches it, and its series feed the quality alerts that
start automatic retrains (``kfrelease_model_*``). So it runs with ``--web.config.file`` (prometheus/pushgateway
v1.11.1 README, "TLS and basic authentication": the settings apply to every endpoint, pushes and ``/metrics``
alike) whose ``basic_auth_users`` hold two bcrypt-hashed users (prometheus/exporter-toolkit
``docs/web-configuration.md``):

- ``PUSH_USER``: the monitoring steps (``kfrelease.monitoring.push``), with the credentials of a directory holding
  ``username`` and ``password`` files (a mounted Secret's layout): ``KFRELEASE_PUSHGATEWAY_CREDENTIALS``, else the
  embedded stack's own;
- ``SCRAPE_USER``: Prometheus (on a cluster the ServiceMonitor's ``basicAuth`` from ``SCRAPE_SECRET``; on the
  embedded stack ``basic_auth.password_file``).

On a cluster the platform engineer creates the three Secrets (docs/platform-engineer-eks.md, step "Pushgateway
credentials"): ``WEB_CONFIG_SECRET`` and ``SCRAPE_SECRET`` in ``kfrelease-monitoring``, ``PUSH_SECRET`` in the
pipelines' namespace, mounted only into pods labelled ``kfrelease.io/step-identity: monitoring``
(``kfrelease.k8s.render.platform.monitoring_push_access``): a pod's one step-identity label cannot say both
``untrusted`` (the merged model code) and ``monitoring``. The embedded stack generates its own in
``services/pushgateway/credentials/`` (mode 0600) the first time it starts the Pushgateway.
"""

from __future__ import annotations

import secrets
import warnings
from pathlib import Path

import yaml

from kfrelease.config import Settings, setting
from kfrelease.errors import ConfigError

PUSH_USER = "monitoring"
SCRAPE_USER = "prometheus"
#: kfrelease-monitoring: the Pushgateway's web config (key ``WEB_CONFIG_KEY``)
WEB_CONFIG_SECRET = "kfrelease-pushgateway-web"
WEB_CONFIG_KEY = "web-config.yml"
#: kfrelease-monitoring: Prometheus's scrape credentials (keys ``username``, ``password``)
SCRAPE_SECRET = "kfrelease-pushgateway-scrape"
#: the pipelines' namespace: the monitoring steps' push credentials (keys ``username``, ``password``)
PUSH_SECRET = "kfrelease-pushgateway-push"


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash (``$2b$``, cost 10, as exporter-toolkit's docs make with ``htpasswd -nBC 10``) from the C
    library's crypt(3) (libxcrypt), through Python's ``crypt`` (3.11; deprecated, gone in 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # optional: crypt (Python < 3.13; the embedded stack's Pushgateway credentials only)

    method = getattr(crypt, "METHOD_BLOWFISH", None)
    if method not in crypt.methods:
        raise ConfigError("this system's crypt(3) has no bcrypt; the embedded Pushgateway's credentials need it")
    return crypt.crypt(password, crypt.mksalt(method, rounds=1 << 10))


def web_config(hashes: dict[str, str]) -> str:
    """The Pushgateway's ``--web.config.file``: ``basic_auth_users`` of user -> bcrypt hash."""
    return yaml.safe_dump({"basic_auth_users": hashes}, sort_keys=True)


def read_credentials(directory: Path) -> tuple[str, str]:
    """(username, password) of a credentials directory (``username`` and ``password`` files)."""
    try:
        return (directory / "username").read_text().strip(), (directory / "password").read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"Pushgateway credentials in {directory} cannot be read ({exc.strerror}); a directory with username and "
            "password files is needed (on a cluster the Secret kfrelease-pushgateway-push, mounted by the PodDefault "
            "kfrelease-monitoring-push)"
        ) from None


def embedded_dir(settings: Settings) -> Path:
    return settings.service_dir("pushgateway") / "credentials"


def ensure_embedded(settings: Settings) -> Path:
    """The embedded stack's credentials (one directory per user) and web config, generated once; returns the web
    config's path."""
    root = embedded_dir(settings)
    config = root / WEB_CONFIG_KEY
    if config.exists():
        return config
    hashes = {}
    for user in (PUSH_USER, SCRAPE_USER):
        d = root / user
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
        password = secrets.token_urlsafe(24)
        for name, value in (("username", user), ("password", password)):
            (d / name).write_text(value)
            (d / name).chmod(0o600)
        hashes[user] = bcrypt_hash(password)
    tmp = config.with_suffix(".tmp")
    tmp.write_text(web_config(hashes))
    tmp.chmod(0o600)
    tmp.replace(config)  # last: its presence says every user's files are written
    return config


def embedded_credentials(settings: Settings, user: str) -> tuple[str, str]:
    """(username, password) of one of the embedded stack's Pushgateway users (``PUSH_USER``, ``SCRAPE_USER``)."""
    return read_credentials(embedded_dir(settings) / user)


def push_credentials(settings: Settings) -> tuple[str, str]:
    """The monitoring steps' (username, password): ``KFRELEASE_PUSHGATEWAY_CREDENTIALS``, else the embedded stack's."""
    given = setting("KFRELEASE_PUSHGATEWAY_CREDENTIALS")
    return read_credentials(Path(given)) if given else embedded_credentials(settings, PUSH_USER)
