"""The IAM policies in the eksctl ClusterConfigs are exactly `kfrelease access render --target aws` (the
access matrix that tests/test_access_matrix.py enforces on the embedded SeaweedFS), bound to the service
accounts that the Kubernetes manifests annotate; the compiled pipelines use the project image and the
S3 pipeline root of the kfp-launcher ConfigMap, a bucket the pipeline role may write."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from kfrelease.k8s.environments import (
    MANIFESTS_DIR,
    PROFILE_SA,
    RELEASE_NS,
    iam_role_name,
)
from kfrelease.k8s.render.eks import PIPELINE_UI_ROLE, pipeline_ui_policy
from kfrelease.k8s.render.platform import (
    IRSA_ANNOTATION,
    RELEASE_DRIVER_SA,
    RELEASE_ROLE,
    STEP_IAM_ROLES,
    role_placements,
)
from kfrelease.k8s.render.tree import iam_policies_in_cluster_config
from tests.iam_eval import allowed


def cli(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "kfrelease.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"kfrelease {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def cluster_config(name):
    return yaml.safe_load((MANIFESTS_DIR / "eks" / name / "cluster.yaml").read_text())


def test_cluster_iam_policies_equal_the_access_render_output(sources):
    for name, env in sources.envs.environments.items():
        rendered = json.loads(
            cli(
                "access",
                "render",
                "--target",
                "aws",
                "--bucket-prefix",
                env.bucket_prefix,
            )
        )
        in_cluster = iam_policies_in_cluster_config(cluster_config(name))
        for role, doc in rendered.items():
            if role == RELEASE_ROLE:  # no service account of its own: the release driver's role holds it
                continue
            assert in_cluster[iam_role_name(role)] == doc, f"{name}: IAM policy of {role} differs"
        for ws in sources.workspaces:
            assert in_cluster[iam_role_name("data-scientist", ws.name)] == rendered["data-scientist"]
        # plus the Kubeflow UI's read-only role on the pipeline root (the Evidently reports)
        assert in_cluster[PIPELINE_UI_ROLE] == pipeline_ui_policy(env)
        from kfrelease.k8s.render.eks import untrusted_step_policy
        from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA, STEP_IAM_ROLES, UNTRUSTED_SA

        driver = in_cluster[STEP_IAM_ROLES[RELEASE_DRIVER_SA]]  # the release steps: pipeline's + release's
        assert driver["Statement"] == rendered["pipeline"]["Statement"] + rendered[RELEASE_ROLE]["Statement"]
        assert in_cluster[STEP_IAM_ROLES[UNTRUSTED_SA]] == untrusted_step_policy(env)  # the merged model code
        assert len(in_cluster) == len(rendered) - 1 + len(sources.workspaces) + 1 + len(STEP_IAM_ROLES)


def test_cluster_iam_policies_allow_exactly_the_access_matrix(sources):
    for name, env in sources.envs.environments.items():
        in_cluster = iam_policies_in_cluster_config(cluster_config(name))
        mismatches, checked = [], 0
        for (role, bucket, action), expected in sources.policy.matrix().items():
            if role == RELEASE_ROLE:  # the release driver's IAM role: the pipeline role's grants and its own
                expected = expected or sources.policy.allows("pipeline", bucket, action)
                got = allowed(in_cluster[STEP_IAM_ROLES[RELEASE_DRIVER_SA]], f"{env.bucket_prefix}{bucket}", action)
            else:
                got = allowed(in_cluster[iam_role_name(role)], f"{env.bucket_prefix}{bucket}", action)
            checked += 1
            if got != expected:
                mismatches.append((role, bucket, action, expected, got))
        assert checked == len(sources.policy.roles) * len(sources.policy.buckets) * 3
        assert mismatches == [], name
        # A data scientist's policy never reaches the raw sources, whatever its workspace.
        assert not allowed(
            in_cluster[iam_role_name("data-scientist")],
            f"{env.bucket_prefix}raw",
            "read",
        )


def test_on_the_cluster_a_data_scientist_registers_experiments_and_stages_nothing(sources):
    """Every data-scientist IAM role (the shared one and each workspace's) writes the experiments space and
    nothing of the released registry: a notebook run registers its experiment, and cannot stage, by identity."""
    from tests.test_access_policy import EXPERIMENT_KEYS, RELEASE_KEYS

    for name, env in sources.envs.environments.items():
        in_cluster = iam_policies_in_cluster_config(cluster_config(name))
        models = f"{env.bucket_prefix}models"
        roles = [iam_role_name("data-scientist")] + [
            iam_role_name("data-scientist", ws.name) for ws in sources.workspaces
        ]
        for role in roles:
            doc = in_cluster[role]
            assert all(allowed(doc, models, "write", key) for key in EXPERIMENT_KEYS), (name, role)
            refused = [k for k in RELEASE_KEYS if allowed(doc, models, "write", k) or allowed(doc, models, "delete", k)]
            assert refused == [], (name, role)


def test_only_the_release_driver_writes_the_shadow_verdict_the_rollout_step_trusts(sources):
    """Review 4 R4: ``require_shadow_gate`` trusted a registry event, and the release driver's IAM role was the
    pipeline role's S3 policy: default-editor (IRSA role ``kfrelease-pipeline``: every trusted training step and any
    run a run creator starts, kubeflow/manifests v1.11.0 api-service/params.env DEFAULTPIPELINERUNNERSERVICEACCOUNT)
    wrote a pass into the candidate's history and ran the rollout component alone. Now the verdict lives in
    ``releases``, which only the release driver's role may write."""
    from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA, STEP_IAM_ROLES, UNTRUSTED_SA
    from kfrelease.release.pipeline_steps import RELEASES, shadow_verdict_key

    key = shadow_verdict_key(sources.spec.model, "V1.2.0")
    for name, env in sources.envs.environments.items():
        in_cluster = iam_policies_in_cluster_config(cluster_config(name))
        bucket = f"{env.bucket_prefix}{RELEASES}"
        writers = {role for role, doc in in_cluster.items() if allowed(doc, bucket, "write", key)}
        assert writers == {STEP_IAM_ROLES[RELEASE_DRIVER_SA]}, (name, writers)
        assert not allowed(in_cluster[iam_role_name("pipeline")], bucket, "write", key)
        assert not allowed(in_cluster[STEP_IAM_ROLES[UNTRUSTED_SA]], bucket, "write", key)
        assert allowed(in_cluster[STEP_IAM_ROLES[RELEASE_DRIVER_SA]], bucket, "read", key)


