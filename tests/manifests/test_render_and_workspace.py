"""Generated manifests are reproducible and committed current; `kfrelease workspace add` adds a data
scientist with one command (in a copy of manifests/)."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from kfrelease.k8s.environments import MANIFESTS_DIR, RELEASE_NS, SCIENCE_NS
from kfrelease.k8s.render.tree import Sources, check_tree, render_tree
from tests.iam_eval import allowed

from .conftest import kustomize, upstream_cluster_roles
from .rbac_eval import RBACModel, kfp_requester, person


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_committed_manifests_equal_the_render_of_their_sources():
    stale = check_tree(MANIFESTS_DIR)
    assert stale == [], f"run `kfrelease manifests render`: not current: {stale}"


def test_render_is_deterministic():
    assert render_tree() == render_tree()


@pytest.fixture
def copy_of_manifests(tmp_path):
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS_DIR, root)
    return root


def test_render_check_reports_an_edited_file_and_render_restores_it(copy_of_manifests):
    root = copy_of_manifests
    target = root / "overlays" / "staging" / "kustomization.yaml"
    target.write_text(target.read_text() + "# hand edit\n")
    (root / "base" / "stale.yaml").write_text("kind: Leftover\n")
    proc = cli("manifests", "render", "--dir", str(root), "--check")
    assert proc.returncode == 1 and "not current" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("manifests", "render", "--dir", str(root))
    assert proc.returncode == 0, proc.stderr
    assert not (root / "base" / "stale.yaml").exists()
    assert cli("manifests", "render", "--dir", str(root), "--check").returncode == 0


def test_workspace_add_is_one_command(copy_of_manifests):
    root = copy_of_manifests
    proc = cli("workspace", "add", "grace", "--email", "grace@example.com", "--out", str(root))
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load((root / "sources" / "workspaces" / "grace.yaml").read_text())["email"] == "grace@example.com"
    src = Sources.load(root)
    for name, env in src.envs.environments.items():
        docs = kustomize(root / "overlays" / name)
        ns = [d for d in docs if d["metadata"].get("namespace") == "ds-grace" or d["metadata"]["name"] == "ds-grace"]
        kinds = sorted(d["kind"] for d in ns)
        assert kinds == [
            "Notebook",
            "PersistentVolumeClaim",
            "PodDefault",
            "Profile",
        ], kinds
        profile = next(d for d in ns if d["kind"] == "Profile")
        assert profile["spec"]["owner"]["name"] == "grace@example.com"
        role_arn = env.role_arn("kfrelease-data-scientist-grace")
        assert profile["spec"]["plugins"][0]["spec"]["awsIamRole"] == role_arn
        notebook = next(d for d in ns if d["kind"] == "Notebook")
        pod = notebook["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "default-editor" and pod["containers"][0]["image"] == env.workspace_image
        assert notebook["metadata"]["labels"]["access-s3-data-scientist"] == "true"
        cluster = yaml.safe_load((root / "eks" / name / "cluster.yaml").read_text())
        entry = [s for s in cluster["iam"]["serviceAccounts"] if s.get("roleName") == "kfrelease-data-scientist-grace"]
        assert entry and entry[0]["metadata"] == {
            "name": "default-editor",
            "namespace": "ds-grace",
        }
        # the workspace's runs (a notebook's experiments) cannot write the registry, so they can never stage
        s3 = entry[0]["attachPolicy"]
        models = f"{env.bucket_prefix}models"
        assert allowed(s3, models, "read") and not allowed(s3, models, "write")
        rbac = RBACModel(docs + upstream_cluster_roles())
        grace = kfp_requester(person("grace@example.com"))
        assert rbac.allowed(grace, "get", "pipelines.kubeflow.org", "runs", RELEASE_NS)
        assert not rbac.allowed(grace, "terminate", "pipelines.kubeflow.org", "runs", RELEASE_NS)
        assert not rbac.allowed(grace, "create", "pipelines.kubeflow.org", "runs", RELEASE_NS)
        assert rbac.allowed(grace, "create", "pipelines.kubeflow.org", "runs", SCIENCE_NS)
    assert check_tree(root) == []


def test_workspace_add_refuses_bad_input_and_writes_nothing(copy_of_manifests):
    root = copy_of_manifests
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for args, message in [
        (["Bad_Name", "--email", "x@example.com"], "must be a DNS label"),
        (["bob", "--email", "not-an-email"], "is not an e-mail address"),
        (["ada", "--email", "ada2@example.com"], "already exists"),
        (["ada2", "--email", "ada@example.com"], "already has workspace"),
    ]:
        proc = cli("workspace", "add", *args, "--out", str(root))
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    proc = cli("workspace", "add", "x", "--email", "x@example.com", "--out", str(root / "nope"))
    assert proc.returncode == 1 and "not a manifests directory" in proc.stderr


def test_a_bad_source_is_refused_in_one_line_and_nothing_is_written(copy_of_manifests):
    root = copy_of_manifests
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    envs = root / "sources" / "environments.yaml"
    envs.write_text(envs.read_text().replace('account_id: "111111111111"', 'account_id: "1111"'))
    proc = cli("manifests", "render", "--dir", str(root))
    assert proc.returncode == 1 and "account_id '1111' is not 12 digits" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p != envs}
    assert after == {p: b for p, b in before.items() if p != envs}


def test_workspace_remove_takes_it_out_of_every_generated_file(copy_of_manifests):
    root = copy_of_manifests
    assert cli("workspace", "remove", "ada", "--out", str(root)).returncode == 0
    assert not (root / "base" / "workspaces" / "ada.yaml").exists()
    assert "ds-ada" not in (root / "eks" / "staging" / "cluster.yaml").read_text()
    assert not any("ds-ada" in p.read_text() for p in (root / "overlays").rglob("*.yaml"))
    proc = cli("workspace", "remove", "ada", "--out", str(root))
    assert proc.returncode == 1 and "no workspace 'ada'" in proc.stderr
