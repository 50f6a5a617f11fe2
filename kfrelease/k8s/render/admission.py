"""Which code may run as a privileged step identity: bound by what the pod runs, not by a label anyone sets.

The release steps run as ``kfrelease-release-driver`` (the driver's Role over serving traffic). Kubeflow's
PodDefault gives them that service account when their pod carries the label ``kfrelease.io/step-identity:
release-driver`` (``platform.step_identities``), and whoever can create a run in the release namespace can set
any pod label: KFP's ``createRun`` checks only ``runs create`` (kubeflow/pipelines 2.16.0
``backend/src/apiserver/server/run_server.go``), an inline pipeline spec carries its own ``podMetadata``
(kfp-kubernetes ``add_pod_label``), a run may name its own service account, and the Profile's
``default-editor`` (``kubeflow-edit``: pods create/patch, ``pods/exec``, Argo workflows) can even create such a
pod or Workflow directly. A label, an annotation or a Workflow label says who *asked*, and every one of them
can be written by the asker; none of them says what runs.

What an author cannot forge is the pod the API server is asked to admit. So a ValidatingAdmissionPolicy
(``admissionregistration.k8s.io/v1``, GA in Kubernetes 1.30; the environments declare 1.33) in the release
namespace admits a pod whose ``serviceAccountName`` is a privileged step identity only when it is exactly a
KFP v2 executor pod of one of the release components, as Argo's workflow controller creates it:

- created by Argo's workflow controller (``system:serviceaccount:kubeflow:argo``: argoproj/argo-workflows
  ``manifests/base/workflow-controller/workflow-controller-deployment.yaml``, installed by kubeflow/manifests
  ``applications/pipeline/upstream/third-party/argo`` into ``kubeflow`` at v1.11.0 and 26.03), never directly;
- containers ``wait`` + ``main`` and init containers ``init`` + ``kfp-launcher``, nothing else (Argo's
  ``workflow/controller/workflowpod.go``: ``newInitContainer``/``newWaitContainer`` run ``argoexec init|wait``;
  KFP's ``backend/src/v2/compiler/argocompiler/container.go`` ``addContainerExecutorTemplate``: the
  ``kfp-launcher`` init container runs ``launcher-v2 --copy /kfp-launcher/launch``: from KFP 2.5 ``--copy`` and the
  path are its ``args``, in 2.4.1 (Kubeflow v1.10.0) part of its ``command``), each from its upstream
  image repository; no lifecycle hooks or probes (they run commands), no ephemeral containers;
- ``main`` runs this platform release's image by its digest (``<registry>/kfrelease@<image_digest>`` of
  ``environments.yaml``: only the image publisher role pushes to that ECR repository, whose tags are immutable,
  and an earlier release's image, still in it, is refused: its code would run with today's args), its command is Argo's emissary
  running KFP's launcher (``/var/run/argo/argoexec emissary ... -- /kfp-launcher/launch ... --``: KFP 2.16.0
  ``backend/src/v2/driver/driver.go`` ``initPodSpecPatch`` puts the launcher in ``command`` and the
  component's own command + args in ``args``; Argo prepends the emissary to ``command`` and keeps ``args``),
  and its ``args`` equal one release component's command + args exactly (the compiled release pipeline's
  executors labelled ``release-driver``: the function's source is in them, so other code has other args);
- ``main``'s environment is closed: the exact name=value pairs of the PodDefaults that select a release step
  and of the component itself, plus the names KFP (``KFP_POD_NAME``, ``KFP_POD_UID``: argocompiler
  ``common.go`` ``commonEnvs``), Argo (``ARGO_*``: ``createEnvVars``) and EKS's pod identity webhook (IRSA:
  ``AWS_*`` of aws/amazon-eks-pod-identity-webhook ``pkg/handler``) set; ``envFrom`` only KFP's optional
  ``metadata-grpc-configmap`` (whose keys another policy here limits to the metadata service's address);
- its mounts are closed: KFP's scratch and launcher emptyDirs (mounted by no other container except the
  launcher's own init container), Argo's ``/var/run/argo`` emptyDir, the projected service-account tokens
  (the API server's, IRSA's, the replay token of ``platform.replay_access``) and the registry-auth ConfigMap;
  every volume of the pod is an emptyDir, a projected source, a ConfigMap or a Secret (no hostPath, PVC,
  CSI, image or ephemeral volume that could bring code in).

A second policy refuses ``pods/exec`` and ``pods/attach`` in the release namespace (``kubeflow-edit`` grants
both; nothing of KFP or Argo's emissary uses them), so no one runs code in an admitted release pod either, and
``UPDATE`` of a pod (images are mutable) goes through the first policy again.

A fourth refuses Secrets of type ``kubernetes.io/service-account-token`` in the release namespace: the control
plane fills such a Secret with a non-expiring token of the service account its annotation
``kubernetes.io/service-account.name`` names (Kubernetes docs, "Configure Service Accounts for Pods" ->
"Manually create a long-lived API token for a ServiceAccount"), and ``kubeflow-edit`` (kubeflow/manifests
v1.11.0 and 26.03 ``common/kubeflow-roles/base/cluster-roles.yaml`` ``kubeflow-kubernetes-edit``) grants
``secrets`` create/update/patch and get/list: without it, ``default-editor`` mints and reads a
``kfrelease-release-driver`` token with no pod involved, and the pod policies above never see it.

A fifth binds Argo's task results to the pod that writes them. A step pod's own token must create and patch
``argoproj.io`` ``workflowtaskresults`` (Argo's ``wait`` container reports the node's outputs as one, named the
node's ID: argoproj/argo-workflows v3.7.3 ``workflow/executor/taskresult.go`` ``createTaskResult``/``patchTaskResult``),
and RBAC cannot name a result before it exists, so the Role lets such a pod write any result of the namespace. The
workflow controller copies every result labelled ``workflows.argoproj.io/workflow: <wf>`` whose name is a node of
``<wf>`` into that node's outputs, whoever wrote it (``workflow/controller/taskresult.go``
``taskResultReconciliation``), and a KFP driver's output ``pod-spec-patch`` is the image, command and args of its
executor pod (kubeflow/pipelines 2.16.0 ``backend/src/v2/compiler/argocompiler/container.go``): the merged model
code in ``train`` could patch the result of another run's register driver and run code of its choice as
``default-editor`` (review eks5 S0). So a write of a task result by ``kfrelease-untrusted-step`` or
``kfrelease-release-driver`` is admitted only from the pod whose node it is: the request's bound token names its pod
(``request.userInfo.extra["authentication.kubernetes.io/pod-name"]``, set for every token bound to a pod:
kubernetes ``staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go`` ``ServiceAccountInfo.UserInfo``),
the result is named ``<wf>-<fnv32a(node name)>`` (``Workflow.NodeID``, ``pkg/apis/workflow/v1alpha1/workflow_types.go``)
and labelled ``<wf>``, and Argo names that node's pod ``<wf>-<template>-<the same hash>`` (``POD_NAMES`` v2) or the
node ID itself (v1) (``workflow/util/pod_name.go`` ``GeneratePodName``; the same at v3.4.17 and v3.5.14): the pod must
start with ``<wf>-`` and end with ``-<hash>``. A token bound to no pod is refused (fail closed). The expressions use
``substring``/``lastIndexOf`` of cel-go's strings extension, which Kubernetes' CEL base environment includes from 1.29
(``staging/src/k8s.io/apiserver/pkg/cel/environment/base.go``: ``ext.Strings(ext.StringsVersion(2))``).

A sixth refuses a pod labelled ``kfrelease.io/step-identity: untrusted`` that does not run as
``kfrelease-untrusted-step`` (the PodDefault that sets it can be deleted by ``default-editor``: fail closed).

In the serving namespace, ``kfrelease-driver-services`` bounds what the release driver may do with Services. Its
Role may create, patch and delete Services there (the ``<model>-<version>-logged`` Service of a KServe 0.20
Standard-mode canary carries the version in its name, so RBAC cannot name it in advance), and whoever may create or
patch a Service may set ``spec.externalIPs`` (CVE-2020-8554, kubernetes/kubernetes#97076: traffic to those IPs from
every node and every pod without a sidecar goes to the Service) or ``type: LoadBalancer`` (an AWS load balancer).
The policy admits the driver's Service writes only in the shape ``inference.logged_canary_service`` renders: a
ClusterIP Service named ``<model>-<version>-logged`` for a model the platform serves, labelled so, selecting only
that canary's KServe predictor pods (``app: isvc.<model>-<version>-predictor``), every port to the agent (9081), no
external IPs; and a delete only of such a Service (``oldObject`` labelled ``kfrelease.io/logged-canary``).
Requests of any other identity are not matched (review eks3 N2).
"""

