"""The RBAC evaluator the manifests tests use: ``kfrelease.k8s.policy.rbac`` (one home, shared with
``kfrelease manifests check`` and the cluster stand-in in ``tests/cluster_standin``).

A person is a Kubeflow user (signed in through Dex / oauth2-proxy): KFP authorizes them with a
SubjectAccessReview of their user name only, and no EKS access entry maps them to a Kubernetes group, so
``person`` carries no group, whatever group the platform might have meant them to be in.
"""

from __future__ import annotations

from kfrelease.k8s.policy.rbac import (  # noqa: F401 (re-exported for the tests)
    RBACModel,
    Requester,
    access_entry_requester,
    kfp_requester,
    requester_of,
    service_account,
)


def person(email: str) -> Requester:
    return Requester(email)
