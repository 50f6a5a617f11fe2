"""Settings of the embedded stack and of the cluster target, all from environment variables.

Defaults (each overridable):
- ``KFRELEASE_HOME``: the data directory, default ``~/.kfrelease``. Holds service data, logs, pid files,
  generated credentials (mode 0600) and run records.
- ``KFRELEASE_PORT_OFFSET``: added to every default port (tests use it to run a second stack beside yours).
- ``KFRELEASE_<SERVICE>_PORT``: one service's port, e.g. ``KFRELEASE_S3_PORT=9000``.
- ``KFRELEASE_S3_ENDPOINT``: use this S3 endpoint instead of the embedded one (e.g. ``s3.amazonaws.com``
  on EKS); credentials then come from the environment or IRSA, not from the data directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kfrelease.errors import ConfigError

#: Default port of each embedded service, before ``KFRELEASE_PORT_OFFSET``.
DEFAULT_PORTS: dict[str, int] = {
    "s3": 8333,  # SeaweedFS S3 gateway; its internal master/volume/filer use the next 8 ports
    "registry": 5000,  # OCI registry (Debian docker-registry)
    "gateway": 8080,  # nginx in front of the model servers
    "logsink": 8090,  # prediction-log sink (KServe logger CloudEvents)
    "feedback": 8091,  # ground-truth endpoint
    "watchdog": 8097,  # restarts stack services that die (kfrelease.stack.watchdog)
    "predictor": 8100,  # first model-server port; each model server takes the next free one
    "prometheus": 9090,
    "pushgateway": 9091,
    "alertmanager": 9093,
    "alert-receiver": 9095,  # Alertmanager webhook receiver (records alerts, triggers retrains)
}


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; set it to a port number or unset it") from None


@dataclass(frozen=True)
class Settings:
    home: Path
    port_offset: int = 0
    s3_endpoint: str | None = None
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    bucket_prefix: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("KFRELEASE_HOME") or Path.home() / ".kfrelease").expanduser().resolve()
        endpoint = os.environ.get("KFRELEASE_S3_ENDPOINT") or None
        return cls(
            home=home,
            port_offset=_int_env("KFRELEASE_PORT_OFFSET", 0),
            s3_endpoint=endpoint,
            s3_secure=os.environ.get("KFRELEASE_S3_SECURE", "false").lower() in ("1", "true", "yes"),
            s3_region=os.environ.get("KFRELEASE_S3_REGION", "us-east-1"),
            bucket_prefix=os.environ.get("KFRELEASE_BUCKET_PREFIX", ""),
        )

    def port(self, service: str) -> int:
        if service not in DEFAULT_PORTS:
            raise ConfigError(f"no port is declared for service {service!r}; known: {', '.join(DEFAULT_PORTS)}")
        env = f"KFRELEASE_{service.upper().replace('-', '_')}_PORT"
        return _int_env(env, DEFAULT_PORTS[service] + self.port_offset)

    def url(self, service: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port(service)}{path}"

    @property
    def embedded(self) -> bool:
        """True when the object store is the embedded SeaweedFS, not an external S3."""
        return self.s3_endpoint is None

    @property
    def s3_address(self) -> str:
        return self.s3_endpoint or f"127.0.0.1:{self.port('s3')}"

    # Directories under the data directory ------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def credentials_dir(self) -> Path:
        return self.home / "credentials"

    def service_dir(self, name: str) -> Path:
        return self.home / "services" / name


def settings() -> Settings:
    return Settings.from_env()


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a detached kfrelease process (a training or release run) on ``settings``' stack.

    Started from inside a KFP component, the environment has ``_KFP_RUNTIME=true``, under which ``kfp.dsl``
    exports only the runtime API (kfp/dsl/__init__.py: ``if os.environ.get('_KFP_RUNTIME') != 'true'``) and
    a pipeline could not even be defined; the child is an authoring process, not a step, so it is dropped."""
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    env.update(KFRELEASE_HOME=str(settings.home), KFRELEASE_PORT_OFFSET=str(settings.port_offset))
    return env
