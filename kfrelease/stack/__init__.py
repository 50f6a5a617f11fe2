"""The embedded stack: real services (SeaweedFS S3, an OCI registry, and what later parts declare) run as
local processes on 127.0.0.1, with state under the data directory. See ``services`` for the declarations
and ``supervisor`` for up/down/status."""

from kfrelease.stack.service import Service
from kfrelease.stack.supervisor import (
    ServiceStatus,
    down,
    start_service,
    status,
    stop_service,
    up,
)

__all__ = ["Service", "ServiceStatus", "down", "start_service", "status", "stop_service", "up"]
