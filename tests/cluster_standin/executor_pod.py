"""The pod Argo's workflow controller asks the API server to create for one task of a compiled KFP v2 pipeline, so
the admission policies are evaluated on what a cluster would really see (nothing of it can run here).

Written from the upstream sources, in the order they build it:

- KFP's compiler (kubeflow/pipelines 2.16.0 ``backend/src/v2/compiler/argocompiler/container.go``
  ``addContainerExecutorTemplate``): the executor template's init container ``kfp-launcher``
  (``launcher-v2 --copy /kfp-launcher/launch`` from ``V2_LAUNCHER_IMAGE``), the ``main`` container's
  ``envFrom`` (optional ``metadata-grpc-configmap``) and ``env`` (``KFP_POD_NAME``, ``KFP_POD_UID``:
  ``common.go``), its emptyDirs ``kfp-launcher`` and the six scratch dirs, the task's ``podMetadata``
  (kfp-kubernetes labels and annotations: ``extendPodMetadata``);
- KFP's driver (``backend/src/v2/driver/driver.go`` ``initPodSpecPatch``): ``main``'s image, ``command`` =
  the launcher and its flags ending in ``--``, ``args`` = the component's command + args, unresolved (the
  launcher resolves ``{{$}}``), the component's env;
- Argo's controller (argoproj/argo-workflows v3.7 ``workflow/controller/workflowpod.go``): init container
  ``init`` and sidecar ``wait`` (``argoexec init|wait --loglevel info --log-format text --gloglevel 0``), the
  emissary prepended to ``main``'s command, ``var-run-argo`` mounted in all three, ``ARGO_*`` env, the
  workflow's label ``workflows.argoproj.io/workflow``, and the run's service account.

Kubeflow's argoexec and launcher images are those of kubeflow/manifests 26.03
(``applications/pipeline/upstream/third-party/argo/base/workflow-controller-deployment-patch.yaml``,
``applications/pipeline/upstream/base/pipeline/ml-pipeline-apiserver-deployment.yaml``).
"""

from __future__ import annotations

import copy

from google.protobuf import json_format

from kfrelease.k8s.environments import PROFILE_SA

ARGOEXEC = "quay.io/argoproj/argoexec:v3.7.3"
LAUNCHER = "ghcr.io/kubeflow/kfp-launcher:2.16.0"
#: KFP 2.4.1's default launcher image (argocompiler ``container.go`` ``DefaultLauncherImage``), Kubeflow v1.10.0's
LAUNCHER_241 = "ghcr.io/kubeflow/kfp-launcher:2.4.1"
#: argoexec's log flags (``getExecutorLogOpts``): Argo v3.7 (Kubeflow 1.11, 26.03); v3.5 (Kubeflow 1.10) has no
#: ``--gloglevel``
ARGO_LOG = ["--loglevel", "info", "--log-format", "text", "--gloglevel", "0"]
ARGO_LOG_35 = ["--loglevel", "info", "--log-format", "text"]
SCRATCH = {
    "gcs-scratch": "/gcs",
    "s3-scratch": "/s3",
    "minio-scratch": "/minio",
    "dot-local-scratch": "/.local",
    "dot-cache-scratch": "/.cache",
    "dot-config-scratch": "/.config",
}