def test_the_merged_model_code_reads_no_curated_data_and_writes_only_its_step_records_and_artifacts(sources):
    """train and score-champion (the data scientist's build: code) run as the untrusted steps' IAM role: what they do
    (kfrelease.training.steps.train_step, run_records.step_record, the KFP launcher's artifact I/O) is allowed, and
    no write of the registry, run records, datasets or monitoring results: only register registers. No read of
    curated data either (review eks5 S3): the held-out labels evaluate judges with are there."""
    from kfrelease.k8s.render.platform import STEP_IAM_ROLES, UNTRUSTED_SA

    model = sources.spec.model
    for name, env in sources.envs.environments.items():
        s3 = iam_policies_in_cluster_config(cluster_config(name))[STEP_IAM_ROLES[UNTRUSTED_SA]]
        p = env.bucket_prefix
        models, curated, root = f"{p}models", f"{p}curated", f"{p}pipeline-root"
        for bucket, action, key in [
            (models, "list", None),  # stat() of a missing step record answers 404, not 403
            (models, "read", "runs/train-abc/steps/train.json"),
            (models, "write", "runs/train-abc/steps/train.json"),
            (models, "write", "runs/train-abc/steps/score-champion.json"),
            # the KFP launcher's artifact I/O: split's outputs in, its own task's out
            (root, "read", "v2/kfrelease-training/run-1/split/0f1e/train_data"),
            (root, "read", "v2/kfrelease-training/run-1/split/0f1e/champion_model/model.onnx"),
            (root, "write", "v2/kfrelease-training/run-1/train/9a8b/model"),
            (root, "write", "v2/kfrelease-training/run-1/score-champion/7c6d/predictions"),
            (root, "write", "v2/kfrelease-training/run-1/train/9a8b/executor-logs"),
        ]:
            assert allowed(s3, bucket, action, key or ""), (name, bucket, action, key)
        for bucket, action, key in [
            (models, "write", f"registry/{model}/claims/V1.1.0.json"),
            (models, "write", f"registry/{model}/versions/V1.1.0/entry.json"),
            (models, "write", f"registry/{model}/versions/V1.1.0/events/e.json"),  # staging, production
            (models, "write", f"artifacts/{model}/V1.1.0/model.joblib"),
            (models, "write", f"experiments/{model}/versions/V1.1.0/entry.json"),
            (models, "write", "runs/train-abc/run.json"),
            (models, "write", "runs/train-abc/state.json"),
            # evaluate's evidence, which validate and register decide on (review 4 R3: not the MLMD parameter)
            (models, "write", "runs/train-abc/evidence/evaluate.json"),
            (models, "read", f"registry/{model}/versions/V1.1.0/entry.json"),
            (models, "delete", "runs/train-abc/steps/train.json"),
            # a trusted step's record: split resumes from its own, so a faked "succeeded" one would fail the run
            # of any model whose run id is known (review eks6 M2); register's, evaluate's are what the UI shows
            *[
                (models, a, f"runs/auto-b-V1-abc/steps/{s}.json")
                for s in ("split", "evaluate", "register")
                for a in ("read", "write")
            ],
            (curated, "write", "diabetes/latest"),
            (curated, "read", "diabetes/latest"),
            (curated, "read", "diabetes/versions/abc/data.parquet"),
            (curated, "list", ""),
            (root, "write", f"monitoring/{model}/spark/part-0.parquet"),
            (root, "delete", "v2/kfrelease-training/run-1/train/model"),
            # review eks4 R6: no other task's artifacts (evaluate's report and held-out predictions, which the UI
            # shows and register keeps; split's outputs the untrusted steps read), no other pipeline's
            (root, "write", "v2/kfrelease-training/run-1/evaluate/5e4f/report"),
            (root, "write", "v2/kfrelease-training/run-1/evaluate/5e4f/holdout_predictions"),
            (root, "write", "v2/kfrelease-training/run-1/split/0f1e/holdout_features"),
            (root, "read", "v2/kfrelease-training/run-1/evaluate/5e4f/report"),
            (root, "read", "v2/kfrelease-training/run-1/train/9a8b/model"),
            (root, "write", "v2/kfrelease-release/run-2/rollout/3b2a/Output"),
            (root, "read", "v2/kfrelease-monitoring/run-3/window/1a2b/report"),
        ] + [(f"{p}{b}", a, "k") for b in ("raw", "inference-logs", "feedback") for a in ("read", "write", "list")]:
            assert not allowed(s3, bucket, action, key), (name, bucket, action, key)


