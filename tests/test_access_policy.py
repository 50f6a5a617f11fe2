"""The access policy is the one source of truth; the IAM policies rendered from it grant exactly its matrix."""

import json

import pytest

from kfrelease.access.policy import ACTIONS, load_policy
from kfrelease.access.render import iam_policies, iam_policy
from kfrelease.errors import ConfigError
from tests.iam_eval import allowed


def test_every_role_and_bucket_of_the_design_is_declared():
    policy = load_policy()
    assert set(policy.buckets) == {"raw", "curated", "models", "pipeline-root", "inference-logs", "feedback"}
    assert set(policy.roles) == {"data-engineer", "data-scientist", "pipeline", "serving", "monitoring"}


def test_only_data_engineers_read_raw_and_write_curated():
    policy = load_policy()
    readers_of_raw = {r for r in policy.roles if policy.allows(r, "raw", "read")}
    writers_of_curated = {r for r in policy.roles if policy.allows(r, "curated", "write")}
    assert readers_of_raw == {"data-engineer"}
    assert writers_of_curated == {"data-engineer"}
    assert policy.allows("data-scientist", "curated", "read")


def test_only_the_pipeline_identity_writes_the_registry_so_only_its_runs_can_stage():
    """A stage is an event object in ``models``: only the pipeline role may write it. On the cluster only runs
    in the release namespace run as that role, and only the CI service account creates them
    (tests/manifests/test_rbac.py); a data scientist's notebook and workspace runs hold the data-scientist role."""
    policy = load_policy()
    assert {r for r in policy.roles if policy.allows(r, "models", "write")} == {"pipeline"}
    assert policy.allows("data-scientist", "models", "read") and not policy.allows("data-scientist", "models", "write")


@pytest.mark.parametrize("prefix", ["", "acme-ml-"])
def test_iam_policies_grant_exactly_the_access_matrix(prefix):
    policy = load_policy()
    docs = iam_policies(policy, bucket_prefix=prefix)
    checked = 0
    for (role, bucket, action), expected in policy.matrix().items():
        assert allowed(docs[role], prefix + bucket, action) == expected, (role, bucket, action)
        checked += 1
    assert checked == len(policy.roles) * len(policy.buckets) * len(ACTIONS)


def test_iam_policy_is_least_privilege_json():
    doc = iam_policy(load_policy(), "data-scientist")
    json.dumps(doc)  # valid JSON
    actions = {a for st in doc["Statement"] for a in st["Action"]}
    assert actions == {"s3:GetObject", "s3:ListBucket"}
    assert all(st["Effect"] == "Allow" and "*" not in st["Action"] for st in doc["Statement"])
    assert all(r != "*" and r != "arn:aws:s3:::*" for st in doc["Statement"] for r in st["Resource"])


def test_a_policy_naming_an_unknown_bucket_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("buckets: {raw: x}\nroles:\n  analyst:\n    grants: {warehouse: [read]}\n")
    with pytest.raises(ConfigError, match="bucket 'warehouse'.*not under 'buckets'"):
        load_policy(path)


def test_a_policy_with_an_unknown_action_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("buckets: {raw: x}\nroles:\n  analyst:\n    grants: {raw: [read, delete]}\n")
    with pytest.raises(ConfigError, match="unknown action"):
        load_policy(path)


def test_access_render_cli_prints_iam_json(run_cli):
    proc = run_cli("access", "render", "--target", "aws", "--bucket-prefix", "acme-", check=True)
    docs = json.loads(proc.stdout)
    assert set(docs) == set(load_policy().roles)
    assert allowed(docs["data-engineer"], "acme-raw", "read")
    assert not allowed(docs["data-scientist"], "acme-raw", "read")