from __future__ import annotations

import functools
import json

from google.protobuf import json_format

from kfrelease.k8s.environments import RELEASE_NS, Environment
from kfrelease.k8s.render.inference import AGENT_PORT, LOGGED_CANARY_LABEL, VERSION_LABEL
from kfrelease.k8s.render.platform import (
    RELEASE_DRIVER_SA,
    RELEASE_DRIVER_STEP,
    STEP_LABEL,
    UNTRUSTED,
    UNTRUSTED_SA,
)

ADMISSION = "admissionregistration.k8s.io"
STEP_IDENTITY_POLICY = "kfrelease-step-identity"
NO_EXEC_POLICY = "kfrelease-release-no-exec"
METADATA_CONFIGMAP_POLICY = "kfrelease-metadata-configmap"
NO_TOKEN_SECRET_POLICY = "kfrelease-no-token-secrets"
DRIVER_SERVICES_POLICY = "kfrelease-driver-services"
TASK_RESULTS_POLICY = "kfrelease-task-results"
UNTRUSTED_IDENTITY_POLICY = "kfrelease-untrusted-identity"
#: Argo's label on a task result naming its workflow (the controller indexes results by it) and the user extra the
#: API server sets from a token bound to a pod (module docstring).
ARGO_WORKFLOW_LABEL = "workflows.argoproj.io/workflow"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
SA_TOKEN_SECRET = "kubernetes.io/service-account-token"
#: Argo's workflow controller, as Kubeflow installs it (service account ``argo`` in ``kubeflow``).
ARGO_CONTROLLER = "system:serviceaccount:kubeflow:argo"
#: Upstream image repositories of the executor's helper containers (Kubeflow pins tags in these: argoexec
#: ``quay.io/argoproj/argoexec:v3.7.3`` at v1.11.0 and 26.03, ``gcr.io/ml-pipeline/argoexec`` at v1.10.0;
#: kfp-launcher ``ghcr.io/kubeflow/kfp-launcher:2.15.0`` at v1.11.0, ``:2.16.0`` at 26.03). Only their
#: maintainers push there.
ARGOEXEC_IMAGES = r"^(quay\.io/argoproj/argoexec|gcr\.io/ml-pipeline/argoexec)[:@]"
LAUNCHER_IMAGES = r"^(ghcr\.io/kubeflow/kfp-launcher|gcr\.io/ml-pipeline/kfp-launcher)[:@]"
#: KFP's executor volumes (argocompiler ``container.go``): the launcher binary and the scratch emptyDirs.
KFP_LAUNCHER_DIR = "/kfp-launcher"
KFP_SCRATCH_DIRS = ("/gcs", "/s3", "/minio", "/.local", "/.cache", "/.config")
ARGO_DIR = "/var/run/argo"
#: Projected service-account tokens: the API server's (ServiceAccount admission) and IRSA's.
TOKEN_DIRS = ("/var/run/secrets/kubernetes.io/serviceaccount", "/var/run/secrets/eks.amazonaws.com/serviceaccount")
#: Set by KFP (argocompiler ``common.go`` ``commonEnvs``) and by EKS's pod identity webhook.
KFP_ENV = ("KFP_POD_NAME", "KFP_POD_UID")
IRSA_ENV = (
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
METADATA_CONFIGMAP = "metadata-grpc-configmap"
METADATA_KEYS = ("METADATA_GRPC_SERVICE_HOST", "METADATA_GRPC_SERVICE_PORT")


def _cel(value) -> str:
    """A CEL literal of a string or a list of strings (JSON's escapes are CEL's)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "[" + ", ".join(_cel(v) for v in value) + "]"


@functools.lru_cache(maxsize=1)
def release_step_executors() -> tuple[tuple[list[str], list[dict]], ...]:
    """(command + args, env) of every executor of the release pipeline that runs as the release driver, as KFP's
    compiler writes them (the pod's ``args`` are exactly the command + args: KFP 2.16.0 ``initPodSpecPatch``)."""
    from kfrelease.pipelines.release_pipeline import release_pipeline  # heavy: kfp

    executors = json_format.MessageToDict(release_pipeline.pipeline_spec)["deploymentSpec"]["executors"]
    platform = json_format.MessageToDict(release_pipeline.platform_spec)["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    found: dict[str, tuple[list[str], list[dict]]] = {}
    for name, executor in executors.items():
        labels = platform.get(name, {}).get("podMetadata", {}).get("labels", {})
        if labels.get(STEP_LABEL) != RELEASE_DRIVER_STEP:
            continue
        container = executor["container"]
        argv = list(container.get("command", [])) + list(container.get("args", []))
        env = [{"name": e["name"], "value": e["value"]} for e in container.get("env", [])]
        found[json.dumps(argv)] = (argv, env)
    return tuple(found[k] for k in sorted(found))


def _pod_default_env(pod_defaults: list[dict]) -> list[str]:
    return sorted({f"{e['name']}={e['value']}" for pd in pod_defaults for e in pd["spec"].get("env", [])})


def step_identity_policy(env: Environment, pod_defaults: list[dict], ns: str = RELEASE_NS) -> list[dict]:
    """The ValidatingAdmissionPolicy and binding that admit a release-driver pod only as a release component's
    KFP executor pod (module docstring); ``pod_defaults``: the PodDefaults that select a release step's pod."""
    executors = release_step_executors()
    exact_env = sorted(
        set(_pod_default_env(pod_defaults)) | {f"{e['name']}={e['value']}" for _, es in executors for e in es}
    )
    # this platform release's image, by digest (environments.yaml image_digest): not any digest of the repository,
    # since ECR keeps every earlier release's image and its code would run with today's component args (review 4 R5)
    image_rule = (
        (
            f"variables.main.image == {_cel(env.platform_image)}",
            f"the release step runs the platform's image, {env.platform_image}",
        )
        if env.image_digest
        else (
            "false",
            f"the platform's image has no digest in environments.yaml ({env.name}): no release step is admitted",
        )
    )
    args_alternatives = " || ".join(f"variables.main.args == {_cel(argv)}" for argv, _ in executors)
    variables = [
        {"name": "containers", "expression": "object.spec.containers"},
        {"name": "inits", "expression": "has(object.spec.initContainers) ? object.spec.initContainers : []"},
        {"name": "all", "expression": "variables.containers + variables.inits"},
        {"name": "main", "expression": "variables.containers.filter(c, c.name == 'main')[0]"},
        {"name": "volumes", "expression": "has(object.spec.volumes) ? object.spec.volumes : []"},
        {"name": "mainMounts", "expression": "has(variables.main.volumeMounts) ? variables.main.volumeMounts : []"},
    ]

    def mounted(paths, volume: str) -> str:
        return f"(m.mountPath in {_cel(list(paths))} && variables.volumes.exists(v, v.name == m.name && {volume}))"

    allowed_mounts = [
        mounted([KFP_LAUNCHER_DIR, *KFP_SCRATCH_DIRS, ARGO_DIR], "has(v.emptyDir)"),
        mounted(TOKEN_DIRS, "has(v.projected)"),
    ]
    for pd in pod_defaults:  # each PodDefault mount, backed by the very volume the PodDefault adds
        volumes = {v["name"]: v for v in pd["spec"].get("volumes", [])}
        for m in pd["spec"].get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "configMap" in vol:
                kind = f"has(v.configMap) && v.configMap.name == {_cel(vol['configMap']['name'])}"
            else:
                kind = "has(v.projected) && v.projected.sources.all(s, has(s.serviceAccountToken))"
            allowed_mounts.append(mounted([m["mountPath"]], kind))
    mount_rule = "variables.mainMounts.all(m, " + " || ".join(allowed_mounts) + ")"
    # the volumes main reads code from (KFP's launcher binary, its scratch dirs, Argo's argoexec) are written only
    # by the containers upstream gives them to: kfp-launcher (/kfp-launcher), Argo's init (/var/run/argo)
    shared_rule = (
        "variables.all.all(c, c.name == 'main' || !has(c.volumeMounts) || c.volumeMounts.all(m, "
        f"!variables.mainMounts.exists(mm, mm.name == m.name && mm.mountPath in {_cel(list(KFP_SCRATCH_DIRS))}) && "
        f"(c.name == 'kfp-launcher' || !variables.mainMounts.exists(mm, mm.name == m.name && mm.mountPath == {_cel(KFP_LAUNCHER_DIR)})) && "
        f"(c.name in ['init', 'wait'] || !variables.mainMounts.exists(mm, mm.name == m.name && mm.mountPath == {_cel(ARGO_DIR)}))))"
    )
    env_rule = (
        "(has(variables.main.env) ? variables.main.env : []).all(e, e.name.startsWith('ARGO_') || "
        f"e.name in {_cel(KFP_ENV + IRSA_ENV)} || "
        f"(has(e.value) && !has(e.valueFrom) && (e.name + '=' + e.value) in {_cel(exact_env)}))"
    )
    validations = [
        (
            f"request.operation != 'CREATE' || request.userInfo.username == {_cel(ARGO_CONTROLLER)}",
            "only Argo's workflow controller may create a pod that runs as a privileged step identity",
        ),
        (
            "variables.containers.map(c, c.name) == ['wait', 'main'] || variables.containers.map(c, c.name) == ['main', 'wait']",
            "a privileged step's pod has exactly the containers 'main' and 'wait' of a KFP executor pod",
        ),
        (
            "variables.inits.map(c, c.name) == ['init', 'kfp-launcher'] || variables.inits.map(c, c.name) == ['kfp-launcher', 'init']",
            "a privileged step's pod has exactly the init containers 'init' (Argo) and 'kfp-launcher' (KFP)",
        ),
        (
            "!has(object.spec.ephemeralContainers) || size(object.spec.ephemeralContainers) == 0",
            "no ephemeral container may join a privileged step's pod",
        ),
        (
            (
                "variables.all.all(c, !has(c.lifecycle) && !has(c.livenessProbe) && !has(c.readinessProbe) && "
                "!has(c.startupProbe) && !has(c.workingDir) && !has(c.volumeDevices))"
            ),
            "a privileged step's containers have no lifecycle hooks, probes, working directory or devices",
        ),
        (
            (
                "variables.all.all(c, c.name != 'init' && c.name != 'wait' || "
                f"(c.image.matches({_cel(ARGOEXEC_IMAGES)}) && size(c.command) >= 2 && c.command[0] == 'argoexec' && "
                "c.command[1] == c.name && !has(c.args)))"
            ),
            "Argo's init and wait containers run argoexec init/wait from Argo's image",
        ),
        (
            (
                # KFP 2.5+ (Kubeflow 1.10.1 on): command launcher-v2, args --copy <path> [--log_level L]; KFP 2.4.1
                # (Kubeflow 1.10.0): the three in command, no args (argocompiler container.go at each tag)
                "variables.inits.all(c, c.name != 'kfp-launcher' || "
                f"(c.image.matches({_cel(LAUNCHER_IMAGES)}) && ("
                "(c.command == ['launcher-v2'] && has(c.args) && size(c.args) >= 2 && "
                f"c.args[0] == '--copy' && c.args[1] == {_cel(KFP_LAUNCHER_DIR + '/launch')}) || "
                f"(c.command == ['launcher-v2', '--copy', {_cel(KFP_LAUNCHER_DIR + '/launch')}] && "
                "(!has(c.args) || size(c.args) == 0)))))"
            ),
            "KFP's kfp-launcher init container only copies the launcher from KFP's image",
        ),
        image_rule,
        (
            (
                "size(variables.main.command) >= 11 && variables.main.command[0] == '/var/run/argo/argoexec' && "
                "variables.main.command[1] == 'emissary' && variables.main.command[2] == '--loglevel' && "
                "variables.main.command[4] == '--log-format' && "
                # Argo 3.6+: ... --gloglevel N -- ; Argo 3.5 (Kubeflow 1.10): no --gloglevel
                f"((variables.main.command[6] == '--gloglevel' && variables.main.command[8] == '--' && "
                f"variables.main.command[9] == {_cel(KFP_LAUNCHER_DIR + '/launch')}) || "
                f"(variables.main.command[6] == '--' && variables.main.command[7] == {_cel(KFP_LAUNCHER_DIR + '/launch')})) && "
                "variables.main.command[size(variables.main.command) - 1] == '--' && "
                "variables.main.command.filter(a, a == '--').size() == 2"
            ),
            "the release step's command is Argo's emissary running KFP's launcher",
        ),
        (args_alternatives, "the release step runs one of the release pipeline's components, unchanged"),
        (env_rule, "the release step's environment is the release PodDefaults', KFP's, Argo's and IRSA's only"),
        (
            (
                "!has(variables.main.envFrom) || variables.main.envFrom.all(f, has(f.configMapRef) && "
                f"f.configMapRef.name == {_cel(METADATA_CONFIGMAP)} && !has(f.prefix))"
            ),
            f"the release step's envFrom is KFP's {METADATA_CONFIGMAP} only",
        ),
        (
            "variables.volumes.all(v, has(v.emptyDir) || has(v.projected) || has(v.configMap) || has(v.secret))",
            "a privileged step's volumes are emptyDirs, projected tokens, ConfigMaps or Secrets only",
        ),
        (mount_rule, "the release step mounts only KFP's, Argo's, the tokens' and the release PodDefaults' paths"),
        (shared_rule, "no other container writes the volumes the release step runs code from"),
    ]
    return _policy(
        STEP_IDENTITY_POLICY,
        ns,
        ["CREATE", "UPDATE"],
        ["pods", "pods/ephemeralcontainers"],
        [{"expression": expr, "message": msg} for expr, msg in validations],
        match_conditions=[
            {
                "name": "privileged-step-identity",
                "expression": f"object.spec.serviceAccountName in {_cel([RELEASE_DRIVER_SA])}",
            }
        ],
        variables=variables,
    )


def no_exec_policy(ns: str = RELEASE_NS) -> list[dict]:
    """No ``kubectl exec``/``attach`` into the release namespace's pods: ``kubeflow-edit`` grants both to the
    Profile's ``default-editor``, and a shell in an admitted release pod would run as its identity."""
    return _policy(
        NO_EXEC_POLICY,
        ns,
        ["CONNECT"],
        ["pods/exec", "pods/attach"],
        [
            {
                "expression": "false",
                "message": f"no exec or attach in {ns}: its pods run the release with the release driver's rights",
            }
        ],
    )


def metadata_configmap_policy(ns: str = RELEASE_NS) -> list[dict]:
    """KFP's executor pods read ``metadata-grpc-configmap`` into their environment when it exists
    (argocompiler ``common.go`` ``metadataEnvFrom``, optional); in the release namespace it may hold only the
    metadata service's address, never a variable that changes what Python runs (``PYTHONPATH`` ...)."""
    return _policy(
        METADATA_CONFIGMAP_POLICY,
        ns,
        ["CREATE", "UPDATE"],
        ["configmaps"],
        [
            {
                "expression": "(!has(object.data) || object.data.all(k, k in "
                f"{_cel(METADATA_KEYS)})) && !has(object.binaryData)",
                "message": f"{METADATA_CONFIGMAP} may hold only {', '.join(METADATA_KEYS)}",
            }
        ],
        match_conditions=[
            {"name": "metadata-configmap", "expression": f"object.metadata.name == {_cel(METADATA_CONFIGMAP)}"}
        ],
    )


def no_token_secret_policy(ns: str = RELEASE_NS) -> list[dict]:
    """No ``kubernetes.io/service-account-token`` Secret in ``ns``, from anyone (module docstring): nothing of
    kfrelease, KFP or Argo needs one there (their pods get projected, expiring tokens). CREATE, and UPDATE too:
    a Secret's ``type`` is immutable (kubernetes ``pkg/apis/core/validation/validation.go``
    ``ValidateSecretUpdate``), but an UPDATE of a token Secret made before this policy could re-point its
    ``kubernetes.io/service-account.name`` annotation and clear ``data.token`` for the token controller to
    refill. DELETE is not matched, so such a Secret can be removed. ``object.type`` is the Secret's v1 field
    (defaulted to ``Opaque`` before validation: ``SetDefaults_Secret``); there is no exception for an admin
    identity, since EKS access entries cannot map anyone into ``system:masters`` and kfrelease needs no such
    Secret: whoever truly needs one removes the binding, knowingly."""
    return _policy(
        NO_TOKEN_SECRET_POLICY,
        ns,
        ["CREATE", "UPDATE"],
        ["secrets"],
        [
            {
                "expression": f"!has(object.type) || object.type != {_cel(SA_TOKEN_SECRET)}",
                "message": f"no {SA_TOKEN_SECRET} Secret in {ns}: it would hold a non-expiring token of a "
                "service account (the release driver's among them); pods get projected tokens",
            }
        ],
    )


def untrusted_identity_policy(ns: str = RELEASE_NS) -> list[dict]:
    """A pod labelled ``kfrelease.io/step-identity: untrusted`` (train, score-champion: the merged model code) is
    created only as ``kfrelease-untrusted-step`` (review eks5 L3). Its identity is the PodDefault's doing
    (``platform.step_identities``; Kubeflow's admission webhook, a mutating one, runs before validation), and
    ``kubeflow-edit`` may delete PodDefaults (kubeflow/manifests v1.11.0 and 26.03 ``common/kubeflow-roles``): without
    this policy a missing PodDefault silently ran the merged code as the run's ``default-editor``, with the registry's
    write; now such a pod is refused and the run fails."""
    return _policy(
        UNTRUSTED_IDENTITY_POLICY,
        ns,
        ["CREATE"],
        ["pods"],
        [
            {
                "expression": f"has(object.spec.serviceAccountName) && object.spec.serviceAccountName == {_cel(UNTRUSTED_SA)}",
                "message": f"a pod labelled {STEP_LABEL}: {UNTRUSTED} runs merged model code and must run as "
                f"{UNTRUSTED_SA} (is the PodDefault kfrelease-{UNTRUSTED}-step missing? kubectl apply -k the overlay)",
            }
        ],
        match_conditions=[
            {
                "name": "untrusted-step",
                "expression": f"has(object.metadata.labels) && {_cel(STEP_LABEL)} in object.metadata.labels && "
                f"object.metadata.labels[{_cel(STEP_LABEL)}] == {_cel(UNTRUSTED)}",
            }
        ],
    )


def task_result_policy(ns: str = RELEASE_NS) -> list[dict]:
    """The step identities (``kfrelease-untrusted-step``, ``kfrelease-release-driver``) write only their own pod's
    Argo task result (module docstring; review eks5 S0). Other identities are not matched: the run's own
    ``default-editor`` (KFP's driver pods, trusted steps) holds ``kubeflow-edit`` over the Workflows anyway."""
    users = [f"system:serviceaccount:{ns}:{sa}" for sa in (UNTRUSTED_SA, RELEASE_DRIVER_SA)]
    extra = f"request.userInfo.extra[{_cel(POD_NAME_EXTRA)}]"
    return _policy(
        TASK_RESULTS_POLICY,
        ns,
        ["CREATE", "UPDATE"],
        ["workflowtaskresults"],
        [
            {
                "expression": "variables.pod != ''",
                "message": "a step writes a task result only with its pod's own token (a token bound to a pod)",
            },
            {
                "expression": "variables.workflow != '' && variables.hash.matches('^[0-9]+$') && "
                "object.metadata.name == variables.workflow + '-' + variables.hash",
                "message": f"a task result is named <workflow>-<node hash> and labelled {ARGO_WORKFLOW_LABEL}: <workflow>",
            },
            {
                "expression": "variables.pod.startsWith(variables.workflow + '-') && "
                "variables.pod.endsWith('-' + variables.hash)",
                "message": "a step's pod writes only its own node's task result, never another step's or run's",
            },
        ],
        match_conditions=[{"name": "step-identity", "expression": f"request.userInfo.username in {_cel(users)}"}],
        variables=[
            {
                "name": "pod",
                "expression": f"has(request.userInfo.extra) && {_cel(POD_NAME_EXTRA)} in request.userInfo.extra && "
                f"size({extra}) == 1 ? {extra}[0] : ''",
            },
            {
                "name": "workflow",
                "expression": f"has(object.metadata.labels) && {_cel(ARGO_WORKFLOW_LABEL)} in object.metadata.labels "
                f"? object.metadata.labels[{_cel(ARGO_WORKFLOW_LABEL)}] : ''",
            },
            {
                "name": "hash",
                "expression": "object.metadata.name.substring(object.metadata.name.lastIndexOf('-') + 1)",
            },
        ],
        api_group="argoproj.io",
    )


def driver_service_policy(serving_ns: str, models: list[str]) -> list[dict]:
    """The release driver's Service writes in ``serving_ns``, bounded to the logged canary Services of ``models``
    (DNS slugs, ``inference.production_name``); module docstring."""
    driver = f"system:serviceaccount:{RELEASE_NS}:{RELEASE_DRIVER_SA}"
    labels = "object.metadata.labels"
    model, version = f"{labels}[{_cel('kfrelease.io/model')}]", f"{labels}[{_cel(VERSION_LABEL)}]"
    writes = "request.operation == 'DELETE' || "
    return _policy(
        DRIVER_SERVICES_POLICY,
        serving_ns,
        ["CREATE", "UPDATE", "DELETE"],
        ["services"],
        [
            {
                "expression": "request.operation != 'DELETE' || (has(oldObject.metadata.labels) && "
                f"{_cel(LOGGED_CANARY_LABEL)} in oldObject.metadata.labels && "
                f"oldObject.metadata.labels[{_cel(LOGGED_CANARY_LABEL)}] == 'true')",
                "message": "the release driver deletes only the logged canary Services it created",
            },
            {
                "expression": writes + f"(has(object.metadata.labels) && {_cel(LOGGED_CANARY_LABEL)} in {labels} && "
                f"{labels}[{_cel(LOGGED_CANARY_LABEL)}] == 'true' && {_cel('kfrelease.io/model')} in {labels} && "
                f"{model} in {_cel(models)} && {_cel(VERSION_LABEL)} in {labels} && "
                f"object.metadata.name == {model} + '-' + {version} + '-logged')",
                "message": f"the release driver writes only Services named <model>-<version>-logged with labels "
                f"{LOGGED_CANARY_LABEL}=true, kfrelease.io/model (one of {', '.join(models)}) and {VERSION_LABEL}",
            },
            {
                "expression": writes + "((!has(object.spec.type) || object.spec.type == 'ClusterIP') && "
                "(!has(object.spec.externalIPs) || size(object.spec.externalIPs) == 0))",
                "message": "the release driver's Services are ClusterIP with no externalIPs (CVE-2020-8554)",
            },
            {
                "expression": writes + "(has(object.spec.selector) && size(object.spec.selector) == 1 && "
                "'app' in object.spec.selector && "
                f"object.spec.selector['app'] == 'isvc.' + {model} + '-' + {version} + '-predictor' && "
                f"has(object.spec.ports) && object.spec.ports.all(p, has(p.targetPort) && p.targetPort == {AGENT_PORT}))",
                "message": "a logged canary Service selects only its canary's predictor pods "
                f"(app: isvc.<model>-<version>-predictor) and sends every port to the KServe agent ({AGENT_PORT})",
            },
        ],
        match_conditions=[{"name": "release-driver", "expression": f"request.userInfo.username == {_cel(driver)}"}],
    )


def _policy(
    name: str,
    ns: str,
    operations: list[str],
    resources: list[str],
    validations: list[dict],
    *,
    match_conditions: list[dict] | None = None,
    variables: list[dict] | None = None,
    api_group: str = "",
) -> list[dict]:
    """A ValidatingAdmissionPolicy on ``resources`` of ``api_group`` (core ``v1`` by default; any version of another
    group) that fails closed, and its binding to ``ns``."""
    spec: dict = {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [api_group],
                    "apiVersions": ["*" if api_group else "v1"],
                    "operations": operations,
                    "resources": resources,
                }
            ]
        },
    }
    if match_conditions:
        spec["matchConditions"] = match_conditions
    if variables:
        spec["variables"] = variables
    spec["validations"] = validations
    policy = {
        "apiVersion": f"{ADMISSION}/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    return [policy, _binding(name, ns)]


def _binding(policy: str, ns: str) -> dict:
    return {
        "apiVersion": f"{ADMISSION}/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy},
        "spec": {
            "policyName": policy,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }


def release_admission(env: Environment, pod_defaults: list[dict], ns: str = RELEASE_NS) -> list[dict]:
    """Every admission policy of the release namespace (module docstring)."""
    return (
        step_identity_policy(env, pod_defaults, ns)
        + no_exec_policy(ns)
        + metadata_configmap_policy(ns)
        + no_token_secret_policy(ns)
        + task_result_policy(ns)
        + untrusted_identity_policy(ns)
    )


def release_step_pod_defaults(docs: list[dict], ns: str = RELEASE_NS) -> list[dict]:
    """The PodDefaults of ``docs`` that a release step's pod gets (``platform.pipeline_pods_env``, every pod of a
    run; ``platform.step_identities``' release-driver one). Another PodDefault selecting release pods would add
    env or mounts this policy refuses: fail closed (tests/manifests/test_rbac.py admits every compiled step)."""
    names = {"pipeline-pods-env", f"kfrelease-{RELEASE_DRIVER_STEP}-step"}
    return [
        d
        for d in docs
        if d["kind"] == "PodDefault" and d["metadata"]["namespace"] == ns and d["metadata"]["name"] in names
    ]
