"""Kubernetes documents: schema validation of rendered manifests (``kfrelease.k8s.schemas.validate``)."""

from kfrelease.k8s.schemas import SchemaValidationError, validate

__all__ = ["SchemaValidationError", "validate"]
