"""Conditional writes against the embedded SeaweedFS: create-only (``If-None-Match: *``) and
replace-if-unchanged (``If-Match``) are enforced by the store and sent as headers, never as metadata."""

from __future__ import annotations

import uuid

import pytest

from kfrelease.access.policy import load_policy, packaged_roles
from kfrelease.errors import AccessDenied, Conflict, StorageError
from kfrelease.storage import store_for

pytestmark = pytest.mark.integration


def test_create_only_and_replace_if_unchanged_are_enforced_by_the_store(stack):
    store = store_for("pipeline", stack)
    key = f"storage-test/{uuid.uuid4().hex}.json"
    first = store.put_bytes("models", key, b"one", if_none_match=True)
    assert first == store.stat("models", key).etag
    with pytest.raises(Conflict, match="precondition failed"):
        store.put_bytes("models", key, b"two", if_none_match=True)
    assert store.get_bytes("models", key) == b"one"

    second = store.put_bytes("models", key, b"two", if_match=first)
    assert second != first and store.get_bytes("models", key) == b"two"
    with pytest.raises(Conflict):  # the ETag it was read at is no longer the object's
        store.put_bytes("models", key, b"three", if_match=first)
    assert store.get_bytes("models", key) == b"two"

    admin = store_for("stack-admin", stack)
    stat = admin.client.stat_object(admin.bucket("models"), key)
    assert not [h for h in stat.metadata if h.lower().startswith("x-amz-meta-")], stat.metadata


def test_a_conditional_write_the_role_may_not_do_is_access_denied(stack):
    with pytest.raises(AccessDenied, match="data-scientist"):
        store_for("data-scientist", stack).put_bytes("raw", f"t/{uuid.uuid4().hex}", b"x", if_none_match=True)


def test_a_role_the_access_policy_does_not_name_is_refused_with_the_roles_it_names(stack):
    with pytest.raises(StorageError, match=r"unknown role 'data-scienist'; roles are .*data-scientist"):
        store_for("data-scienist", stack)
    assert set(packaged_roles()) == set(load_policy().roles) and "pipeline" in packaged_roles()