def test_the_untrusted_artifact_paths_are_the_compiled_training_pipelines(sources):
    """The untrusted role's artifact grants name the training pipeline and task names KFP writes paths with
    (``<root>/<pipelineInfo.name>/<run id>/<task>/<uuid>/<output>``: kubeflow/pipelines 2.16.0 driver.go
    ``provisionOutputs``): the compiled pipeline's own, so a renamed step or pipeline cannot silently break the
    untrusted steps' uploads (or widen them); and the untrusted tasks read artifacts of split's only."""
    from google.protobuf import json_format

    from kfrelease.k8s.render.platform import STEP_IAM_ROLES, UNTRUSTED_SA
    from kfrelease.pipelines.training_pipeline import training_pipeline
    from kfrelease.training.steps import TRAINING_PIPELINE, UNTRUSTED_INPUT_TASKS, UNTRUSTED_TASKS

    spec = json_format.MessageToDict(training_pipeline.pipeline_spec)
    assert spec["pipelineInfo"]["name"] == TRAINING_PIPELINE
    tasks = spec["root"]["dag"]["tasks"]
    assert set(UNTRUSTED_TASKS) == {"train", "score-champion"} <= set(tasks)
    for task in UNTRUSTED_TASKS:
        producers = {
            a["taskOutputArtifact"]["producerTask"] for a in tasks[task]["inputs"].get("artifacts", {}).values()
        }
        assert producers and producers <= set(UNTRUSTED_INPUT_TASKS), (task, producers)
    for name in sources.envs.environments:
        s3 = iam_policies_in_cluster_config(cluster_config(name))[STEP_IAM_ROLES[UNTRUSTED_SA]]
        resources = {r for st in s3["Statement"] if st["Sid"].startswith("Pipeline") for r in st["Resource"]}
        assert all(f"/v2/{TRAINING_PIPELINE}/*/" in r for r in resources), resources