def compiled_executors(pipeline) -> tuple[dict, dict]:
    """(executors, kubernetes platform executors) of a ``@dsl.pipeline`` as KFP's compiler writes them."""
    executors = json_format.MessageToDict(pipeline.pipeline_spec)["deploymentSpec"]["executors"]
    platform = json_format.MessageToDict(pipeline.platform_spec)["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    return executors, platform


def executor_pod(
    pipeline,
    executor: str,
    image: str,
    namespace: str,
    service_account: str = PROFILE_SA,
    workflow: str = "release-run-abcde",
    argo_log: tuple[str, ...] = tuple(ARGO_LOG),
    kfp: str = "2.16.0",
) -> dict:
    """The pod of ``executor`` (e.g. ``exec-rollout``) in a run of ``pipeline`` whose component image is
    ``image``, before any admission plugin or webhook changed it. ``kfp``: the KFP release whose compiler writes the
    ``kfp-launcher`` init container (2.4.1, Kubeflow v1.10.0: ``--copy`` and the path in its ``command``, no
    ``args``: kubeflow/pipelines 2.4.1 ``argocompiler/container.go``; 2.5.0 on: in ``args``)."""
    executors, platform = compiled_executors(pipeline)
    container = executors[executor]["container"]
    meta = platform.get(executor, {}).get("podMetadata", {})
    launcher = [
        "/kfp-launcher/launch",
        "--pipeline_name",
        "kfrelease-release",
        "--run_id",
        "0b6a0c1e-run",
        "--execution_id",
        "42",
        "--executor_input",
        '{"inputs":{"parameterValues":{"model":"diabetes-progression"}}}',
        "--component_spec",
        '{"executorLabel":"' + executor + '"}',
        "--pod_name",
        "$(KFP_POD_NAME)",
        "--pod_uid",
        "$(KFP_POD_UID)",
        "--ml_pipeline_server_address",
        "ml-pipeline.kubeflow",
        "--ml_pipeline_server_port",
        "8887",
        "--mlmd_server_address",
        "metadata-grpc-service.kubeflow",
        "--mlmd_server_port",
        "8080",
        "--publish_logs",
        "false",
        "--",
    ]
    argo_env = [
        {"name": "ARGO_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "ARGO_POD_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
        {"name": "ARGO_WORKFLOW_NAME", "value": workflow},
        {"name": "ARGO_CONTAINER_NAME", "value": "main"},
        {"name": "ARGO_TEMPLATE", "value": '{"name":"system-container-impl"}'},
        {"name": "ARGO_NODE_ID", "value": f"{workflow}-1234"},
    ]
    argo_mount = {"name": "var-run-argo", "mountPath": "/var/run/argo"}
    kfp_env = [
        {"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "KFP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    main = {
        "name": "main",
        "image": image,
        "command": ["/var/run/argo/argoexec", "emissary", *argo_log, "--", *launcher],
        "args": list(container.get("command", [])) + list(container.get("args", [])),
        "envFrom": [{"configMapRef": {"name": "metadata-grpc-configmap", "optional": True}}],
        "env": kfp_env + [{"name": e["name"], "value": e["value"]} for e in container.get("env", [])] + argo_env,
        "volumeMounts": [{"name": "kfp-launcher", "mountPath": "/kfp-launcher"}]
        + [{"name": n, "mountPath": p} for n, p in SCRATCH.items()]
        + [argo_mount],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{workflow}-system-container-impl-1234",
            "namespace": namespace,
            "labels": {"workflows.argoproj.io/workflow": workflow, **copy.deepcopy(meta.get("labels", {}))},
            "annotations": {"workflows.argoproj.io/node-name": executor, **copy.deepcopy(meta.get("annotations", {}))},
        },
        "spec": {
            "serviceAccountName": service_account,
            "initContainers": [
                {
                    "name": "init",
                    "image": ARGOEXEC,
                    "command": ["argoexec", "init", *argo_log],
                    "env": argo_env[:3],
                    "volumeMounts": [argo_mount],
                },
                {
                    "name": "kfp-launcher",
                    "image": LAUNCHER if kfp != "2.4.1" else LAUNCHER_241,
                    **(
                        {"command": ["launcher-v2", "--copy", "/kfp-launcher/launch"]}
                        if kfp == "2.4.1"
                        else {"command": ["launcher-v2"], "args": ["--copy", "/kfp-launcher/launch"]}
                    ),
                    "volumeMounts": [{"name": "kfp-launcher", "mountPath": "/kfp-launcher"}],
                },
            ],
            "containers": [
                {
                    "name": "wait",
                    "image": ARGOEXEC,
                    "command": ["argoexec", "wait", *argo_log],
                    "env": argo_env[:3],
                    "volumeMounts": [argo_mount, {"name": "tmp-dir-argo", "mountPath": "/tmp", "subPath": "0"}],
                },
                main,
            ],
            "volumes": [
                {"name": "var-run-argo", "emptyDir": {}},
                {"name": "tmp-dir-argo", "emptyDir": {}},
                {"name": "kfp-launcher", "emptyDir": {}},
                *({"name": n, "emptyDir": {}} for n in SCRATCH),
            ],
        },
    }
