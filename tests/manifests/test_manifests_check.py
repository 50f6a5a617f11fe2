"""`kfrelease manifests check` finds each class of problem of issue 14 in a broken copy of manifests/, and
nothing in the committed tree."""

import shutil
import subprocess
import sys

import pytest
import yaml

from kfrelease.images.project import pin_package
from kfrelease.k8s.environments import MANIFESTS_DIR
from kfrelease.k8s.policy.checks import CHECKS, CheckContext, run_checks
from kfrelease.k8s.render.platform import RELEASE_DRIVER

PINNED = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease@sha256:" + "f" * 64


@pytest.fixture
def broken(tmp_path):
    """A copy of manifests/ to break."""
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS_DIR, root)
    return root


def classes(root, only=None, **kwargs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in run_checks(CheckContext(root, **kwargs), only):
        out.setdefault(f.check, []).append(str(f))
    return out


def _edit(path, fn):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    path.write_text(yaml.safe_dump_all(fn(docs), sort_keys=False))


def test_the_committed_manifests_have_no_findings():
    assert run_checks(CheckContext(MANIFESTS_DIR)) == []


def test_each_finding_class_is_reported_on_a_broken_input(broken, tmp_path):
    # release-owned objects back in the re-applied overlay (the overlay of steps 6/9 would reset a release)
    boot = (broken / "bootstrap" / "production" / "release.yaml").read_text()
    (broken / "base" / "serving.yaml").write_text((broken / "base" / "serving.yaml").read_text() + "---\n" + boot)
    # no default StorageClass, and no EBS CSI add-on
    _edit(broken / "base" / "cluster.yaml", lambda docs: [d for d in docs if d["kind"] != "StorageClass"])
    _edit(
        broken / "eks" / "staging" / "cluster.yaml",
        lambda docs: [{**docs[0], "addons": [a for a in docs[0]["addons"] if a["name"] != "aws-ebs-csi-driver"]}],
    )

    # a document the declared KServe version (0.20.0) rejects: Standard mode without the canary rules
    def bad_isvc(docs):
        isvc = next(d for d in docs if d["kind"] == "InferenceService")
        isvc["spec"]["predictor"]["scaleMetric"] = "cpu"  # Serverless: only concurrency/rps
        return docs

    _edit(broken / "bootstrap" / "staging" / "release.yaml", bad_isvc)
    # CI could not authenticate: the default m2m-dex-only overlay
    k = broken / "eks" / "production" / "kubeflow" / "oauth2-proxy" / "kustomization.yaml"
    k.write_text(k.read_text().replace("m2m-dex-and-eks", "m2m-dex-only"))
    # a compiled package on a tag, and one whose steps would hand on another image
    compiled = tmp_path / "compiled"
    compiled.mkdir()
    package = {
        "deploymentSpec": {
            "executors": {
                "exec-train": {"container": {"image": "kfrelease:0.1.0"}},
                "exec-evaluate": {"container": {"image": PINNED}},
            }
        }
    }
    (compiled / "training_pipeline.yaml").write_text(yaml.safe_dump(package))
    good = pin_package({"deploymentSpec": {"executors": {"exec-x": {"container": {"image": "x"}}}}}, PINNED)
    good["deploymentSpec"]["executors"]["exec-x"]["container"]["env"][0]["value"] = "other@sha256:" + "0" * 64
    (compiled / "release_pipeline.yaml").write_text(yaml.safe_dump(good))

    # the release driver may not delete the staging InferenceService (the 403 after production moved)
    def no_delete(docs):
        for d in docs:
            if d["kind"] == "Role" and d["metadata"]["name"] == RELEASE_DRIVER:
                d["rules"] = [r for r in d["rules"] if "delete" not in r["verbs"]]
        return docs

    for part in ("platform.yaml", "serving.yaml"):
        _edit(broken / "base" / part, no_delete)

    found = classes(broken, compiled=compiled, image=PINNED)
    assert set(found) == {n for n, _ in CHECKS}, found
    assert any("serving.yaml" in f for f in found["stale"])
    assert any(
        "InferenceService kfrelease-serving/diabetes-progression" in f for f in found["release-owned-in-overlay"]
    )
    assert any("0 default StorageClass" in f for f in found["storage-class"])
    assert any("aws-ebs-csi-driver" in f for f in found["storage-class"])
    assert any("bootstrap/staging" in f and "scaleMetric 'cpu' is rejected" in f for f in found["schema"])
    assert any("m2m-dex-and-eks" in f for f in found["m2m-auth"])
    assert any("exec-train" in f and "not named by digest" in f for f in found["image-digest"])
    assert any("exec-x" in f and "KFRELEASE_IMAGE" in f for f in found["image-digest"])
    assert not any("exec-evaluate: image" in f for f in found["image-digest"])
    assert any("delete" in f and "staging" in f for f in found["release-path"]), found["release-path"]


def test_documents_are_judged_by_the_kserve_version_the_environment_declares(broken):
    """deploymentMode Standard is fine on 0.20 and unknown on 0.15.2 (it falls back to Serverless)."""

    def standard(docs):
        isvc = next(d for d in docs if d["kind"] == "InferenceService")
        isvc["metadata"].setdefault("annotations", {})["serving.kserve.io/deploymentMode"] = "Standard"
        isvc["spec"]["predictor"].pop("scaleMetric", None)
        return docs

    _edit(broken / "bootstrap" / "staging" / "release.yaml", standard)
    assert "schema" not in classes(broken, only=["schema"])  # both environments declare 0.20.0
    text = (broken / "sources" / "environments.yaml").read_text()
    (broken / "sources" / "environments.yaml").write_text(
        text.replace('kserve_version: "0.20.0"', 'kserve_version: "0.15.2"', 1)
    )
    (finding,) = classes(broken, only=["schema"])["schema"]
    assert "bootstrap/staging" in finding and "KServe 0.15.2" in finding and "falls back to Serverless" in finding


def test_an_issuer_that_is_not_the_clusters_and_a_missing_ingress_are_found(broken):
    text = (broken / "sources" / "environments.yaml").read_text()
    text = text.replace(
        "oidc_issuer: https://oidc.eks.eu-west-1.amazonaws.com/id/",
        "oidc_issuer: https://kubernetes.default.svc/id/",
        1,
    )
    (broken / "sources" / "environments.yaml").write_text(text)
    _edit(broken / "base" / "cluster.yaml", lambda docs: [d for d in docs if d["kind"] != "Ingress"])
    found = classes(broken, only=["m2m-auth"])
    assert any("oidc_issuer" in f and "staging" in f for f in found["m2m-auth"])
    assert any("no Ingress for kubeflow_host" in f for f in found["m2m-auth"])


def test_the_cli_prints_each_finding_and_exits_non_zero(broken):
    _edit(broken / "base" / "cluster.yaml", lambda docs: [d for d in docs if d["kind"] != "StorageClass"])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kfrelease.cli",
            "manifests",
            "check",
            "--dir",
            str(broken),
            "--only",
            "storage-class",
            "--only",
            "stale",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "[storage-class] overlays/production" in proc.stdout and "[stale]" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].count("finding(s)") == 1
    proc = subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", "manifests", "check", "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0 and "unknown check(s) ['nope']" in proc.stderr