def test_no_cluster_identity_but_the_feedback_service_writes_ground_truth(sources):
    """Every IAM role of the ClusterConfigs (people, workspaces, steps, the Kubeflow UI): only the serving role
    (the feedback service's IRSA) may put or delete objects of ``feedback``, the gates' ground truth."""
    for name, env in sources.envs.environments.items():
        bucket = f"{env.bucket_prefix}feedback"
        writers = {
            role
            for role, doc in iam_policies_in_cluster_config(cluster_config(name)).items()
            if allowed(doc, bucket, "write", "model=m/date=2026-12-06/hour=10/x.parquet")
            or allowed(doc, bucket, "delete", "model=m/date=2026-12-06/hour=10/x.parquet")
        }
        assert writers == {iam_role_name("serving")}, (name, writers)


def test_each_irsa_role_is_trusted_by_exactly_the_service_account_annotated_with_it(sources, built):
    serving_ns = sources.spec.serving.namespace
    for name, env in sources.envs.environments.items():
        trusted = {
            sa["roleName"]: (sa["metadata"]["namespace"], sa["metadata"]["name"])
            for sa in cluster_config(name)["iam"]["serviceAccounts"]
            if sa.get("roleOnly")
        }
        annotated = {}
        amendments = yaml.safe_load_all((MANIFESTS_DIR / "eks" / name / "kubeflow" / "amendments.yaml").read_text())
        for doc in list(built[name]) + [d for d in amendments if d]:
            if doc["kind"] == "ServiceAccount" and IRSA_ANNOTATION in doc["metadata"].get("annotations", {}):
                arn = doc["metadata"]["annotations"][IRSA_ANNOTATION]
                annotated[arn] = (doc["metadata"]["namespace"], doc["metadata"]["name"])
            if doc["kind"] == "Profile":
                for plugin in doc["spec"]["plugins"]:
                    if plugin["kind"] == "AwsIamForServiceAccount":
                        annotated[plugin["spec"]["awsIamRole"]] = (
                            doc["metadata"]["name"],
                            PROFILE_SA,
                        )
        assert annotated == {env.role_arn(role): where for role, where in trusted.items()}
        for role, (ns, sa, _) in role_placements(serving_ns).items():
            assert trusted[iam_role_name(role)] == (ns, sa)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, sources):
    """`kfrelease compile` with KFRELEASE_IMAGE set to the production overlay's image."""
    env = sources.envs.environments["production"]
    out = tmp_path_factory.mktemp("compiled")
    cli("compile", "--out", str(out), env={"KFRELEASE_IMAGE": env.project_image})
    files = sorted(out.glob("*.yaml"))
    assert files, "kfrelease compile wrote no pipeline"
    return env, {f.stem: list(yaml.safe_load_all(f.read_text())) for f in files}


def test_compiled_pipelines_run_on_the_project_image(compiled):
    env, pipelines = compiled
    for name, docs in pipelines.items():
        executors = docs[0]["deploymentSpec"]["executors"]
        images = {e["container"]["image"] for e in executors.values()}
        assert images == {env.project_image}, f"{name} uses {images}"
    print(f"\n{len(pipelines)} compiled pipelines, all on {env.project_image}")


