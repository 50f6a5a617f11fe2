"""The rollout spec: one declarative description of a release, rendered everywhere and interpreted by the
release controller."""

from kfrelease.rollout.spec import CanarySpec, RolloutSpec, ServingSpec, ShadowSpec, load_rollout_spec

__all__ = ["CanarySpec", "RolloutSpec", "ServingSpec", "ShadowSpec", "load_rollout_spec"]
