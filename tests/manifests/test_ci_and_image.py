"""The CI workflow template and the Dockerfile agree with the manifests. (Neither GitHub Actions nor a
container build can run on this machine: these tests check the files themselves.)"""

import re
from pathlib import Path

import pytest
import yaml

from kfrelease.k8s.environments import CI_SERVICE_ACCOUNT, RELEASE_NS
from kfrelease.k8s.render.eks import CI_ROLE
from kfrelease.k8s.render.workloads import HTTP_PORT

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "ci" / "github" / "kfrelease-trigger.yaml"
TRAIN_WORKFLOW = REPO / "ci" / "github" / "kfrelease-train.yaml"


def test_workflow_triggers_on_push_to_main_and_never_cancels_a_run():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as a boolean
    assert on == {"push": {"branches": ["main"]}}
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert wf["permissions"]["id-token"] == "write"
    assert set(wf["jobs"]) == {"trigger"} and "steps" not in wf["jobs"]["trigger"]  # only the platform's workflow
    train = yaml.safe_load(TRAIN_WORKFLOW.read_text())
    assert set(train[True] if True in train else train["on"]) == {"workflow_call"}
    steps = train["jobs"]["trigger"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert 'kfrelease" trigger --repo model --commit "$GITHUB_SHA"' in runs and "--kfp-host" in runs
    assert "--audience pipelines.kubeflow.org" in runs  # the only audience the m2m RequestAuthentication accepts
    aws = next(s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials"))
    assert aws["with"]["role-to-assume"] == _PER_ENVIRONMENT.format("role_arn")
    assert wf["jobs"]["trigger"]["with"] == {"environment": "production"}
    assert train["env"]["KFRELEASE_NAMESPACE"] == RELEASE_NS
    assert train["env"]["KFRELEASE_SERVICE_ACCOUNT"] == CI_SERVICE_ACCOUNT
    for path in (WORKFLOW, TRAIN_WORKFLOW):
        assert "secrets." not in path.read_text(), "the workflows must not need stored secrets"


_PER_ENVIRONMENT = "${{{{ fromJSON(env.PLATFORM_ENVIRONMENTS)[env.KFRELEASE_ENVIRONMENT].{} }}}}"


def test_the_reusable_workflow_takes_no_endpoint_from_its_caller():
    """Review 4 R1: kfrelease-train.yaml took `kfp-host`, the role ARN, cluster, registry and bucket prefix as
    `workflow_call` inputs, chosen by the caller workflow that lives in the model repository; the CI role's trust
    policy pins the workflow file (job_workflow_ref), not the values passed to it. A merge that set
    `kfp-host: https://collector.example/` received `Authorization: Bearer <kfrelease-ci token>` (valid 1 h) on
    kfp.Client's first call (kfrelease/kfp/submit.py), and that token creates any run with an inline spec
    (kubeflow/pipelines 2.16.0 backend/src/apiserver/server/run_server.go createRun: `runs create` alone; the run
    then executes as default-editor, kubeflow/manifests v1.11.0 applications/pipeline/upstream/base/installs/
    multi-user/api-service/params.env DEFAULTPIPELINERUNNERSERVICEACCOUNT). Now the caller names only an
    environment; every endpoint and identity is a constant of the platform's file equal to environments.yaml."""
    import json

    from kfrelease.k8s.render.tree import Sources

    text = TRAIN_WORKFLOW.read_text()
    train = yaml.safe_load(text)
    assert _on(train)["workflow_call"]["inputs"] == {"environment": {"type": "string", "required": True}}
    # the only use of an input: the environment's name, which selects a row of the file's own table
    assert re.findall(r"\binputs\.[\w-]+", text) == ["inputs.environment"]
    assert train["env"]["KFRELEASE_ENVIRONMENT"] == "${{ inputs.environment }}"
    table = json.loads(train["env"]["PLATFORM_ENVIRONMENTS"])
    envs = Sources.load().envs.environments
    assert set(table) == set(envs)
    for name, env in envs.items():
        assert table[name] == {
            "region": env.region,
            "role_arn": env.role_arn(CI_ROLE),
            "cluster": env.cluster,
            "kfp_host": f"https://{env.kubeflow_host}/pipeline",
            "registry": env.registry,
            "bucket_prefix": env.bucket_prefix,
            "image_digest": env.image_digest,  # the release steps are admitted on this image only (review 4 R5)
        }, name
    steps = train["jobs"]["trigger"]["steps"]
    last = steps[-1]["env"]
    for var, key in (
        ("KFP_HOST", "kfp_host"),
        ("EKS_CLUSTER", "cluster"),
        ("AWS_REGION", "region"),
        ("REGISTRY", "registry"),
        ("KFRELEASE_S3_REGION", "region"),
        ("KFRELEASE_BUCKET_PREFIX", "bucket_prefix"),
        ("IMAGE_DIGEST", "image_digest"),
    ):
        assert last[var] == _PER_ENVIRONMENT.format(key), var
        assert var not in train["env"]  # set once, in the step that uses it
    assert '--kfp-host "$KFP_HOST"' in steps[-1]["run"]
    assert '[ "$digest" = "$IMAGE_DIGEST" ] ||' in steps[-1]["run"]  # ECR's tag resolves to the pinned digest
    # an unknown name stops the job in its first step, before anything is installed or assumed
    assert "has($name)" in steps[0]["run"] and "exit 1" in steps[0]["run"]
    caller = yaml.safe_load(WORKFLOW.read_text())["jobs"]["trigger"]["with"]
    assert set(caller) == {"environment"} and caller["environment"] in envs


def test_the_ci_role_trusts_only_the_platforms_reusable_workflow_at_its_release_tag():
    """Finding: the CI role trusted any workflow on main of the model repository, and the job installed whatever
    KFRELEASE_PACKAGE the model repository named: whoever could merge could run their code with the role. The
    role now trusts one platform-owned reusable workflow at the environment's release tag, which pins the
    package itself; the model repository's workflow only calls it."""
    from kfrelease.k8s.render.eks import ci_workflow_ref, prerequisites_template
    from kfrelease.k8s.render.tree import Sources

    src = Sources.load()
    env = src.envs.environments["production"]
    template = prerequisites_template(env, src.policy, src.envs.team, [src.spec.model])
    trust = template["Resources"]["CIRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Condition"]
    ref = ci_workflow_ref(src.envs.team, env)
    assert trust["StringEquals"]["token.actions.githubusercontent.com:job_workflow_ref"] == ref
    assert (
        ref == f"{src.envs.team.platform_repository}/.github/workflows/kfrelease-train.yaml@refs/tags/v{env.image_tag}"
    )
    caller = yaml.safe_load(WORKFLOW.read_text())["jobs"]["trigger"]["uses"]
    assert caller.replace("@v", "@refs/tags/v").startswith(src.envs.team.platform_repository)
    assert caller.endswith(f"/.github/workflows/kfrelease-train.yaml@v{env.image_tag}")
    train = yaml.safe_load(TRAIN_WORKFLOW.read_text())
    assert train["env"]["KFRELEASE_VERSION"] == env.image_tag
    assert "inputs." not in train["env"]["KFRELEASE_PACKAGE"] and train["env"]["KFRELEASE_PACKAGE"].endswith(
        f"@v{env.image_tag}"
    )
    assert "package" not in str((train[True] if True in train else train["on"])["workflow_call"]["inputs"])


def test_dockerfile_builds_the_project_and_workspace_images_without_secrets():
    text = (REPO / "Dockerfile").read_text()
    stages = [line.split()[-1] for line in text.splitlines() if line.startswith("FROM ")]
    assert stages == ["spark-dist", "project", "workspace", "spark"]  # spark-dist: only copied from
    # the predictor serves every flavour (artifact.model_formats(): xgboost and lightgbm need the boosters extra)
    assert 'pip install -c constraints.txt ".[boosters]"' in text
    assert "jupyterlab-git==" in text
    assert "USER 1000" in text  # numeric: KServe's runAsNonRoot can verify it
    assert f"EXPOSE {HTTP_PORT}" in text
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for word in ("SECRET", "AWS_ACCESS_KEY", "ARG TOKEN", "ENV TOKEN"):
        assert word not in instructions.upper(), word
    for folder in ("kfrelease", "components", "pipelines", "serving"):
        assert f"COPY {folder} ./{folder}" in text


def test_the_spark_image_runs_the_application_file_the_spark_application_names():
    from kfrelease.k8s.render.spark import SPARK_VERSION
    from kfrelease.lake.spark import __file__ as spark_module
    from kfrelease.monitoring.spark_app import ENTRYPOINT

    text = (REPO / "Dockerfile").read_text()
    spark = text[text.index("FROM project AS spark") :]
    path = ENTRYPOINT.removeprefix("local://")
    assert f"COPY kfrelease/lake/spark.py {path}" in spark and Path(spark_module).name == "spark.py"
    assert f'"pyspark=={SPARK_VERSION}"' in spark and f"apache/spark:{SPARK_VERSION}-" in text
    assert 'ENTRYPOINT ["/opt/entrypoint.sh"]' in spark and "USER 1000" in spark
    assert "hadoop-aws-3.4.1.jar" in spark  # the Hadoop client of Spark 4.0.1's distribution


def test_every_kfrelease_process_in_the_manifests_accepts_its_arguments(built):
    """The modules the Deployments and the ServingRuntime run exist and know every flag given to them."""
    import subprocess
    import sys

    checked = 0
    for doc in built["production"]:
        spec = doc.get("spec") or {}
        pod = spec.get("template", {}).get("spec", spec) if doc["kind"] == "Deployment" else spec
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
            assert proc.returncode == 0, f"{doc['kind']} {doc['metadata']['name']}: {cmd[2]} --help: {proc.stderr}"
            for flag in (a for a in c.get("args", []) if a.startswith("--")):
                assert flag in proc.stdout, f"{cmd[2]} does not accept {flag}"
            checked += 1
    assert checked >= 3  # log sink, feedback, ServingRuntime


# --- the project image: built by CI, pinned by digest, carrying every file the library reads -------------

IMAGE_WORKFLOW = REPO / "ci" / "github" / "kfrelease-image.yaml"
PINNED = "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease@sha256:" + "d" * 64


def _on(wf: dict):
    return wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as a boolean


def test_the_image_workflow_builds_pushes_and_compiles_every_package_by_digest():
    wf = yaml.safe_load(IMAGE_WORKFLOW.read_text())
    assert _on(wf) == {"push": {"tags": ["v*"]}}  # one push per tag: the ECR repositories are tag-immutable
    assert wf["permissions"] == {"id-token": "write", "contents": "read"}
    steps = wf["jobs"]["image"]["steps"]
    by_id = {s["id"]: s for s in steps if "id" in s}
    pushes = [s for s in steps if s.get("uses", "").startswith("docker/build-push-action")]
    assert {s["with"]["target"] for s in pushes} == {"project", "workspace", "spark"}
    assert all(s["with"]["push"] is True and s["with"]["context"] == "." for s in pushes)
    assert by_id["project"]["with"]["target"] == "project"
    # the digest of the pushed project image, not its tag, is what the packages are compiled against
    assert "steps.project.outputs.digest" in by_id["pin"]["run"]
    compile_step = next(s for s in steps if "kfrelease compile" in s.get("run", ""))
    check_step = next(s for s in steps if "kfrelease manifests check --compiled" in s.get("run", ""))
    for step in (compile_step, check_step):
        assert step["env"]["KFRELEASE_IMAGE"] == "${{ steps.pin.outputs.image }}"
    assert steps.index(by_id["pin"]) < steps.index(compile_step) < steps.index(check_step)
    # every environment's registry gets the images (separate accounts)
    from kfrelease.k8s.render.tree import Sources

    envs = Sources.load().envs.environments
    matrix = {m["environment"]: m for m in wf["jobs"]["image"]["strategy"]["matrix"]["include"]}
    assert set(matrix) == set(envs)
    for name, env in envs.items():
        assert matrix[name]["registry"] == env.registry and matrix[name]["aws-role-arn"] == env.role_arn(
            "kfrelease-image-publisher"
        )
    assert wf["jobs"]["image"]["env"]["REGISTRY"] == "${{ matrix.registry }}"
    assert "secrets." not in IMAGE_WORKFLOW.read_text()


def test_the_trigger_resolves_the_image_digest_and_submits_with_it():
    wf = yaml.safe_load(TRAIN_WORKFLOW.read_text())
    last = wf["jobs"]["trigger"]["steps"][-1]["run"]
    resolve, trigger = last.index("describe-images"), last.index(" trigger --repo")
    assert resolve < trigger
    assert 'KFRELEASE_IMAGE="$REGISTRY/kfrelease@$digest"' in last[resolve : trigger + 200]  # given to that process
    assert not any("GITHUB_ENV" in s.get("run", "") for s in wf["jobs"]["trigger"]["steps"])


def _commands(run: str) -> list[str]:
    """The shell commands of a ``run:`` block, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", run)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_the_ci_job_runs_no_file_of_the_model_repository_and_holds_credentials_only_in_its_last_step():
    """Review 2 H1: the platform's job assumed the CI role and wrote the kfrelease-ci token (which may start any
    pipeline) to GITHUB_ENV for every later step, then ran `python -m pip` in the checked-out model repository
    (the working directory first on sys.path: a `pip.py` there runs instead of pip) and `kfrelease trigger`, which
    executed the merged build file. Now: install, then check out into a subdirectory, then the credentials,
    passed to the one last process; `kfrelease trigger` runs no project code
    (tests/training/test_trigger.py::test_a_cluster_trigger_submits_without_running_the_projects_code)."""
    from kfrelease.k8s.render.tree import Sources

    text = TRAIN_WORKFLOW.read_text()
    wf = yaml.safe_load(text)
    job = wf["jobs"]["trigger"]
    steps = job["steps"]
    uses = [s.get("uses", "").partition("@")[0] for s in steps]
    install = next(i for i, s in enumerate(steps) if "pip install" in s.get("run", ""))
    checkout = uses.index("actions/checkout")
    assume = uses.index("aws-actions/configure-aws-credentials")
    assert install < checkout < assume == len(steps) - 2  # the role last but one, its one user last
    # the model repository in a subdirectory, read by path; nothing runs in it; no git token left in it
    path = steps[checkout]["with"]["path"]
    assert path and path not in (".", "./") and steps[checkout]["with"]["persist-credentials"] is False
    assert all(s.get("working-directory") in (None, ".") for s in steps) and "working-directory" not in job.get(
        "defaults", {}
    ).get("run", {})
    commands = [(i, c) for i, s in enumerate(steps) for c in _commands(s.get("run", ""))]
    ((at, trigger),) = [(i, c) for i, c in commands if " trigger " in c]
    assert at == len(steps) - 1
    assert f"trigger --repo {path} " in trigger and trigger.split()[2].startswith('"$RUNNER_TEMP/kfrelease/bin/')
    # every Python process starts without the working directory on sys.path (python -P, 3.11)
    pythons = [c for i, c in commands if re.search(r"(^|/|\s)python3?\"?\s", c)]
    assert len(pythons) == 3 and all(re.search(r"python3?\"?\s+-P\s", c) for c in pythons), pythons
    assert steps[-1]["env"]["PYTHONSAFEPATH"] == "1"  # the kfrelease console script too, should it ever matter
    # the pinned package and its dependencies at the release's tag, resolved before the checkout
    env = Sources.load().envs.environments["production"]
    repo = Sources.load().envs.team.platform_repository
    assert wf["env"]["KFRELEASE_PACKAGE"] == f"kfrelease[boosters] @ git+https://github.com/{repo}@v{env.image_tag}"
    assert wf["env"]["KFRELEASE_CONSTRAINTS"] == (
        f"https://raw.githubusercontent.com/{repo}/v{env.image_tag}/constraints.txt"
    )
    assert '-c "$KFRELEASE_CONSTRAINTS" "$KFRELEASE_PACKAGE"' in steps[install]["run"]
    # no credential before the last step: the role's credentials are outputs (aws-actions/configure-aws-credentials
    # >= v4.3.1: output-env-credentials false keeps AWS_* out of the job's environment), given to the last step only
    aws = steps[assume]
    assert aws["with"]["output-env-credentials"] is False and aws["with"]["output-credentials"] is True
    assert re.search(r"configure-aws-credentials@[0-9a-f]{40}\s+# v6\.2\.3", text)  # pinned by commit
    assert "aws-session-token" in steps[-1]["env"]["AWS_SESSION_TOKEN"]
    for i, step in enumerate(steps[:-1]):
        assert "steps.aws.outputs" not in str(step), step.get("name")
        for word in ("kubectl", "aws ", "KF_PIPELINES_SA_TOKEN_PATH", "describe-images"):
            assert word not in step.get("run", ""), (step.get("name"), word)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & (
        set(wf["env"]) | set(job.get("env", {}))
    )
    # the token: minted in the last step to a file only its owner reads, given to the one process, removed on exit
    last = _commands(steps[-1]["run"])
    mint = next(c for c in last if "create token" in c)
    assert last.index("umask 077") < last.index(mint) < last.index(trigger)
    assert mint.endswith('> "$token"') and 'KF_PIPELINES_SA_TOKEN_PATH="$token"' in trigger
    assert any(c.startswith("trap ") and '"$token"' in c for c in last)
    assert not any(word in s.get("run", "") for s in steps for word in ("GITHUB_ENV", "GITHUB_OUTPUT"))


def test_python_dash_m_runs_a_module_of_the_working_directory_unless_dash_p(tmp_path):
    """Why the workflow says `python -P -m pip`: with `-m` the working directory comes first on sys.path (Python
    docs, command line, `-m`), so a `pip.py` of a checked-out repository would run instead of pip; `-P` (3.11)
    leaves it off."""
    import os
    import subprocess
    import sys

    marker = tmp_path / "ran"
    (tmp_path / "pip.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('pip.py')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    run = {"cwd": tmp_path, "env": env, "capture_output": True, "timeout": 120}
    assert subprocess.run([sys.executable, "-P", "-m", "pip", "--version"], check=False, **run).returncode == 0
    assert not marker.exists()
    subprocess.run([sys.executable, "-m", "pip", "--version"], check=False, **run)
    assert marker.read_text() == "pip.py"


def test_the_image_is_resolved_when_a_package_is_compiled_not_when_components_are_imported(tmp_path, monkeypatch):
    """components/base.py fixes KFP's base_image at import; compile_package writes the image of the moment."""
    from kfrelease.images.project import compile_package, executors
    from kfrelease.pipelines.training_pipeline import (
        training_pipeline,  # imported before the env is set
    )

    for image in (PINNED, PINNED.replace("d" * 64, "e" * 64)):
        monkeypatch.setenv("KFRELEASE_IMAGE", image)
        package = next(yaml.safe_load_all(compile_package(training_pipeline, tmp_path / "p.yaml").read_text()))
        containers = executors(package)
        assert len(containers) >= 5
        for name, container in containers.items():
            assert container["image"] == image, name
            assert {"name": "KFRELEASE_IMAGE", "value": image} in container["env"], name


def test_a_cluster_submission_refuses_an_image_not_named_by_digest(monkeypatch):
    from kfrelease.errors import ConfigError
    from kfrelease.kfp.submit import submit_run
    from kfrelease.pipelines.release_pipeline import release_pipeline

    for image in ("", "111111111111.dkr.ecr.eu-west-1.amazonaws.com/kfrelease:0.1.0", "kfrelease@sha256:abc"):
        monkeypatch.setenv("KFRELEASE_IMAGE", image)
        # port 9 (discard) would fail the connection: the refusal comes first, nothing is sent
        with pytest.raises(ConfigError, match="does not name the project image by digest"):
            submit_run("http://127.0.0.1:9", release_pipeline, {}, run_name="r", experiment="e")


def _dockerfile_copies() -> set[str]:
    """Sources of the project stage's COPY instructions (before the first RUN pip install)."""
    sources = set()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            sources.update(parts[1:-1])
    return sources


def test_the_dockerfile_copies_every_folder_the_wheel_is_built_from():
    import ast

    from kfrelease.resources import RESOURCE_DIRS

    tree = ast.parse((REPO / "setup.py").read_text())
    assigned = {
        t.id: node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    assert ast.literal_eval(assigned["RESOURCE_DIRS"]) == RESOURCE_DIRS  # setup.py and the library agree
    package_dirs = set(ast.literal_eval(assigned["PACKAGE_DIR"]).values())
    needed = {"setup.py", "constraints.txt"} | package_dirs | set(RESOURCE_DIRS)
    assert needed <= _dockerfile_copies(), f"the Dockerfile does not COPY {needed - _dockerfile_copies()}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """`pip wheel .` of this checkout: what the Dockerfile's `pip install .` installs."""
    import subprocess
    import sys
    import zipfile

    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("kfrelease-*.whl")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(out / "site")
        names = set(zf.namelist())
    return out / "site", names


def test_the_wheel_carries_every_tracked_file_of_the_runtime_folders(wheel):
    import subprocess

    from kfrelease.resources import RESOURCE_DIRS

    _, names = wheel
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", *RESOURCE_DIRS], capture_output=True, text=True, check=True
    ).stdout.split()
    tracked = [f for f in tracked if (REPO / f).is_file()]  # not those deleted in the work tree
    assert len(tracked) > 40
    missing = [f for f in tracked if f"kfrelease/_resources/{f}" not in names]
    assert not missing, f"the wheel lacks {missing[:5]}"
    for module in (
        "kfrelease/components/base.py",
        "kfrelease/pipelines/training_pipeline.py",
        "kfrelease/k8s/render/inference.py",
        "kfrelease/k8s/versions.py",
    ):
        assert module in names


def test_the_installed_wheel_reads_schemas_environments_and_the_example_from_itself(wheel, tmp_path):
    """Run the readers from the unpacked wheel (first on sys.path), in a folder that is not a checkout."""
    import os
    import subprocess
    import sys

    site, _ = wheel
    code = (
        "import kfrelease, pathlib\n"
        "from kfrelease.k8s.policy.schemas import crd_index, vendored_crds\n"
        "from kfrelease.k8s.environments import MANIFESTS_DIR, load_environments\n"
        "from kfrelease.demo.project import example_dir\n"
        "from kfrelease.k8s.versions import KSERVE_VERSIONS\n"
        "root = pathlib.Path(kfrelease.__file__).parent\n"
        "for p in (vendored_crds(), MANIFESTS_DIR, example_dir()):\n"
        "    assert root in p.parents, p\n"
        "for v in KSERVE_VERSIONS:\n"
        "    assert ('serving.kserve.io', 'v1beta1', 'InferenceService') in crd_index(kserve=v), v\n"
        "assert load_environments().environments\n"
        "print('ok', root)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok " + str(site)), proc.stdout
