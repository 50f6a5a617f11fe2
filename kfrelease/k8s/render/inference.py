"""Cluster rendering of a release: KServe InferenceServices (built with the ``kserve`` SDK's V1beta1 models)
and the Istio VirtualService that mirrors production traffic to the staging candidate.

Deployment modes (``RolloutSpec.serving.deployment_mode``):

- ``Serverless`` (the EKS default, see docs/gateway.md): the production InferenceService's predictor is the
  newest version and ``canaryTrafficPercent: N`` gives it N %, the previously rolled-out revision keeps the
  rest (Knative revisions). Promotion removes the field. ``canaryTrafficPercent`` is silently ignored in
  RawDeployment mode (kserve/kserve#5335), which is why the mode decides the rendering.
- ``RawDeployment`` (KServe's Standard mode): the stable predictor stays, the candidate is an entry of the
  ``spec.canary`` list with ``trafficPercent`` (kserve/kserve#5672, KServe 0.20; the webhook accepts it only
  with the annotation ``serving.kserve.io/deploymentMode: Standard``, requires ``predictor.name``, and
  refuses maxReplicas/scaleTarget/scaleMetric/autoScaling on a canary:
  ``pkg/apis/serving/v1beta1/inference_service_validation.go``). The VirtualService then also carries
  the weights, since it routes to the predictor Services directly.

Shadow: KServe has no traffic mirroring (kserve/kserve#2978); an Istio VirtualService route to the
production predictor with ``mirror`` (the staging predictor) and ``mirrorPercentage`` does it; Envoy
discards mirrored responses. The mirrored request keeps the primary's Host (Envoy appends ``-shadow``
unless Istio disables that: istio/istio#57530, #57708), which a Knative route would not match, so the
staging InferenceService always runs in Standard mode: a plain Service that ignores the Host.

Model formats: each predictor declares ``modelFormat.name`` as its version's registry entry says
(``kfrelease.registry.artifact.model_format(entry)``: the served flavour's, ``onnx``, ``xgboost``, ``lightgbm``
or ``sklearn``), and the ServingRuntime lists every format the project's predictor serves
(``artifact.model_formats()``). KServe's
InferenceService reconciler refuses a predictor whose named ``runtime`` does not list its ``modelFormat``
("specified runtime ... does not support specified framework/version": ``RuntimeSupportsModel`` in
kserve/kserve ``pkg/apis/serving/v1beta1/predictor_model.go`` matches ``mt:<name>`` and, when the predictor
gives one, ``mt:<name>:<version>``; with an explicit runtime ``autoSelect`` does not matter;
``pkg/controller/v1beta1/inferenceservice/components/predictor.go``). The predictor itself loads the flavour
its ``model.json`` names whatever the declaration says; the declaration is what the cluster shows and checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from kfrelease.errors import ConfigError
from kfrelease.k8s.versions import kserve_version as capabilities
from kfrelease.registry.artifact import model_format, model_formats, model_servers_refuse_pickles
from kfrelease.rollout.spec import RolloutSpec, RolloutSpecError
from kfrelease.rollout.traffic import TrafficState

KSERVE_API = "serving.kserve.io/v1beta1"
ISTIO_API = "networking.istio.io/v1"
RUNTIME = "kfrelease-predictor"
DEFAULT_INGRESS_GATEWAY = "kubeflow/kubeflow-gateway"
DEFAULT_DOMAIN = "example.com"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STORAGE_SCHEMES = ("oci://", "s3://")
#: Prefix of the predictors' own service accounts: one per InferenceService, so one per model and stage
#: (``predictor_service_account``): production's InferenceService (its stable predictor and its canaries: a Serverless
#: canary is a revision of the same predictor spec, a Standard-mode one an entry of its ``spec.canary``) and the
#: staging one (the shadow). Istio's peer identity is the pod's service account, so the log sink tells each model's
#: shadow from its production, and one model's predictors from another's, by it (``kfrelease.collectors.sink``
#: ``--writer``; the ALLOW policy names them all: ``kfrelease.k8s.render.mesh``).
PREDICTOR_SERVICE_ACCOUNT_PREFIX = "kfrelease-predictor-"
#: The stages each of a model's predictor identities may log (``ce-stage`` / the InferenceService's suffix,
#: ``sink._stage``), by the stage its InferenceService serves.
PREDICTOR_STAGES = {"production": ("production", "canary"), "staging": ("staging",)}
#: KServe version the cluster runs when the caller names none (``kfrelease.k8s.versions``: the newest).
DEFAULT_KSERVE_VERSION = "0.20.0"
#: Annotation on the VirtualService recording the traffic state the release moved to (resume after eviction).
STATE_ANNOTATION = "kfrelease.io/traffic-state"
#: The model server's container port: named ``http1`` in the ServingRuntime (kept in raw mode), renamed
#: ``user-port`` by Knative in Serverless mode (knative/serving ``pkg/reconciler/revision/resources``).
PREDICTOR_PORT_NAME = "http1"
KNATIVE_USER_PORT_NAME = "user-port"
#: Pod label of each predictor pod naming its model version (a DNS slug); the PodMonitor copies it onto every
#: series of the pod as ``kfrelease_io_version`` (``podTargetLabels``), KServe's own series included.
VERSION_LABEL = "kfrelease.io/version"
#: The ``stage`` label a release's canary carries on the cluster: the canary predictor is rendered with the
#: production spec (promotion must not restart it), so its series say stage="production"; the version tells
#: the canary apart.
CANARY_SERIES_STAGE = "production"
FEEDBACK_SERVICE = "kfrelease-feedback"
#: The header the KServe agent takes a request's CloudEvent id from (kserve/kserve ``pkg/logger/worker.go``
#: ``CloudEventsIdHeader``); the release VirtualService sets it to the request's ``x-request-id``.
REQUEST_ID_HEADER = "ce-id"
#: The header of the release steps' replay of the canary's logged inputs to production's own predictor (the
#: canary's labelled accuracy check, ``kfrelease.release.controller.production_scorer``): the release
#: VirtualService's ``replay`` route sends a request carrying it, through the ingress gateway only, to
#: production's predictor alone; the gateway's ``kfrelease-production-replay`` policy
#: (``kfrelease.k8s.render.mesh.replay_gateway_policy``) refuses it from anyone but the release driver.
REPLAY_HEADER = "x-kfrelease-replay"
REPLAY_VALUE = "production"
#: The KServe agent's port in a predictor pod whose InferenceService has a ``logger`` (kserve/kserve
#: ``pkg/constants/constants.go`` ``InferenceServiceDefaultAgentPort``; the injected container's ``agent-port``:
#: ``pkg/webhook/admission/pod/agent_injector.go``).
AGENT_PORT = 9081
#: Label of the Services kfrelease renders in front of a Standard-mode canary's KServe agent
#: (``logged_canary_service``); the release driver lists, creates and deletes them by it.
LOGGED_CANARY_LABEL = "kfrelease.io/logged-canary"


def predictor_service(isvc: str, predictor: str | None, kserve_version: str = DEFAULT_KSERVE_VERSION) -> str:
    """The Service KServe gives a predictor: from 0.20 a named predictor's is ``<isvc>-<name>-predictor``
    (kserve/kserve ``pkg/constants/constants.go`` ``PredictorServiceName(name, predictorName...)`` at v0.20.0);
    before, always ``<isvc>-predictor`` (the same function at v0.15.2 takes no predictor name). Named
    predictors' Services came with the ``spec.canary`` list (kserve/kserve#5672)."""
    if predictor and capabilities(kserve_version).has_canary_list:
        return f"{isvc}-{predictor}-predictor"
    return f"{isvc}-predictor"


