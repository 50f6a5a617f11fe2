"""Every role x bucket x action, tried against the running SeaweedFS: allowed exactly where the policy says."""

import os
import stat
import uuid

import pytest

from kfrelease.access.credentials import Credentials, load_credentials
from kfrelease.access.policy import load_policy
from kfrelease.errors import AccessDenied
from kfrelease.storage import ObjectStore, _http_client, store_for

pytestmark = pytest.mark.integration


def _attempt(store: ObjectStore, bucket: str, action: str, key: str) -> bool:
    try:
        if action == "read":
            store.get_bytes(bucket, key)
        elif action == "write":
            store.put_bytes(bucket, f"access-test/{uuid.uuid4().hex}", b"probe")
        else:
            store.list(bucket, "access-test/")
        return True
    except AccessDenied:
        return False


def test_access_matrix_is_enforced_by_the_object_store(stack):
    policy = load_policy()
    admin = store_for("stack-admin", stack)
    key = "access-test/seed"
    for bucket in policy.buckets:
        admin.put_bytes(bucket, key, b"seed")
    mismatches, checked = [], 0
    for (role, bucket, action), expected in policy.matrix().items():
        got = _attempt(store_for(role, stack), bucket, action, key)
        checked += 1
        if got != expected:
            mismatches.append((role, bucket, action, expected, got))
    assert checked == 5 * 6 * 3
    assert mismatches == []


def test_a_wrong_secret_is_refused_with_a_clear_message(stack):
    from minio import Minio

    good = load_credentials(stack, "data-engineer")
    bad = Credentials("data-engineer", good.access_key, good.secret_key[::-1])
    client = Minio(
        stack.s3_address, access_key=bad.access_key, secret_key=bad.secret_key, secure=False, http_client=_http_client()
    )
    store = ObjectStore(client, "data-engineer", stack)
    with pytest.raises(AccessDenied, match="refused the credentials of role 'data-engineer'.*SignatureDoesNotMatch"):
        store.list("raw")


def test_generated_credentials_are_private_files(stack):
    files = list(stack.credentials_dir.glob("*.json"))
    assert {f.stem for f in files} >= set(load_policy().roles)
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    s3_config = stack.service_dir("s3") / "s3.json"
    assert stat.S_IMODE(os.stat(s3_config).st_mode) == 0o600


def test_denied_action_names_role_bucket_and_policy(stack):
    with pytest.raises(AccessDenied) as info:
        store_for("data-scientist", stack).get_bytes("raw", "anything.csv")
    msg = str(info.value)
    assert "data-scientist" in msg and "s3://raw/anything.csv" in msg and "policy.yaml" in msg
