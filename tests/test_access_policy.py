"""The access policy is the one source of truth; the IAM policies rendered from it grant exactly its matrix."""

import json

import pytest

from kfrelease.access.policy import ACTIONS, load_policy
from kfrelease.access.render import iam_policies, iam_policy
from kfrelease.errors import ConfigError
from kfrelease.registry import EXPERIMENT_ARTIFACTS, EXPERIMENTS, ModelRegistry
from tests.iam_eval import allowed

#: what an experiment writes (kfrelease.registry: claim, entry, rejected event, artifact, report) and what
#: releasing needs (the released registry's claim, entry, stage event, artifact; a run record)
EXPERIMENT_KEYS = [
    "experiments/m/claims/V1.1.0.json",
    "experiments/m/versions/V1.1.0/entry.json",
    "experiments/m/versions/V1.1.0/events/20261202T000000.000000Z-ab.json",
    "experiment-artifacts/m/V1.1.0/model.joblib",
    "experiment-artifacts/m/V1.1.0/evaluation.html",
]
RELEASE_KEYS = [
    "registry/m/claims/V1.1.0.json",
    "registry/m/versions/V1.1.0/entry.json",
    "registry/m/versions/V1.1.0/events/20261202T000000.000000Z-ab.json",  # a staging or production event
    "artifacts/m/V1.1.0/model.joblib",
    "runs/train-abc/run.json",  # a forged run record would make a notebook run a release run
    "experimentsX/m/entry.json",
    "experiments",
    "access-test/probe",
]


def test_every_role_and_bucket_of_the_design_is_declared():
    policy = load_policy()
    assert set(policy.buckets) == {
        "raw",
        "curated",
        "models",
        "pipeline-root",
        "inference-logs",
        "feedback",
        "releases",
    }
    assert set(policy.roles) == {"data-engineer", "data-scientist", "pipeline", "serving", "monitoring", "release"}


def test_only_the_release_steps_write_release_decisions():
    """Review 4 R4: the shadow gate's verdict, which the rollout step trusts, was a registry event the pipeline role
    (default-editor on a cluster) could write; now it lives in ``releases``, which only the release role writes."""
    policy = load_policy()
    assert {r for r in policy.roles if policy.allows(r, "releases", "write")} == {"release"}
    for role, doc in iam_policies(policy, "p-").items():
        assert allowed(doc, "p-releases", "write", "m/V1.2.0/shadow.json") == (role == "release"), role


def test_only_data_engineers_read_raw_and_write_curated():
    policy = load_policy()
    readers_of_raw = {r for r in policy.roles if policy.allows(r, "raw", "read")}
    writers_of_curated = {r for r in policy.roles if policy.allows(r, "curated", "write")}
    assert readers_of_raw == {"data-engineer"}
    assert writers_of_curated == {"data-engineer"}
    assert policy.allows("data-scientist", "curated", "read")


def test_only_the_feedback_service_writes_ground_truth():
    """``feedback`` is both release gates' ground truth (the shadow's and the canary's labelled pairs): only the
    feedback service's role (``serving``) may write it; a data engineer who could put or delete labels there
    could pass or fail any candidate (issue 24: data engineers could write it)."""
    policy = load_policy()
    assert {r for r in policy.roles if policy.allows(r, "feedback", "write")} == {"serving"}
    for role, doc in iam_policies(policy, "p-").items():
        assert allowed(doc, "p-feedback", "write", "model=m/date=2026-12-06/hour=10/x.parquet") == (role == "serving")
    assert policy.allows("data-engineer", "feedback", "read")  # labelled traffic is still curated from it


def test_only_the_pipeline_identity_writes_the_registry_so_only_its_runs_can_stage():
    """A stage is an event object in ``models``: only the pipeline role may write it. On the cluster only runs
    in the release namespace run as that role, and only the CI service account creates them
    (tests/manifests/test_rbac.py); a data scientist's notebook and workspace runs hold the data-scientist role."""
    policy = load_policy()
    assert {r for r in policy.roles if policy.allows(r, "models", "write")} == {"pipeline"}
    assert policy.allows("data-scientist", "models", "read") and not policy.allows("data-scientist", "models", "write")