def logged_canary_service_name(spec: RolloutSpec, canary: str) -> str:
    return f"{production_name(spec)}-{predictor_name(canary)}-logged"


def logged_canary_service(spec: RolloutSpec, canary: str, kserve_version: str = DEFAULT_KSERVE_VERSION) -> dict:
    """The Service the release VirtualService sends a Standard-mode canary's share to: port 80 to the canary
    pods' KServe agent (9081), so the canary's requests are logged as production's are.

    KServe 0.20 builds each ``spec.canary`` entry's Deployment and Service with an empty
    ``ComponentExtensionSpec`` but ``MinReplicas`` (kserve/kserve@v0.20.0
    ``pkg/controller/v1beta1/inferenceservice/components/predictor.go`` ``reconcileCanaryDeployments``, lines
    937-941: ``componentExt := v1beta1.ComponentExtensionSpec{}``), and its Service targets the agent only
    ``if componentExt.Logger != nil`` (``reconcilers/service/service_reconciler.go`` ``createDefaultSvc``, lines
    104-175): KServe's canary Service sends port 80 to the model server's 8080, past the agent, although the
    canary pod has the agent (``buildPredictorResources`` adds the logger annotations on both paths,
    ``predictor.go:104``; ``InjectAgent`` reads them). The stable predictor's Service is built from the
    InferenceService's own ``ComponentExtensionSpec`` (logger set) and targets 9081.

    The selector is KServe's own for that Deployment's pods (``app: isvc.<PredictorServiceName>``:
    ``reconcilers/deployment/deployment_reconciler.go`` ``createRawDefaultDeployment``). Its labels never hold
    both ``serving.kserve.io/inferenceservice`` and ``component``: KServe deletes every Service of the
    InferenceService's predictor that is not one of its own (``reconcileCanaryDeployments``' orphan clean-up
    lists Services by exactly those two labels). Only Standard mode on KServe 0.20 has ``spec.canary``
    (``versions.KServeVersion.has_canary_list``; RawDeployment needs it: ``render.tree``); a Serverless canary
    is a revision of the same Knative Service, built from the InferenceService's ``ComponentExtensionSpec``
    (logger set: ``reconcilers/knative/ksvc_reconciler.go``), whose queue-proxy the agent injector points at
    9081 (``USER_PORT``), so it logs without this."""
    kserve_service = predictor_service(production_name(spec), predictor_name(canary), kserve_version)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": logged_canary_service_name(spec, canary),
            "namespace": spec.serving.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "kfrelease",
                "kfrelease.io/model": _dns(spec.model),
                LOGGED_CANARY_LABEL: "true",
                VERSION_LABEL: version_slug(canary),
            },
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": f"isvc.{kserve_service}"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": AGENT_PORT}],
        },
    }


