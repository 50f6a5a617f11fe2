"""A tiny evaluator of IAM policy documents for S3: which (bucket, action) pairs a policy allows.

Only what our renderer emits is supported (Allow statements with Action lists and ARN resources, with
``*`` wildcards); anything else fails loudly so the evaluator cannot silently under-approximate.
"""

from __future__ import annotations

import fnmatch

# Our three actions as S3 API calls on an object key or a bucket.
PROBES = {
    "read": ("s3:GetObject", "object"),
    "write": ("s3:PutObject", "object"),
    "delete": ("s3:DeleteObject", "object"),
    "list": ("s3:ListBucket", "bucket"),
}


def allowed(doc: dict, bucket: str, action: str, key: str = "some/key") -> bool:
    """Whether ``doc`` allows ``action`` (read, write, delete, list) on ``bucket`` (objects: at ``key``)."""
    assert doc.get("Version") == "2012-10-17", "IAM policy must use Version 2012-10-17"
    api, target = PROBES[action]
    resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if target == "object" else "")
    verdict = False
    for st in doc["Statement"]:
        assert set(st) <= {"Sid", "Effect", "Action", "Resource"}, f"unsupported statement keys {set(st)}"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        if any(fnmatch.fnmatchcase(api, a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        ):
            if st["Effect"] == "Deny":
                return False
            verdict = True
    return verdict
