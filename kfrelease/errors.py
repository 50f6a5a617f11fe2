"""One exception family. Every message says what was wrong, where, and how to fix it."""


class KfreleaseError(Exception):
    """Base class of every error kfrelease raises on purpose; the CLI prints it in one line."""


class ConfigError(KfreleaseError):
    """A setting, spec or policy file is missing or malformed."""


class StackError(KfreleaseError):
    """An embedded-stack service could not be started, reached or stopped."""


class StorageError(KfreleaseError):
    """The object store refused or could not serve a request."""


class AccessDenied(StorageError):
    """The role's credentials do not allow this action on this bucket."""


class StoreUnavailable(StorageError):
    """The object store endpoint cannot be reached."""


class NotFound(StorageError):
    """An object, dataset version or model version does not exist."""


class Conflict(StorageError):
    """A conditional write lost a race (the key exists or changed meanwhile)."""


class DataValidationError(KfreleaseError):
    """Data does not match its declared schema; ``violations`` lists every failure found."""

    def __init__(self, message: str, violations: list[dict] | None = None):
        super().__init__(message)
        self.violations = violations or []