def test_pipeline_root_is_the_s3_bucket_the_pipeline_role_writes(compiled, built, sources):
    env, pipelines = compiled
    launcher = next(
        d
        for d in built["production"]
        if d["kind"] == "ConfigMap"
        and d["metadata"] == {**d["metadata"], "name": "kfp-launcher", "namespace": RELEASE_NS}
    )
    root = launcher["data"]["defaultPipelineRoot"]
    assert root == env.pipeline_root() and root.startswith(f"s3://{env.bucket_prefix}pipeline-root/")
    providers = yaml.safe_load(launcher["data"]["providers"])
    assert providers["s3"]["default"]["credentials"] == {"fromEnv": True}
    assert providers["s3"]["default"]["region"] == env.region
    for (
        name,
        docs,
    ) in pipelines.items():  # a compiled-in root would override the ConfigMap: none may differ
        assert docs[0].get("defaultPipelineRoot", root) == root, name
    bucket = root.removeprefix("s3://").split("/")[0]
    policy = iam_policies_in_cluster_config(cluster_config("production"))[iam_role_name("pipeline")]
    assert allowed(policy, bucket, "write") and allowed(policy, bucket, "read")
    # The data pipeline keeps its artifacts (raw rows) where only data engineers can read.
    data_launcher = next(
        d
        for d in built["production"]
        if d["kind"] == "ConfigMap"
        and d["metadata"]["name"] == "kfp-launcher"
        and d["metadata"]["namespace"] != RELEASE_NS
    )
    data_bucket = data_launcher["data"]["defaultPipelineRoot"].removeprefix("s3://").split("/")[0]
    de = iam_policies_in_cluster_config(cluster_config("production"))[iam_role_name("data-engineer")]
    ds = iam_policies_in_cluster_config(cluster_config("production"))[iam_role_name("data-scientist")]
    assert allowed(de, data_bucket, "write") and not allowed(ds, data_bucket, "read")


def test_pipeline_pods_get_the_object_store_and_registry_settings(built, sources):
    for name, docs in built.items():
        env = sources.envs.environments[name]
        pd = next(
            d
            for d in docs
            if d["kind"] == "PodDefault"
            and d["metadata"]["name"] == "pipeline-pods-env"
            and d["metadata"]["namespace"] == RELEASE_NS
        )
        assert pd["spec"]["selector"] == {
            "matchExpressions": [{"key": "workflows.argoproj.io/workflow", "operator": "Exists"}]
        }
        envs = {e["name"]: e["value"] for e in pd["spec"]["env"]}
        assert envs["KFRELEASE_S3_ENDPOINT"] == "s3.amazonaws.com" and envs["KFRELEASE_ROLE"] == "pipeline"
        assert envs["KFRELEASE_BUCKET_PREFIX"] == env.bucket_prefix and envs["KFRELEASE_S3_REGION"] == env.region
        assert envs["KFRELEASE_IMAGE_REGISTRY"] == env.registry
        auth = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kfrelease-registry-auth")
        assert json.loads(auth["data"]["auth.json"]) == {"credHelpers": {env.registry: "ecr-login"}}
        mount = pd["spec"]["volumeMounts"][0]["mountPath"]
        assert envs["REGISTRY_AUTH_FILE"] == f"{mount}/auth.json"