def test_a_client_namespace_sidecar_without_the_serving_namespace_is_found(broken):
    """Review eks2 H2: ``eks/<env>/mesh-clients.yaml`` is what lets a ``mesh_clients`` namespace reach the models
    with its identity. Dropping ``kfrelease-serving/*`` from it is a release-path finding (the client's requests
    arrive in plain text), and a field Istio's Sidecar CRD does not have is a schema finding."""
    path = broken / "eks" / "staging" / "mesh-clients.yaml"

    def drop_serving(docs):
        for d in docs:
            d["spec"]["egress"][0]["hosts"].remove("kfrelease-serving/*")
        return docs

    _edit(path, drop_serving)
    found = classes(broken, only=["schema", "release-path"])
    assert "schema" not in found, found
    release = [f for f in found["release-path"] if "overlays/staging" in f]
    assert release and all("in-mesh client shop" in f and "without identity" in f for f in release), release
    assert not any("overlays/production" in f for f in found["release-path"]), found

    _edit(path, lambda docs: [{**docs[0], "spec": {**docs[0]["spec"], "egressHosts": ["kfrelease-serving/*"]}}])
    found = classes(broken, only=["schema", "release-path"])
    assert any("eks/staging/mesh-clients.yaml" in f and "egressHosts" in f for f in found["schema"]), found
    assert any("could not evaluate the mesh" in f and "egressHosts" in f for f in found["release-path"]), found
