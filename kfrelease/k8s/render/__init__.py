"""Rendering of the cluster's objects from the rollout spec, the access policy and the environments
(pure functions of their inputs: nothing here talks to a cluster or evaluates a policy)."""
