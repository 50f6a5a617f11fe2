"""The access policy and what is rendered from it: SeaweedFS identities, AWS IAM policies, credentials."""

from kfrelease.access.policy import ACTIONS, AccessPolicy, load_policy

__all__ = ["ACTIONS", "AccessPolicy", "load_policy"]
