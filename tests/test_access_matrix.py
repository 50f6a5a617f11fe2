"""Every role x bucket x action, tried against the running SeaweedFS: allowed exactly where the policy says."""

import dataclasses
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
    assert checked == 6 * 7 * 3
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


def _raw_put(stack, role: str, path: str) -> int:
    """A signed PUT of ``path`` sent as it is (the SDK refuses dot segments before sending): the status."""
    import datetime as dt
    import hashlib
    import http.client
    from urllib.parse import urlsplit

    from minio.credentials import Credentials as SigningCredentials
    from minio.signer import sign_v4_s3
    from minio.time import to_amz_date

    creds = load_credentials(stack, role)
    host, port = stack.s3_address.split(":")
    body, now = b"probe", dt.datetime.now(dt.UTC).replace(tzinfo=None)
    sha = hashlib.sha256(body).hexdigest()
    headers = {"Host": stack.s3_address, "x-amz-content-sha256": sha, "x-amz-date": to_amz_date(now)}
    headers = sign_v4_s3(
        method="PUT",
        url=urlsplit(f"http://{stack.s3_address}{path}"),
        region=stack.s3_region,
        headers=headers,
        credentials=SigningCredentials(creds.access_key, creds.secret_key),
        content_sha256=sha,
        date=now,
    )
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("PUT", path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_data_scientist_registers_experiments_and_can_stage_nothing(stack):
    """By identity, not by convention: the data-scientist's credentials register an experiment (claim, model
    file, entry, rejected event) and are refused every write of the released registry: its entries, its stage
    events (staging, production), model artifacts and run records."""
    from kfrelease.registry import EXPERIMENTS, ModelRegistry, TrainedModel

    model = f"ds-exp-{uuid.uuid4().hex[:6]}"
    ds = store_for("data-scientist", stack)
    first = TrainedModel(
        name=model,
        tag=1,
        spec_fingerprint="a",
        dataset="d",
        dataset_version="1",
        commit="experiment",
        run_id="",
        metrics={},
        verdict={"passed": True},
        input_schema=[],
        target="y",
        model_bytes=b"m",
    )
    worse = dataclasses.replace(first, spec_fingerprint="b", verdict={"passed": False, "reasons": ["worse"]})
    experiments = ModelRegistry(ds, EXPERIMENTS)
    passed = experiments.register(first).version
    rejected = experiments.register(worse).version
    assert (passed.version, passed.stage, rejected.stage) == ("E1.1.0", None, "rejected")
    assert ModelRegistry(store_for("pipeline", stack), EXPERIMENTS).get(model, "E1.1.0").entry["commit"] == "experiment"

    released = ModelRegistry(ds)
    with pytest.raises(AccessDenied, match="data-scientist"):
        released.register(first)
    version = ModelRegistry(store_for("pipeline", stack)).register(first).version.version
    for stage in ("staging", "production"):
        with pytest.raises(AccessDenied, match="may not write"):
            released.set_stage(model, version, stage, "a data scientist", "by hand")
    assert released.current(model, "staging") is None and released.current(model, "production") is None
    for key in (
        f"registry/{model}/versions/{version}/entry.json",
        f"artifacts/{model}/{version}/model.joblib",
        "runs/train-forged/run.json",
        f"experimentsX/{model}",
    ):
        with pytest.raises(AccessDenied):
            ds.put_bytes("models", key, b"forged")
        with pytest.raises(AccessDenied):
            ds.delete("models", key)
    # a key that only looks like it is under the prefix is refused as a request, before any identity check
    assert _raw_put(stack, "data-scientist", f"/models/experiments/../registry/{model}/evil") == 400
    assert _raw_put(stack, "data-scientist", f"/models/experiments/{model}/raw-probe") == 200
    assert store_for("pipeline", stack).stat("models", f"registry/{model}/evil") is None
