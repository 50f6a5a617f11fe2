"""Why a training run or step failed, and whether trying again can help.

Only an *infrastructure* cause is retried: the process was killed (a signal, the kernel's out-of-memory
killer, a machine restart that left a run "running" with no process), the object store could not be
reached, the network or the disk failed. A failure of the model code (its estimator, its build
function, its hyper-parameters) or of the data (validation, a missing dataset version) fails again the
same way on every attempt, so it is not retried and the run says why in one line.
"""

from __future__ import annotations

import errno
import signal

from kfrelease.errors import (
    AccessDenied,
    ConfigError,
    Conflict,
    DataValidationError,
    NotFound,
    StorageError,
    StoreUnavailable,
)

INFRASTRUCTURE = "infrastructure"
MODEL_CODE = "model code"
DATA = "data"
CONFIGURATION = "configuration"
RETRYABLE = frozenset({INFRASTRUCTURE})
_INFRA_ERRNOS = {
    errno.ENOSPC,
    errno.ENOMEM,
    errno.EIO,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
}


def cause_of(exc: BaseException) -> str:
    """The cause class of an exception raised inside a step."""
    if isinstance(exc, (DataValidationError, NotFound)):
        return DATA
    if isinstance(exc, (AccessDenied, Conflict)):
        return CONFIGURATION
    if isinstance(exc, (StoreUnavailable, MemoryError, ConnectionError, TimeoutError)):
        return INFRASTRUCTURE
    if isinstance(exc, StorageError):
        return INFRASTRUCTURE  # the store answered with an error other than a refusal or a missing key
    if isinstance(exc, ConfigError):
        return MODEL_CODE
    if isinstance(exc, OSError) and exc.errno in _INFRA_ERRNOS:
        return INFRASTRUCTURE
    if type(exc).__module__.startswith(("urllib3", "requests", "http.client")):
        return INFRASTRUCTURE
    return MODEL_CODE  # anything else raised while fitting or predicting is the merged code's


def cause_of_exit(returncode: int | None) -> str | None:
    """A process that ended by a signal (or exit 137, what a container killed by SIGKILL/OOM reports)."""
    if returncode is None:
        return None
    if returncode < 0 or returncode in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
        return INFRASTRUCTURE
    return None


def retryable(cause: str | None) -> bool:
    return cause in RETRYABLE


def one_line(cause: str, error: str) -> str:
    """``model code: ValueError: ...`` (first line only, bounded), what ``kfrelease runs`` shows."""
    first = (error or "").strip().splitlines()[0] if (error or "").strip() else "no error message"
    return f"{cause}: {first}"[:300]