def _dns(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def version_slug(version: str) -> str:
    """``V1.2.0`` -> ``v1-2-0`` (a DNS label part)."""
    return _dns(version)


def production_name(spec: RolloutSpec) -> str:
    return _dns(spec.model)


def staging_name(spec: RolloutSpec) -> str:
    return f"{production_name(spec)}-staging"


def predictor_service_account(isvc: str) -> str:
    """The service account of the predictor pods of InferenceService ``isvc`` (``kfrelease-predictor-<isvc>``)."""
    return f"{PREDICTOR_SERVICE_ACCOUNT_PREFIX}{isvc}"


def predictor_identity(spec: RolloutSpec, stage: str) -> str:
    """The service account a predictor of ``spec``'s model serving ``stage`` runs as: the staging InferenceService's
    for ``staging``, production's for production and its canaries."""
    return predictor_service_account(staging_name(spec) if stage == "staging" else production_name(spec))


def predictor_writers(specs) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each predictor service account of these models -> (the model its events must name, the stages it logs):
    what the log sink is started with (``kfrelease.k8s.render.mesh.logsink_writer_args``). A model whose
    InferenceService name is another's (``a-staging``'s production is ``a``'s staging) is a ConfigError."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for spec in specs:
        for stage, stages in PREDICTOR_STAGES.items():
            sa = predictor_identity(spec, stage)
            if sa in out and out[sa] != (production_name(spec), stages):
                raise ConfigError(
                    f"model {spec.model}'s {stage} InferenceService has the name of model {out[sa][0]}'s "
                    f"({sa.removeprefix(PREDICTOR_SERVICE_ACCOUNT_PREFIX)}): rename one of them in its model.yaml"
                )
            out[sa] = (production_name(spec), stages)
    return out


def predictor_name(version: str) -> str:
    """Standard-mode predictor name of a version. Stable and canary use the same name, so promotion
    retargets the stable predictor to the canary's Deployment without a restart (kserve/kserve#5672)."""
    return version_slug(version)


def default_logger_url(spec: RolloutSpec) -> str:
    return f"http://kfrelease-logsink.{spec.serving.namespace}.svc.cluster.local/"


def _storage_uri(storage_uris: Mapping[str, str], version: str) -> str:
    uri = storage_uris.get(version)
    if not uri:
        raise ConfigError(
            f"no storage URI for model version {version}; give its ModelCar image (oci://...) or s3:// URI"
        )
    if not uri.startswith(STORAGE_SCHEMES):
        raise ConfigError(f"storage URI {uri!r} of {version} must start with oci:// (ModelCar) or s3://")
    return uri


def _api():
    from kubernetes.client import ApiClient  # heavy: kubernetes

    return ApiClient()


def to_dict(obj) -> dict:
    """A kserve/kubernetes SDK model as the camelCase dict the API server takes (None fields dropped)."""
    return _api().sanitize_for_serialization(obj)


def _model_format(formats: Mapping[str, str] | None, version: str) -> str:
    """The ``modelFormat.name`` of ``version``: from ``formats`` (each version's
    ``artifact.model_format(entry)``, as the release steps read the registry); a version not given there (the
    bootstrap's first production, rendered before any entry is at hand) is declared as an entry that names no
    flavour is served (``artifact.model_format({})``), and its first release patch declares its own."""
    name = (formats or {}).get(version) or model_format({})
    if name not in model_formats():
        raise ConfigError(
            f"model version {version} is declared as format {name!r}, which the ServingRuntime does not serve "
            f"(it serves {', '.join(model_formats())}); register it again or add the flavour to kfrelease.registry.artifact"
        )
    return name


def _model_spec(spec: RolloutSpec, version: str, stage: str, uri: str, model_format: str):
    from kserve import V1beta1ModelFormat, V1beta1ModelSpec  # heavy: kserve
    from kubernetes.client import V1EnvVar, V1ResourceRequirements  # heavy: kubernetes

    s = spec.serving
    return V1beta1ModelSpec(
        model_format=V1beta1ModelFormat(name=model_format),
        runtime=RUNTIME,
        storage_uri=uri,
        env=[
            V1EnvVar(name="KFRELEASE_MODEL_NAME", value=spec.model),
            V1EnvVar(name="KFRELEASE_MODEL_VERSION", value=version),
            V1EnvVar(name="KFRELEASE_STAGE", value=stage),
        ],
        resources=V1ResourceRequirements(
            requests={"cpu": s.cpu, "memory": s.memory},
            limits={"cpu": s.cpu, "memory": s.memory},
        ),
    )


def _predictor(
    spec: RolloutSpec,
    version: str,
    stage: str,
    uri: str,
    logger_url: str,
    *,
    name=None,
    canary=False,
    mode: str | None = None,
    model_formats: Mapping[str, str] | None = None,
):
    from kserve import V1beta1LoggerSpec, V1beta1PredictorSpec  # heavy: kserve

    s = spec.serving
    mode = mode or s.deployment_mode
    kwargs = {
        "name": name,
        "model": _model_spec(spec, version, stage, uri, _model_format(model_formats, version)),
        "logger": V1beta1LoggerSpec(mode="all", url=logger_url),
        "service_account_name": predictor_identity(spec, stage),
        "labels": {
            VERSION_LABEL: version_slug(version),
            "kfrelease.io/stage": stage,
        },
    }
    if canary:  # the Standard-mode webhook refuses autoscaling fields on a canary (fixed replicas)
        kwargs["min_replicas"] = s.min_replicas
    elif mode == "Serverless":
        kwargs.update(
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            scale_metric="concurrency",
            scale_target=s.scale_target,
        )
    else:  # Standard mode scales with an HPA on CPU (concurrency is a Knative metric)
        kwargs.update(
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            scale_metric="cpu",
            scale_target=75,
        )
    return V1beta1PredictorSpec(**kwargs)


def _mode_value(mode: str, kserve_version: str) -> str:
    """The deploymentMode annotation of ``mode`` on that KServe (``Standard`` from 0.16, ``RawDeployment``
    before: ``kfrelease.k8s.versions``)."""
    return capabilities(kserve_version).mode_annotation(mode)


def _isvc(
    spec: RolloutSpec,
    name: str,
    stage: str,
    predictor,
    canary=None,
    mode: str | None = None,
    kserve_version: str = DEFAULT_KSERVE_VERSION,
) -> dict:
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec  # heavy: kserve
    from kubernetes.client import V1ObjectMeta  # heavy: kubernetes

    obj = V1beta1InferenceService(
        api_version=KSERVE_API,
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=name,
            namespace=spec.serving.namespace,
            labels={
                "app.kubernetes.io/part-of": "kfrelease",
                "kfrelease.io/model": _dns(spec.model),
                "kfrelease.io/stage": stage,
            },
            annotations={
                MODE_ANNOTATION: _mode_value(mode or spec.serving.deployment_mode, kserve_version),
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor, canary=canary),
    )
    return to_dict(obj)


def render_inference_services(
    spec: RolloutSpec,
    state: TrafficState,
    storage_uris: Mapping[str, str],
    *,
    logger_url: str | None = None,
    kserve_version: str = DEFAULT_KSERVE_VERSION,
    model_formats: Mapping[str, str] | None = None,
) -> list[dict]:
    """The InferenceServices of a traffic state: production (with its canary) and, when a shadow runs, the
    staging candidate. ``storage_uris`` maps each model version to its ModelCar ``oci://`` or ``s3://`` URI,
    ``model_formats`` to its ``modelFormat`` (``artifact.model_format(entry)``; see the module docstring);
    ``kserve_version`` is the cluster's (its deploymentMode annotation values)."""
    if not state.primary and not state.canary:
        raise RolloutSpecError("traffic state has no version to serve; no traffic was moved")
    logger_url = logger_url or default_logger_url(spec)
    mode = spec.serving.deployment_mode
    primary = state.primary or state.canary
    # A canary at weight 0 stays rendered: in Serverless mode ``canaryTrafficPercent: 0`` is KServe's
    # instant rollback (no new revision); ``TrafficState.rolled_back()`` (no canary) rolls forward to the
    # primary's spec instead.
    canary = state.canary if state.canary and state.primary else None
    out = []
    if mode == "Serverless":
        # The spec describes the newest revision; canaryTrafficPercent gives it that share, the last
        # revision rolled out at 100 % keeps the rest. A canary at 100 % is rendered as promoted. Its spec
        # is the same whether canary or promoted (stage "production"; the version tells them apart), so
        # promotion only removes canaryTrafficPercent and Knative creates no new revision.
        newest = canary or primary
        pred = _predictor(
            spec,
            newest,
            "production",
            _storage_uri(storage_uris, newest),
            logger_url,
            model_formats=model_formats,
        )
        if canary and state.canary_weight < 100:
            pred.canary_traffic_percent = state.canary_weight
        out.append(_isvc(spec, production_name(spec), "production", pred, kserve_version=kserve_version))
    else:
        from kserve import V1beta1CanarySpec  # heavy: kserve

        pred = _predictor(
            spec,
            primary,
            "production",
            _storage_uri(storage_uris, primary),
            logger_url,
            name=predictor_name(primary),
            model_formats=model_formats,
        )
        canaries = None
        if canary:
            cpred = _predictor(
                spec,
                canary,
                "production",
                _storage_uri(storage_uris, canary),
                logger_url,
                name=predictor_name(canary),
                canary=True,
                model_formats=model_formats,
            )
            # stage "production" as on the stable predictor: promotion retargets the stable predictor to
            # this Deployment without a restart only if their specs agree (kserve/kserve#5672)
            canaries = [V1beta1CanarySpec(predictor=cpred, traffic_percent=state.canary_weight)]
        out.append(_isvc(spec, production_name(spec), "production", pred, canaries, kserve_version=kserve_version))
    if state.shadow:
        # The shadow always runs in Standard (raw) mode: a plain Deployment and ClusterIP Service that answer
        # whatever Host the mirrored request carries (Envoy keeps the primary's Host, + "-shadow" on older
        # Istio), which a Knative route would refuse.
        uri = _storage_uri(storage_uris, state.shadow)
        pred = _predictor(
            spec, state.shadow, "staging", uri, logger_url, mode="RawDeployment", model_formats=model_formats
        )
        out.append(
            _isvc(spec, staging_name(spec), "staging", pred, mode="RawDeployment", kserve_version=kserve_version)
        )
    return out


def _svc_host(spec: RolloutSpec, service: str) -> str:
    return f"{service}.{spec.serving.namespace}.svc.cluster.local"


def release_service_name(spec: RolloutSpec) -> str:
    """The Service that names a model's release host inside the mesh (``<model>-release``): selector-less, it
    exists so that DNS resolves and the in-mesh clients' sidecars apply the release's VirtualService to it."""
    return f"{production_name(spec)}-release"


def client_hosts(spec: RolloutSpec, domain: str = DEFAULT_DOMAIN) -> list[str]:
    """The release hosts of a model: ``<model>.<domain>`` (the public one, behind the ALB's ``*.<domain>``
    rule) and ``<model>-release.<ns>.svc.cluster.local`` (in the mesh, ``render_release_service``).

    They are the release's own, never KServe's or Knative's hosts (``<isvc>-<ns>.<domain>``,
    ``<isvc>-predictor.<ns>.svc.cluster.local``...): two VirtualServices on one host and gateway have an
    undefined route order (Istio merges them; net-istio writes the mesh VirtualService of every Knative
    Service's hosts, KServe the top-level one of every InferenceService), and the only way to keep KServe's
    off the hosts would be ``ingress.disableIstioVirtualHost``, which holds for every InferenceService of the
    cluster. So clients call the release hosts (the shadow's mirror and the canary's weights are on them);
    KServe's own hosts still answer, without the mirror, and are not given to clients."""
    ns, prod = spec.serving.namespace, production_name(spec)
    return [f"{prod}.{domain}", f"{release_service_name(spec)}.{ns}.svc.cluster.local"]


def render_release_service(spec: RolloutSpec) -> dict:
    """The selector-less Service ``<model>-release`` (see ``client_hosts``): no pod behind it, the sidecars
    route its requests by the release's VirtualService."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": release_service_name(spec),
            "namespace": spec.serving.namespace,
            "labels": {"app.kubernetes.io/part-of": "kfrelease", "kfrelease.io/model": _dns(spec.model)},
        },
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def traffic_state_annotation(state: TrafficState) -> str:
    recorded = {
        "primary": state.primary,
        "shadow": state.shadow,
        "canary": state.canary,
        "canary_weight": state.canary_weight,
        "mirror_percent": state.mirror_percent,
    }
    if state.unavailable:
        recorded["unavailable"] = state.unavailable
    return json.dumps(recorded, sort_keys=True)


def recorded_state(doc: dict) -> TrafficState | None:
    """The traffic state a VirtualService rendered here records (None when it records none)."""
    text = ((doc.get("metadata") or {}).get("annotations") or {}).get(STATE_ANNOTATION)
    return TrafficState(**json.loads(text)) if text else None


def render_virtual_service(
    spec: RolloutSpec,
    state: TrafficState,
    *,
    host: str | None = None,
    gateways: list[str] | None = None,
    domain: str = DEFAULT_DOMAIN,
    kserve_version: str = DEFAULT_KSERVE_VERSION,
) -> dict:
    """The Istio VirtualService clients call: routes to production (and, in RawDeployment mode, to the
    canary by weight), mirrors ``mirror_percent`` of the requests to the staging candidate, and routes
    ``/v1/feedback`` to the feedback service. Its hosts are every host clients use (``client_hosts``); it
    records the traffic state in the annotation ``kfrelease.io/traffic-state``."""
    prod = production_name(spec)
    raw = spec.serving.deployment_mode == "RawDeployment"
    primary = state.primary or state.canary
    if not primary:
        return _unavailable_virtual_service(spec, state, host=host, gateways=gateways, domain=domain)
    stable_predictor = predictor_name(primary) if raw and primary else None
    predictor_host = _svc_host(spec, predictor_service(prod, stable_predictor, kserve_version))
    if raw and state.canary and state.primary and state.canary_weight > 0:
        # the canary's own Service skips its KServe agent on 0.20 (``logged_canary_service``)
        canary_host = _svc_host(spec, logged_canary_service_name(spec, state.canary))
        route = [
            {"destination": {"host": predictor_host, "port": {"number": 80}}, "weight": 100 - state.canary_weight},
            {"destination": {"host": canary_host, "port": {"number": 80}}, "weight": state.canary_weight},
        ]
        route = [r for r in route if r["weight"] > 0]
    else:  # Serverless: Knative splits between revisions behind the predictor host
        route = [{"destination": {"host": predictor_host, "port": {"number": 80}}}]
    http = {
        "name": "predict",
        "match": [
            {"uri": {"prefix": "/v1/models/"}},
            {"uri": {"prefix": "/v2/models/"}},
        ],
        "route": route,
        "timeout": "60s",
    }
    # Every predictor's KServe agent (the InferenceService's ``logger``) ids its CloudEvents by the request's
    # ``Ce-Id`` header, else by a new UUID of its own (kserve/kserve ``pkg/logger/handler.go``
    # ``getOrCreateID``): without ``ce-id`` the production, shadow and canary events of one request had three
    # ids, none the ``x-request-id`` the client labels with, so no labelled pair ever formed. Envoy fills
    # ``%REQ(x-request-id)%`` from the id it kept or generated (custom request headers, envoyproxy/envoy#8782;
    # Istio passes header values through: istio/istio#19761), and a mirrored copy carries the route's headers.
    request_headers = {REQUEST_ID_HEADER: "%REQ(x-request-id)%"}
    if not raw:  # Knative's ingress routes by Host
        request_headers["Host"] = predictor_host
    http["headers"] = {"request": {"set": request_headers}}
    mirror = float(state.mirror_percent or spec.shadow.mirror_percent) if state.shadow else 0.0
    if state.shadow and mirror > 0:
        http["mirror"] = {
            "host": _svc_host(spec, predictor_service(staging_name(spec), None, kserve_version)),
            "port": {"number": 80},
        }
        http["mirrorPercentage"] = {"value": mirror}
    gateways = gateways or [DEFAULT_INGRESS_GATEWAY, "mesh"]
    replay = _replay_route(spec, state, [g for g in gateways if g != "mesh"], kserve_version)
    return _release_virtual_service(
        spec, state, http, host=host, gateways=gateways, domain=domain, before=[replay] if replay else []
    )


def replay_destination(spec: RolloutSpec, state: TrafficState, kserve_version: str = DEFAULT_KSERVE_VERSION) -> str:
    """The host that serves production's version alone, whatever the canary's share:

    - RawDeployment (Standard mode, KServe 0.20): the stable predictor's own Service
      (``<isvc>-<predictor>-predictor``, ``predictor_service``); the canary has its own.
    - Serverless during a canary: Knative's ``prev`` tag, which KServe gives the last revision rolled out at
      100 % when ``canaryTrafficPercent`` is set (kserve/kserve
      ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``: traffic targets
      ``LatestRevision`` with the canary's percent and ``Tag: "prev"`` with the rest); Knative names a tag's
      cluster-local host ``<tag>-<route>`` (its placeholder Service). Without a canary ``<isvc>-predictor``
      serves production alone."""
    prod = production_name(spec)
    if spec.serving.deployment_mode == "RawDeployment":
        return _svc_host(spec, predictor_service(prod, predictor_name(state.primary), kserve_version))
    service = predictor_service(prod, None, kserve_version)
    if state.canary and 0 < state.canary_weight < 100:
        service = f"prev-{service}"
    return _svc_host(spec, service)


def _replay_route(spec: RolloutSpec, state: TrafficState, gateways: list[str], kserve_version: str) -> dict | None:
    """The ``replay`` route (first, so it wins over ``predict``): a model request that carries
    ``x-kfrelease-replay: production`` and arrives at the ingress gateway (``match.gateways``: an in-mesh
    client's sidecar never applies it) goes to production's predictor alone (``replay_destination``), never
    mirrored. Only when a production version serves; a provisional first model has no production to ask."""
    if not state.primary or not gateways:
        return None
    dest = replay_destination(spec, state, kserve_version)
    headers = {REQUEST_ID_HEADER: "%REQ(x-request-id)%"}
    if spec.serving.deployment_mode != "RawDeployment":  # Knative's ingress routes by Host
        headers["Host"] = dest
    return {
        "name": "replay",
        "match": [
            {"uri": {"prefix": prefix}, "headers": {REPLAY_HEADER: {"exact": REPLAY_VALUE}}, "gateways": gateways}
            for prefix in ("/v1/models/", "/v2/models/")
        ],
        "route": [{"destination": {"host": dest, "port": {"number": 80}}}],
        "headers": {"request": {"set": headers}},
        "timeout": "60s",
    }


def _unavailable_virtual_service(
    spec: RolloutSpec, state: TrafficState, *, host: str | None, gateways: list[str] | None, domain: str
) -> dict:
    """The VirtualService of a model no version serves (``TrafficState.unavailable``: a first model withdrawn
    by its release): predictions get a 503 whose JSON body says why, from the sidecar or the ingress gateway
    itself (Istio's ``HTTPRoute.directResponse``, a status and a ``body.string``: istio/api
    ``networking/v1alpha3/virtual_service.proto`` ``HTTPDirectResponse``, validated by istio/istio
    ``pkg/config/validation`` ``validateHTTPDirectResponse``: a status from 200 to 599), instead of a bare
    404 from a route with no destination. Feedback still reaches the feedback service."""
    if not state.unavailable:
        raise RolloutSpecError("traffic state has no version to serve and says not why; no traffic was moved")
    predict = {
        "name": "predict",
        "match": [{"uri": {"prefix": "/v1/models/"}}, {"uri": {"prefix": "/v2/models/"}}],
        "directResponse": {"status": 503, "body": {"string": json.dumps({"error": state.unavailable})}},
    }
    return _release_virtual_service(spec, state, predict, host=host, gateways=gateways, domain=domain)


def _release_virtual_service(
    spec: RolloutSpec,
    state: TrafficState,
    predict: dict,
    *,
    host: str | None,
    gateways: list[str] | None,
    domain: str,
    before: list[dict] = (),
) -> dict:
    """The model's release VirtualService around its ``predict`` route: the clients' hosts (and ``host``), the
    ingress gateway and the mesh, the feedback route, the traffic state it was rendered from."""
    hosts = client_hosts(spec, domain)
    if host and host not in hosts:
        hosts.insert(0, host)
    return {
        "apiVersion": ISTIO_API,
        "kind": "VirtualService",
        "metadata": {
            "name": f"{production_name(spec)}-release",
            "namespace": spec.serving.namespace,
            "labels": {"app.kubernetes.io/part-of": "kfrelease", "kfrelease.io/model": _dns(spec.model)},
            "annotations": {STATE_ANNOTATION: traffic_state_annotation(state)},
        },
        "spec": {
            "hosts": hosts,
            "gateways": gateways or [DEFAULT_INGRESS_GATEWAY, "mesh"],
            "http": [*before, predict, _feedback_route(spec)],
        },
    }


def named_route(vs: dict, name: str) -> dict:
    """The HTTP route of a release VirtualService by its name (``replay``, ``predict``, ``feedback``)."""
    for route in vs["spec"]["http"]:
        if route.get("name") == name:
            return route
    raise KeyError(f"VirtualService {vs['metadata']['name']} has no route named {name!r}")


def _feedback_route(spec: RolloutSpec) -> dict:
    return {
        "name": "feedback",
        "match": [{"uri": {"prefix": "/v1/feedback"}}],
        "route": [{"destination": {"host": _svc_host(spec, FEEDBACK_SERVICE), "port": {"number": 80}}}],
        "timeout": "30s",
    }


def render_serving_runtime(spec: RolloutSpec, image: str) -> dict:
    """The ServingRuntime our InferenceServices use: the project image running the kfrelease predictor on
    the model KServe puts at ``/mnt/models`` (ModelCar or storage initializer). It lists every model format the
    predictor serves (one per flavour: ``artifact.model_formats()``), each chosen only by name
    (``autoSelect: false``: our InferenceServices name this runtime; see the module docstring)."""
    # heavy: kserve
    from kserve import (
        V1alpha1ServingRuntime,
        V1alpha1ServingRuntimeSpec,
        V1alpha1SupportedModelFormat,
    )
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ObjectMeta  # heavy: kubernetes

    # no pickle is read in a predictor: its service account is the identity the log sink trusts (review eks4 R2;
    # ``artifact.PICKLE_REFUSING_TARGETS``); the ModelCar's pickle-served version stops at load with the reason
    refuse = V1EnvVar(name="KFRELEASE_REFUSE_PICKLE", value="1" if model_servers_refuse_pickles("cluster") else "0")
    container = V1Container(
        name="kserve-container",
        image=image,
        command=["python", "-m", "kfrelease.serving.predictor"],
        # The model's name, not the InferenceService's: the staging InferenceService answers the mirrored
        # copies of requests for /v1/models/<model>, and the series carry model=<model> on every predictor.
        # ``$(VAR)`` is expanded by the kubelet from the container's env (KServe merges the predictor's model
        # env into this container: ``MergeRuntimeContainers``), ``{{.Name}}`` by KServe (the InferenceService).
        args=[
            "--model-dir",
            "/mnt/models",
            "--name",
            "$(KFRELEASE_MODEL_NAME)",
            "--inference-service",
            "{{.Name}}",
            "--http-port",
            "8080",
            "--host",
            "0.0.0.0",
            "--stage",
            "$(KFRELEASE_STAGE)",
        ],  # no --logger-url: on a cluster the InferenceService's logger (the KServe agent) sends the events
        env=[refuse],
        # "http1": Knative accepts only h2c/http1 (and renames it user-port in the pod); raw mode keeps it
        ports=[V1ContainerPort(name=PREDICTOR_PORT_NAME, container_port=8080, protocol="TCP")],
    )
    obj = V1alpha1ServingRuntime(
        api_version="serving.kserve.io/v1alpha1",
        kind="ServingRuntime",
        metadata=V1ObjectMeta(name=RUNTIME, namespace=spec.serving.namespace),
        spec=V1alpha1ServingRuntimeSpec(
            supported_model_formats=[
                V1alpha1SupportedModelFormat(name=name, version="1", auto_select=False) for name in model_formats()
            ],
            protocol_versions=["v1", "v2"],
            containers=[container],
        ),
    )
    return to_dict(obj)


def render_release(spec: RolloutSpec, state: TrafficState, storage_uris: Mapping[str, str], **kwargs) -> list[dict]:
    """Every object of a release's traffic state: InferenceService(s), a Standard-mode canary's
    ``logged_canary_service`` and the VirtualService."""
    logger_url = kwargs.pop("logger_url", None)
    model_formats = kwargs.pop("model_formats", None)
    kserve_version = kwargs.get("kserve_version") or DEFAULT_KSERVE_VERSION
    if kwargs.get("domain") is None:
        kwargs.pop("domain", None)
    if state.unavailable:  # no version serves: no InferenceService, the VirtualService says why
        return [render_virtual_service(spec, state, **kwargs)]
    raw_canary = spec.serving.deployment_mode == "RawDeployment" and state.canary and state.primary
    return [
        *render_inference_services(
            spec,
            state,
            storage_uris,
            logger_url=logger_url,
            kserve_version=kserve_version,
            model_formats=model_formats,
        ),
        *([logged_canary_service(spec, state.canary, kserve_version)] if raw_canary else []),
        render_virtual_service(spec, state, **kwargs),
    ]
