"""The CI workflow template and the Dockerfile agree with the manifests. (Neither GitHub Actions nor a
container build can run on this machine: these tests check the files themselves.)"""

from pathlib import Path

import yaml

from kfrelease.k8s.eks import CI_ROLE
from kfrelease.k8s.environments import CI_SERVICE_ACCOUNT, RELEASE_NS
from kfrelease.k8s.workloads import HTTP_PORT

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "ci" / "github" / "kfrelease-trigger.yaml"


def test_workflow_triggers_on_push_to_main_and_never_cancels_a_run():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = (
        wf[True] if True in wf else wf["on"]
    )  # YAML 1.1 reads the key `on` as a boolean
    assert on == {"push": {"branches": ["main"]}}
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert wf["permissions"]["id-token"] == "write"
    steps = wf["jobs"]["trigger"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'kfrelease trigger --commit "$GITHUB_SHA"' in runs and "--kfp-host" in runs
    aws = next(
        s
        for s in steps
        if s.get("uses", "").startswith("aws-actions/configure-aws-credentials")
    )
    assert aws["with"]["role-to-assume"] == "${{ env.AWS_ROLE_ARN }}"
    assert wf["env"]["AWS_ROLE_ARN"].endswith(f":role/{CI_ROLE}")
    assert wf["env"]["KFRELEASE_NAMESPACE"] == RELEASE_NS
    assert wf["env"]["KFRELEASE_SERVICE_ACCOUNT"] == CI_SERVICE_ACCOUNT
    assert "secrets." not in WORKFLOW.read_text(), (
        "the workflow must not need stored secrets"
    )


def test_dockerfile_builds_the_project_and_workspace_images_without_secrets():
    text = (REPO / "Dockerfile").read_text()
    stages = [
        line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")
    ]
    assert stages == ["project", "workspace"]
    assert "pip install -c constraints.txt ." in text
    assert "jupyterlab-git==" in text
    assert "USER 1000" in text  # numeric: KServe's runAsNonRoot can verify it
    assert f"EXPOSE {HTTP_PORT}" in text
    instructions = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    )
    for word in ("SECRET", "AWS_ACCESS_KEY", "ARG TOKEN", "ENV TOKEN"):
        assert word not in instructions.upper(), word
    for folder in ("kfrelease", "components", "pipelines", "serving"):
        assert f"COPY {folder} ./{folder}" in text


def test_every_kfrelease_process_in_the_manifests_accepts_its_arguments(built):
    """The modules the Deployments and the ServingRuntime run exist and know every flag given to them."""
    import subprocess
    import sys

    checked = 0
    for doc in built["production"]:
        spec = doc.get("spec") or {}
        pod = (
            spec.get("template", {}).get("spec", spec)
            if doc["kind"] == "Deployment"
            else spec
        )
        for c in pod.get("containers") or []:
            cmd = c.get("command") or []
            if cmd[:2] != ["python", "-m"] or not cmd[2].startswith("kfrelease."):
                continue
            proc = subprocess.run(
                [sys.executable, "-m", cmd[2], "--help"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert proc.returncode == 0, (
                f"{doc['kind']} {doc['metadata']['name']}: {cmd[2]} --help: {proc.stderr}"
            )
            for flag in (a for a in c.get("args", []) if a.startswith("--")):
                assert flag in proc.stdout, f"{cmd[2]} does not accept {flag}"
            checked += 1
    assert checked >= 3  # log sink, feedback, ServingRuntime