def test_data_scientists_write_the_experiments_space_and_nothing_of_the_released_registry():
    policy = load_policy()
    assert policy.prefixes["data-scientist"] == {
        ("models", f"{EXPERIMENTS}/"): {"write"},
        ("models", f"{EXPERIMENT_ARTIFACTS}/"): {"write"},
    }
    assert all(not grants for role, grants in policy.prefixes.items() if role != "data-scientist")
    spaces = ModelRegistry(None, EXPERIMENTS)  # the keys the registry itself uses for an experiment
    assert spaces._vkey("m", "V1.1.0", "entry.json") == EXPERIMENT_KEYS[1]
    assert spaces.artifact_prefix("m", "V1.1.0") == "experiment-artifacts/m/V1.1.0/"
    for key in EXPERIMENT_KEYS:
        assert policy.allows("data-scientist", "models", "write", key), key
    for key in RELEASE_KEYS:
        assert not policy.allows("data-scientist", "models", "write", key), key
        assert policy.allows("pipeline", "models", "write", key), key


@pytest.mark.parametrize("prefix", ["", "acme-ml-"])
def test_the_rendered_iam_policy_scopes_the_experiment_writes_by_resource_arn(prefix):
    """Object actions are scoped by the resource ARN ``arn:aws:s3:::<bucket>/<prefix>*`` (no condition key;
    ``s3:prefix`` conditions apply to ListBucket only, and listing stays granted on the whole bucket)."""
    doc = iam_policy(load_policy(), "data-scientist", prefix)
    (scoped,) = [st for st in doc["Statement"] if "s3:PutObject" in st["Action"]]
    assert scoped["Resource"] == [
        f"arn:aws:s3:::{prefix}models/experiment-artifacts/*",
        f"arn:aws:s3:::{prefix}models/experiments/*",
    ]
    models = f"{prefix}models"
    for key in EXPERIMENT_KEYS:
        assert allowed(doc, models, "write", key) and allowed(doc, models, "delete", key), key
    for key in RELEASE_KEYS:
        assert not allowed(doc, models, "write", key) and not allowed(doc, models, "delete", key), key
        assert allowed(doc, models, "read", key)
    assert allowed(doc, models, "list") and not allowed(doc, f"{prefix}curated", "write", "experiments/x")


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
    writes = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    unscoped = {a for st in doc["Statement"] if not st["Sid"].endswith("Prefixes") for a in st["Action"]}
    assert unscoped == {"s3:GetObject", "s3:ListBucket"}
    assert all(
        st["Resource"][0].startswith("arn:aws:s3:::models/experiment")
        for st in doc["Statement"]
        if writes & set(st["Action"])
    )
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


@pytest.mark.parametrize(
    ("grant", "message"),
    [
        ("models/experiments/: [read, write]", r"\['read'\] cannot be scoped to a key prefix"),
        ("models/experiments/: [list]", r"\['list'\] cannot be scoped"),
        ("models/experiments: [write]", "ending in '/'"),
        ("models/exp*/: [write]", "no wildcards"),
        ("models/../raw/: [write]", "plain path segments"),
        ("warehouse/x/: [write]", "bucket 'warehouse'.*not under 'buckets'"),
    ],
)
def test_a_prefix_grant_is_a_write_under_a_plain_prefix(tmp_path, grant, message):
    path = tmp_path / "policy.yaml"
    path.write_text(f"buckets: {{models: x, raw: y}}\nroles:\n  analyst:\n    grants:\n      {grant}\n")
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_access_render_cli_prints_iam_json(run_cli):
    proc = run_cli("access", "render", "--target", "aws", "--bucket-prefix", "acme-", check=True)
    docs = json.loads(proc.stdout)
    assert set(docs) == set(load_policy().roles)
    assert allowed(docs["data-engineer"], "acme-raw", "read")
    assert not allowed(docs["data-scientist"], "acme-raw", "read")
