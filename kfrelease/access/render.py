"""Render the access policy for each target: SeaweedFS S3 identities (embedded) and AWS IAM (EKS).

IAM mapping, least privilege: ``list`` -> ``s3:ListBucket`` on the bucket ARN; ``read`` ->
``s3:GetObject`` on its objects; ``write`` -> ``s3:PutObject``, ``s3:DeleteObject``,
``s3:AbortMultipartUpload`` on its objects. A write granted on a key prefix (``models/experiments/``) is
the same object actions on ``arn:aws:s3:::<bucket>/<prefix>*`` only (object actions are scoped by the
resource ARN; no condition key is involved). SeaweedFS's ``Read:<bucket>``, ``Write:<bucket>`` and
``List:<bucket>`` actions, and ``Write:<bucket>/<prefix>*`` for a prefix, are enforced per identity (checked
in tests against the running server).
"""

from __future__ import annotations

from kfrelease.access.credentials import ADMIN, ensure_credentials
from kfrelease.access.policy import AccessPolicy
from kfrelease.config import Settings

IAM_ACTIONS = {
    "list": ["s3:ListBucket"],
    "read": ["s3:GetObject"],
    "write": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
}
SEAWEED_ACTIONS = {"read": "Read", "write": "Write", "list": "List"}


def bucket_name(bucket: str, prefix: str = "") -> str:
    """The physical bucket name: on AWS bucket names are global, so EKS adds a prefix (e.g. ``acme-ml-``)."""
    return f"{prefix}{bucket}"


def seaweed_identities(settings: Settings, policy: AccessPolicy) -> dict:
    """The ``-s3.config`` document for ``weed``: one identity per role plus the stack's admin."""
    identities = []
    admin = ensure_credentials(settings, ADMIN)
    identities.append(
        {
            "name": ADMIN,
            "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
    )
    for role, grants in policy.roles.items():
        creds = ensure_credentials(settings, role)
        actions = sorted(f"{SEAWEED_ACTIONS[a]}:{b}" for b, acts in grants.items() for a in acts)
        # SeaweedFS matches "<Action>:<bucket>/<key>" against an action ending in "*" by prefix
        actions += sorted(
            f"{SEAWEED_ACTIONS[a]}:{b}/{prefix}*" for (b, prefix), acts in policy.prefixes[role].items() for a in acts
        )
        identities.append(
            {
                "name": role,
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}],
                "actions": actions,
            }
        )
    return {"identities": identities}


def iam_policy(policy: AccessPolicy, role: str, bucket_prefix: str = "") -> dict:
    """One IAM policy document (JSON-ready) granting exactly the role's bucket actions."""
    statements = []
    scoped: dict[str, dict[str, list[str]]] = {}  # bucket -> action -> prefixes
    for (bucket, prefix), actions in policy.prefixes.get(role, {}).items():
        for action in actions:
            scoped.setdefault(bucket, {}).setdefault(action, []).append(prefix)
    for bucket in sorted(set(policy.roles[role]) | set(scoped)):
        actions = policy.roles[role].get(bucket, frozenset())
        name = bucket_name(bucket, bucket_prefix)
        sid = "".join(part.capitalize() for part in bucket.split("-"))
        if "list" in actions:
            statements.append(
                {
                    "Sid": f"List{sid}",
                    "Effect": "Allow",
                    "Action": IAM_ACTIONS["list"],
                    "Resource": [f"arn:aws:s3:::{name}"],
                }
            )
        object_actions = [x for a in ("read", "write") if a in actions for x in IAM_ACTIONS[a]]
        if object_actions:
            statements.append(
                {
                    "Sid": f"Objects{sid}",
                    "Effect": "Allow",
                    "Action": object_actions,
                    "Resource": [f"arn:aws:s3:::{name}/*"],
                }
            )
        for action, prefixes in sorted(scoped.get(bucket, {}).items()):
            if action in actions:
                continue  # the whole bucket already
            statements.append(
                {
                    "Sid": f"{action.capitalize()}{sid}Prefixes",
                    "Effect": "Allow",
                    "Action": IAM_ACTIONS[action],
                    "Resource": [f"arn:aws:s3:::{name}/{prefix}*" for prefix in sorted(prefixes)],
                }
            )
    return {"Version": "2012-10-17", "Statement": statements}


def iam_policies(policy: AccessPolicy, bucket_prefix: str = "") -> dict[str, dict]:
    return {role: iam_policy(policy, role, bucket_prefix) for role in policy.roles}
