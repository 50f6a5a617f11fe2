"""The embedded stack: real services (SeaweedFS S3, an OCI registry, and what later parts declare) run as
local processes on 127.0.0.1, with state under the data directory. See ``services`` for the declarations
and ``supervisor`` for up/down/status; ``watchdog`` restarts what dies.

The serving side of the stack: ``serving`` (the group ``kfrelease serve`` starts), ``gateway`` (nginx in front of
the model servers) and its ``hold``, ``slots`` (which model server plays which role on which port), ``hosts``
(the model-server processes, each hosting many models), ``spare`` (a warm fork server for restarts) and
``model_files`` (the local model-download cache). The model server itself is ``kfrelease.serving``."""

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
