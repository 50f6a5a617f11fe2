"""The model registry: immutable versioned entries, model artifacts and an append-only stage history
in the ``models`` bucket (docs/CONTRACTS.md)."""

from kfrelease.registry.registry import (
    EXPERIMENT_ARTIFACTS,
    EXPERIMENTS,
    STAGES,
    ModelRegistry,
    ModelVersion,
    Registration,
    TrainedModel,
)
from kfrelease.registry.versions import VersionNumber, next_version

__all__ = [
    "EXPERIMENTS",
    "EXPERIMENT_ARTIFACTS",
    "STAGES",
    "ModelRegistry",
    "ModelVersion",
    "Registration",
    "TrainedModel",
    "VersionNumber",
    "next_version",
]