def test_the_ci_role_may_only_record_runs_and_read_curated_data(sources):
    """The trigger reads the curated dataset version and creates its run record under models/runs/; it may not
    write or delete registry entries or model artifacts (a CI role that could is a way around the release)."""
    from kfrelease.k8s.render.eks import CI_S3_POLICY

    model = sources.spec.model
    for name, env in sources.envs.environments.items():
        tpl = yaml.safe_load((MANIFESTS_DIR / "eks" / name / "prerequisites.yaml").read_text())
        policies = {p["PolicyName"]: p["PolicyDocument"] for p in tpl["Resources"]["CIRole"]["Properties"]["Policies"]}
        s3 = policies[CI_S3_POLICY]
        models, curated = f"{env.bucket_prefix}models", f"{env.bucket_prefix}curated"
        # what kfrelease trigger does (kfrelease/training/run_records.py, kfrelease/data/publish.py)
        for bucket, action, key in [
            (models, "read", "runs/train-abc/run.json"),
            (models, "write", "runs/train-abc/run.json"),
            (models, "write", "runs/train-abc/state.json"),
            (models, "list", None),
            (curated, "read", "diabetes/latest"),
            (curated, "list", None),
        ]:
            assert allowed(s3, bucket, action, key or ""), (name, bucket, action, key)
        # and nothing else: no registry write or delete, no dataset write, no other bucket
        for bucket, action, key in [
            (models, "write", f"{model}/V1.1.0/entry.json"),
            (models, "write", f"{model}/stages/production"),
            (models, "delete", f"{model}/V1.1.0/entry.json"),
            (models, "delete", "runs/train-abc/run.json"),
            (models, "read", f"{model}/V1.1.0/model.joblib"),
            (curated, "write", "diabetes/latest"),
            (curated, "delete", "diabetes/latest"),
        ] + [
            (f"{env.bucket_prefix}{b}", a, "k")
            for b in ("raw", "pipeline-root", "inference-logs", "feedback")
            for a in ("read", "write", "delete")
        ]:
            assert not allowed(s3, bucket, action, key), (name, bucket, action, key)
        assert set(policies) == {"describe-cluster", "describe-project-image", CI_S3_POLICY}
        (ecr,) = policies["describe-project-image"]["Statement"]
        assert ecr["Action"] == ["ecr:DescribeImages"] and ecr["Resource"].endswith(":repository/kfrelease")


def test_the_kubeflow_ui_reads_the_pipeline_root_and_nothing_else(sources):
    for env in sources.envs.environments.values():
        ui = pipeline_ui_policy(env)
        root = f"{env.bucket_prefix}pipeline-root"
        assert allowed(ui, root, "read", "v2/training/run-1/evaluate/report.html") and allowed(ui, root, "list")
        assert not allowed(ui, root, "write") and not allowed(ui, root, "delete")
        for bucket in sources.policy.buckets:
            if bucket != "pipeline-root":
                assert not any(allowed(ui, f"{env.bucket_prefix}{bucket}", a) for a in ("read", "write", "list"))


def test_the_trigger_workflow_points_at_the_right_cluster_and_buckets(sources):
    wf = yaml.safe_load((MANIFESTS_DIR.parent / "ci" / "github" / "kfrelease-trigger.yaml").read_text())
    given = wf["jobs"]["trigger"]["with"]  # the only input of the platform's reusable workflow (review 4 R1)
    assert given == {"environment": "production"}
    train = yaml.safe_load((MANIFESTS_DIR.parent / "ci" / "github" / "kfrelease-train.yaml").read_text())
    table = json.loads(train["env"]["PLATFORM_ENVIRONMENTS"])[given["environment"]]
    prod = sources.envs.environments["production"]
    assert table["bucket_prefix"] == prod.bucket_prefix
    assert table["region"] == prod.region and table["registry"] == prod.registry
    assert table["cluster"] == prod.cluster and table["role_arn"] == prod.role_arn("kfrelease-ci")
    assert table["kfp_host"] == f"https://{prod.kubeflow_host}/pipeline"


def test_the_monitoring_spark_identity_may_list_read_and_write_its_window_results(sources):
    """Review eks7 P1: the monitoring SparkApplication writes its window with Hadoop's S3A (``saveAsTextFile`` to
    ``s3a://<prefix>pipeline-root/monitoring/<model>/spark/<run>``), whose output committer lists and reads what it
    writes (hadoop-aws ``assumed_roles.md``, "Write Access Permissions": ``s3:Get*``, ``s3:Put*``,
    ``s3:Delete*``, ``s3:ListBucket``); the role could only put and delete there, so every Spark window failed and
    the push step after it found no result."""
    from kfrelease.k8s.environments import iam_role_name

    for name, env in sources.envs.environments.items():
        s3 = iam_policies_in_cluster_config(cluster_config(name))[iam_role_name("monitoring")]
        root = f"{env.bucket_prefix}pipeline-root"
        key = f"monitoring/{sources.spec.model}/spark/run-1/_temporary/0/part-00000"
        for action, k in (("list", ""), ("read", key), ("write", key), ("delete", key)):
            assert allowed(s3, root, action, k), (name, action, k)
