"""The eksctl ClusterConfigs validate against eksctl's own JSON schema (vendored, v0.230) and the
CloudFormation templates pass cfn-lint (the AWS resource specifications it bundles)."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from kfrelease.k8s.environments import MANIFESTS_DIR

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "eksctl" / "schema.json"


@pytest.fixture(scope="module")
def eksctl_validator():
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_cluster_configs_match_the_eksctl_schema(sources, eksctl_validator):
    for name in sources.envs.environments:
        doc = yaml.safe_load((MANIFESTS_DIR / "eks" / name / "cluster.yaml").read_text())
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in eksctl_validator.iter_errors(doc)]
        assert errors == [], f"{name}: {errors[:5]}"


def test_the_eksctl_schema_catches_a_misspelt_field(sources, eksctl_validator):
    doc = yaml.safe_load((MANIFESTS_DIR / "eks" / "staging" / "cluster.yaml").read_text())
    doc["managedNodeGroups"][0]["maxSiz"] = 3
    assert list(eksctl_validator.iter_errors(doc))


def cfn_lint(*paths):
    code = "import sys; from cfnlint.runner import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_cloudformation_templates_pass_cfn_lint(sources, tmp_path):
    paths = [MANIFESTS_DIR / "eks" / name / "prerequisites.yaml" for name in sources.envs.environments]
    proc = cfn_lint(*paths)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and cfn-lint does fail on a broken template.
    tpl = yaml.safe_load(paths[0].read_text())
    tpl["Resources"]["BucketRaw"]["Properties"]["VersioningConfiguration"] = {"Status": "Sometimes"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tpl))
    assert cfn_lint(bad).returncode != 0


def test_no_pod_reaches_the_instance_metadata_service(sources):
    """Review eks4 R7: with eksctl's default launch template (PUT response hop limit 2: eksctl v0.230.0+5
    pkg/cfn/builder/nodegroup.go makeMetadataOptions) a pod reaches IMDS and takes the node role (ECR read of every
    repository of the account); ``disablePodIMDS`` sets the hop limit to 1 and requires IMDSv2. Every group, since
    no kfrelease pod is kept off any (the KFP task pods and the predictors have no nodeSelector); and nothing eksctl
    refuses beside it (``validation.go``: iam.withAddonPolicies, a launchTemplate)."""
    for name in sources.envs.environments:
        doc = yaml.safe_load((MANIFESTS_DIR / "eks" / name / "cluster.yaml").read_text())
        groups = doc["managedNodeGroups"]
        assert {g["name"] for g in groups} == {"system", "pipelines", "serving"}
        assert [g["name"] for g in groups if g.get("disablePodIMDS") is not True] == [], name
        assert [
            g["name"] for g in groups if "launchTemplate" in g or (g.get("iam") or {}).get("withAddonPolicies")
        ] == []
