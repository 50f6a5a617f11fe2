"""A cluster twin: real local processes driven by exactly what the cluster path renders.

No Kubernetes API, KServe controller, Istio or ALB runs on these machines, so this harness stands in for
the controllers that turn rendered objects into running things, and runs the things themselves for real:

- **Pods** (``predictor_pods``): each predictor of a rendered InferenceService becomes a real
  ``python -m kfrelease.serving.predictor`` process started with the container KServe would build from the
  rendered ServingRuntime and InferenceService: the runtime's container with the predictor's model env merged
  in by name (kserve/kserve ``pkg/controller/v1beta1/inferenceservice/utils/utils.go``
  ``MergeRuntimeContainers``), ``{{.Name}}``-style placeholders filled from the InferenceService
  (``ReplacePlaceholders`` there), then ``$(VAR)`` references expanded from the container's env as the
  kubelet does (kubernetes ``third_party/forked/golang/expansion/expand.go``: a defined ``$(VAR)`` is
  replaced, an undefined one is left as written, ``$$`` is ``$``). The pod's labels are the union KServe
  gives it (runtime, InferenceService, predictor labels, then ``serving.kserve.io/inferenceservice`` and
  ``component: predictor``: ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``). The only
  substitutions are what a pod has and this machine has not: ``python`` is this interpreter, the model
  volume ``/mnt/models`` is a local directory, the container port and ``0.0.0.0`` become a free port on
  127.0.0.1.
- **Scraping** (``scrape_config``): the real Prometheus (Debian's) gets the scrape configuration the
  Prometheus operator generates from the rendered PodMonitor (prometheus-operator ``pkg/prometheus/promcfg.go``
  ``generatePodMonitorConfig``: keep by selector and port name, ``namespace``/``container``/``pod`` labels,
  ``podTargetLabels``, ``job`` and ``endpoint``), with one static target per pod carrying the
  ``__meta_kubernetes_pod_*`` labels Kubernetes service discovery would give it. Time is scaled: 1 s
  scrapes instead of the rendered interval.
- **Mesh** (``Sidecar``): each pod has an inbound proxy that decides every request with the rendered
  AuthorizationPolicies and Kubeflow's ``global-deny-all`` (``kfrelease.k8s.policy.istio.decide``) on the
  peer identity its caller's proxy presents (``x-twin-peer``: mTLS establishes it in the mesh; here only the
  twin's own proxies set it, a request without it has no identity as plain text has none), and answers 403
  ``RBAC: access denied`` as Envoy does. What it lets in carries the peer's identity in
  ``x-forwarded-client-cert`` (Istio's sidecar inbound: ``APPEND_FORWARD`` with the URI SAN, istio/istio
  ``pilot/pkg/networking/core`` ``buildSidecarInboundHTTPOpts``; without mTLS Envoy forwards none).
- **Routing** (``nginx_config``): nginx built from the rendered VirtualService (its prefix matches, weighted
  destinations, ``mirror`` and ``mirrorPercentage``, request header sets, timeout; Envoy's ``-shadow`` Host of
  a mirrored copy) in two roles: Istio's ingress gateway (peer identity the gateway's) and an in-mesh client's
  sidecar (the client's identity; Envoy mirrors from the proxy that routes: istio/istio
  ``pilot/pkg/networking/core/route/route.go``).
- **Egress scope** (``Twin.egress``): every outbound sidecar (the in-mesh client's, each pod's KServe agent's) is
  scoped by the ``Sidecar`` objects Istio would apply to it: Kubeflow's mesh-wide ``istio-system/default``
  (vendored, ``kfrelease.k8s.policy.istio.upstream_sidecars``) and the rendered ones
  (``kfrelease.k8s.policy.istio.imports``/``peer``). A client whose Sidecar does not list the release
  VirtualService's namespace does not load it: its requests to the release host (a Service without endpoints)
  get Envoy's 503; a call to a namespace outside the scope carries no peer identity (plain text). In front of the gateway, the ALB accepts only the hosts of
  the rendered Ingress rules (one-label wildcards as networking.k8s.io/v1 defines them) and answers 404 to
  any other host.

- **KServe agent** (``Agent``): a predictor whose rendered spec has a ``logger`` gets the agent's logger in
  front of its model server on 9081, and each of the pod's ports (8080, 9081) its own inbound proxy. KServe's
  Service of the pod targets what ``createDefaultSvc`` targets (``Pod.service_target``): the agent for the
  stable predictor and the shadow, the model server for a ``spec.canary`` entry (KServe 0.20 builds the
  canary's with no logger); a rendered Service reaches the port its ``targetPort`` names. CloudEvents
  in binary mode with KServe's headers, ids from the request's ``Ce-Id`` else a new UUID, to the rendered
  logger URL through the mesh as the predictor's service account.
- **Serving Deployments** (``deployment_pods``): the rendered log sink and feedback service run from their
  Deployment's container (command, args, env), behind a sidecar deciding with the rendered policies, reached by
  their Service; IRSA is replaced by the role's keys on the local object store (``store_env``).
- **Request ids**: Envoy keeps a request's ``x-request-id`` or generates one before routing, and a route's
  ``headers.request.set`` values may name request headers (``%REQ(x-request-id)%``), mirrored copies included.
- **Ingress gateway** (``Gateway``): before nginx routes a request that reaches the gateway (from the ALB, or in
  plain text from a pod outside the mesh), it validates an ``Authorization: Bearer`` token with the
  RequestAuthentications that select the gateway (issuer, ``audiences``, expiry; ``outputClaimToHeaders``; a
  token that fails is answered 401 as Envoy's ``jwt_authn`` does) and decides with the AuthorizationPolicies that
  apply to the gateway's pod (request principal ``<iss>/<sub>``; no peer identity: the caller has no sidecar).
  The twin's issuer signs service-account tokens (``Twin.token``) as the API server's TokenRequest does, with
  ``iss``, ``sub: system:serviceaccount:<ns>:<sa>`` and ``aud``; HS256 with the twin's key stands in for the
  cluster's RS256 key and its JWKS.
- **Pod network** (``PodNetwork``): an HTTP proxy a process outside the mesh (a KFP step: KFP sets
  ``sidecar.istio.io/inject: "false"`` on workflow pods, kubeflow/pipelines#14468) sends its requests through
  (``HTTP_PROXY``): a Service host reaches the Service's pods' sidecars with no peer identity, the ingress
  gateway's Service host reaches ``Gateway``, a host no Service has is answered 502.

Not modelled: Knative (Serverless revisions and ``canaryTrafficPercent``: the twin runs Standard/raw
mode, where the VirtualService carries the canary's weight), oauth2-proxy in front of the gateway (Kubeflow's
CUSTOM policy sends only requests without an ``Authorization`` header there; its ``require-jwt`` DENY is not
loaded, so clients without a token still pass the twin's gateway), TLS.
"""

from __future__ import annotations

import copy
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import yaml

from kfrelease import httpcalls
from kfrelease.k8s.policy.istio import Request, Workload, decide, imports, peer
from kfrelease.k8s.render.inference import predictor_service
from kfrelease.k8s.render.mesh import GATEWAY_SELECTOR, INGRESS_GATEWAY, ROOT_NS, principal
from tests.waiting import eventually

MODEL_VOLUME = "/mnt/models"
AGENT_PORT = 9081  # kserve pkg/constants InferenceServiceDefaultAgentPort
PEER_HEADER = "x-twin-peer"
XFCC = "x-forwarded-client-cert"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What a twin part raises while it is still starting: polls count it as "not yet"
UNREACHABLE = (httpx.HTTPError, OSError)


# --- pods: what KServe and the kubelet make of the rendered objects ------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` expansion as the kubelet does it for command and args."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def kserve_placeholders(text: str, isvc: dict) -> str:
    """``{{.Name}}``, ``{{.Namespace}}``, ``{{.Labels.x}}``, ``{{.Annotations.x}}`` of the InferenceService."""
    meta = isvc["metadata"]

    def fill(m: re.Match) -> str:
        path = m.group(1).split(".")
        if path == ["Name"]:
            return meta["name"]
        if path == ["Namespace"]:
            return meta["namespace"]
        if path[0] in ("Labels", "Annotations") and len(path) == 2:
            return (meta.get(path[0].lower()) or {}).get(path[1], "")
        raise ValueError(f"placeholder {m.group(0)} is not one KServe fills")

    return re.sub(r"\{\{\s*\.([A-Za-z.]+)\s*\}\}", fill, text)


def runtime_supports_model(model: dict, runtime: dict) -> bool:
    """Whether KServe runs a predictor's ``model`` (the InferenceService's ``predictor.model``) on ``runtime``
    (a ServingRuntime): kserve/kserve ``pkg/apis/serving/v1beta1/predictor_model.go`` ``RuntimeSupportsModel``,
    the model's label ``mt:<name>`` (``mt:<name>:<version>`` when it gives a version) must be among the runtime's
    ``supportedModelFormats`` labels (each ``mt:<name>`` and ``mt:<name>:<version>``), counting only
    ``autoSelect`` formats when the predictor names no ``runtime``. The reconciler refuses the predictor
    otherwise ("specified runtime ... does not support specified framework/version":
    ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``)."""
    fmt = model.get("modelFormat") or {}
    label = f"mt:{fmt.get('name')}" + (f":{fmt['version']}" if fmt.get("version") else "")
    labels = set()
    for t in runtime["spec"].get("supportedModelFormats") or []:
        if model.get("runtime") or t.get("autoSelect"):
            labels.add(f"mt:{t['name']}")
            if t.get("version"):
                labels.add(f"mt:{t['name']}:{t['version']}")
    return label in labels


def merge_container(runtime: dict, model: dict) -> dict:
    """The runtime's first container with the predictor's model container fields over it (env by name)."""
    out = copy.deepcopy(runtime)
    env = {e["name"]: e for e in out.get("env") or []}
    for e in model.get("env") or []:
        env[e["name"]] = e
    out["env"] = list(env.values())
    for k in ("resources", "args", "command", "image"):
        if model.get(k):
            out[k] = copy.deepcopy(model[k])
    return out


@dataclass
class Pod:
    """One predictor pod of a rendered InferenceService (see the module docstring)."""

    name: str
    namespace: str
    labels: dict
    container: dict
    service: str  # the Service that selects it (KServe's PredictorServiceName)
    logger: dict | None  # the predictor's ``logger`` spec (None: no KServe agent in the pod)
    service_account: str = "default"
    model_name: str = ""
    port: int = 0
    process: subprocess.Popen | None = None
    sidecar: Sidecar | None = None  # the one on the port the pod's KServe Service targets (``service_target``)
    agent: Agent | None = None
    canary: bool = False  # a ``spec.canary`` entry's pod (KServe 0.20 Standard mode)
    sidecars: dict[int, Sidecar] = field(default_factory=dict)  # pod port Istio sees -> its inbound proxy

    @property
    def env(self) -> dict[str, str]:
        return {e["name"]: str(e.get("value", "")) for e in self.container.get("env") or []}

    @property
    def version(self) -> str:
        return self.env["KFRELEASE_MODEL_VERSION"]

    def argv(self, model_dir: Path, port: int) -> list[str]:
        """The container's command and args as the pod would run them, on this machine."""
        env = self.env
        container_port = str(self.container["ports"][0]["containerPort"])
        words = [expand(w, env) for w in (self.container.get("command") or []) + (self.container.get("args") or [])]
        local = {MODEL_VOLUME: str(model_dir), container_port: str(port), "0.0.0.0": "127.0.0.1"}
        words = [local.get(w, w) for w in words]
        if words and words[0] == "python":
            words[0] = sys.executable
        return words

    @property
    def service_target(self) -> int:
        """The pod port KServe's own Service of the pod sends port 80 to, as ``createDefaultSvc`` builds it
        (kserve/kserve@v0.20.0 ``pkg/controller/v1beta1/inferenceservice/reconcilers/service/service_reconciler.go``
        lines 104-175): the first container port, or the KServe agent's 9081 when the ``ComponentExtensionSpec``
        it is given has a ``logger``. The stable predictor's (and the shadow's) is the InferenceService's own
        (logger set); a ``spec.canary`` entry's is empty but ``MinReplicas`` (``components/predictor.go``
        ``reconcileCanaryDeployments``, lines 937-941), so a canary's Service targets the model server although
        its pod has the agent (``buildPredictorResources`` adds the logger annotations on both paths)."""
        if self.logger and not self.canary:
            return AGENT_PORT
        return int(self.container["ports"][0]["containerPort"])

    @property
    def ports(self) -> list[int]:
        """The pod's ports that take requests: the model server's, and the agent's when it is injected."""
        own = [int(self.container["ports"][0]["containerPort"])]
        return own + [AGENT_PORT] if self.logger else own

    def set_policies(self, policies: list[dict]) -> None:
        for sidecar in self.sidecars.values():
            sidecar.policies = policies

    def stop_sidecars(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.stop()


def predictor_pods(isvc: dict, runtime: dict, kserve_version: str) -> list[Pod]:
    """The pods KServe runs for a rendered InferenceService in Standard (raw) mode: the predictor and each
    ``spec.canary`` entry."""
    meta = isvc["metadata"]
    rt_container = runtime["spec"]["containers"][0]
    specs = [(isvc["spec"]["predictor"], False), *[(c["predictor"], True) for c in isvc["spec"].get("canary") or []]]
    pods = []
    for pred, canary in specs:
        if not runtime_supports_model(pred["model"], runtime):
            raise AssertionError(
                f"specified runtime {pred['model'].get('runtime')} does not support specified framework/version "
                f"({pred['model'].get('modelFormat')}, InferenceService {meta['name']})"
            )
        container = merge_container(rt_container, pred["model"])
        container["args"] = [kserve_placeholders(a, isvc) for a in container.get("args") or []]
        labels = {
            **((runtime["spec"].get("labels")) or {}),
            **(meta.get("labels") or {}),
            **(pred.get("labels") or {}),
            "serving.kserve.io/inferenceservice": meta["name"],
            "component": "predictor",
        }
        service = predictor_service(meta["name"], pred.get("name"), kserve_version)
        labels["app"] = f"isvc.{service}"  # deployment_reconciler.go createRawDefaultDeployment
        pods.append(
            Pod(
                name=f"{service}-{labels.get('kfrelease.io/version', 'x')}-0",
                namespace=meta["namespace"],
                labels=labels,
                container=container,
                service=service,
                logger=pred.get("logger"),
                service_account=pred.get("serviceAccountName") or "default",
                canary=canary,
            )
        )
    return pods


# --- Prometheus: the operator's scrape config of the rendered PodMonitor ---------------------------------


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def scrape_config(pod_monitor: dict, pods: list[Pod], interval: str = "1s") -> dict:
    """Prometheus' config for the rendered PodMonitor over ``pods`` (static targets with the pod's
    Kubernetes SD meta labels, the operator's relabelling)."""
    spec = pod_monitor["spec"]
    namespaces = set((spec.get("namespaceSelector") or {}).get("matchNames") or [])
    jobs = []
    for i, ep in enumerate(spec["podMetricsEndpoints"]):
        relabel: list[dict] = [
            {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"}
        ]
        sel = spec.get("selector") or {}
        for k, v in sorted((sel.get("matchLabels") or {}).items()):
            relabel.append(
                {
                    "source_labels": [
                        f"__meta_kubernetes_pod_label_{_sanitize(k)}",
                        f"__meta_kubernetes_pod_labelpresent_{_sanitize(k)}",
                    ],
                    "regex": f"({v});true",
                    "action": "keep",
                }
            )
        for exp in sel.get("matchExpressions") or []:
            if exp["operator"] != "Exists":
                raise ValueError(f"selector operator {exp['operator']} is not modelled")
            relabel.append(
                {
                    "source_labels": [f"__meta_kubernetes_pod_labelpresent_{_sanitize(exp['key'])}"],
                    "regex": "true",
                    "action": "keep",
                }
            )
        relabel.append(
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"], "action": "keep"}
        )
        relabel += [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]
        for label in spec.get("podTargetLabels") or []:
            relabel.append(
                {
                    "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(label)}"],
                    "regex": "(.+)",
                    "replacement": "${1}",
                    "target_label": _sanitize(label),
                }
            )
        meta = pod_monitor["metadata"]
        relabel.append({"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"})
        relabel.append({"target_label": "endpoint", "replacement": ep["port"]})
        targets = []
        for pod in pods:
            if namespaces and pod.namespace not in namespaces or not pod.port:
                continue
            for port in pod.container.get("ports") or []:
                labels = {
                    "__meta_kubernetes_namespace": pod.namespace,
                    "__meta_kubernetes_pod_name": pod.name,
                    "__meta_kubernetes_pod_phase": "Running",
                    "__meta_kubernetes_pod_container_name": pod.container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                }
                for k, v in pod.labels.items():
                    labels[f"__meta_kubernetes_pod_label_{_sanitize(k)}"] = v
                    labels[f"__meta_kubernetes_pod_labelpresent_{_sanitize(k)}"] = "true"
                targets.append({"targets": [f"127.0.0.1:{pod.port}"], "labels": labels})
        jobs.append(
            {
                "job_name": f"podMonitor/{meta['namespace']}/{meta['name']}/{i}",
                "scrape_interval": interval,
                "metrics_path": ep.get("path", "/metrics"),
                "static_configs": targets,
                "relabel_configs": relabel,
            }
        )
    return {"global": {"scrape_interval": interval}, "scrape_configs": jobs}


class Prometheus:
    """The real Prometheus server on 127.0.0.1 with a config given as a dict; ``reload`` rewrites it."""

    def __init__(self, workdir: Path):
        self.dir, self.port, self.process = workdir, free_port(), None
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: dict) -> None:
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "prometheus.log", "w"),  # noqa: SIM115 - closed with the process
        )
        eventually(
            lambda: httpcalls.get(f"{self.url}/-/ready", timeout=2).status_code == 200,
            60,
            "Prometheus ready",
            ignoring=UNREACHABLE,
        )

    def reload(self, config: dict) -> None:
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        httpcalls.post(f"{self.url}/-/reload", timeout=10).raise_for_status()

    def active_targets(self) -> list[dict]:
        return httpcalls.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]

    def stop(self) -> None:
        _stop(self.process)


# --- the mesh: an inbound proxy per pod that decides with the rendered policies ---------------------------


@dataclass
class Decision:
    peer: str | None
    method: str
    path: str
    host: str
    allowed: bool
    why: str


#: Answer headers a twin proxy writes itself instead of copying them.
HOP_HEADERS = ("connection", "content-length", "transfer-encoding", "keep-alive", "server", "date")


class _Proxy(BaseHTTPRequestHandler):
    """What every twin proxy (sidecar, gateway, pod network) does alike: answer, and forward a request to a local
    port with the answer's own headers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, data: bytes, content_type: str, extra=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        for k, v in extra:  # the upstream's answer headers (x-request-id, x-model-version...)
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self, port: int, path: str, body: bytes, headers: dict, timeout: float, content_type: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request(self.command, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            extra = [(k, v) for k, v in resp.getheaders() if k.lower() not in (*HOP_HEADERS, "content-type")]
            self._answer(resp.status, data, resp.getheader("content-type") or content_type, extra)
        finally:
            conn.close()


def _serve(handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """``handler`` on a free port of 127.0.0.1, served by a daemon thread called ``name``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True, name=name).start()
    return server


def _shut(server: ThreadingHTTPServer | None) -> None:
    if server:
        server.shutdown()
        server.server_close()


@dataclass
class Sidecar:
    """The inbound side of a pod's Envoy: decides each request, forwards what is allowed to the pod."""

    pod: Pod
    policies: list[dict]
    inbound: int = 0  # the pod port Istio sees the request on (0: the pod's container port)
    decisions: list[Decision] = field(default_factory=list)
    port: int = 0
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        sidecar = self
        self.inbound = self.inbound or int(self.pod.container["ports"][0]["containerPort"])

        class Handler(_Proxy):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                peer = self.headers.get(PEER_HEADER)
                req = Request(
                    Workload(sidecar.pod.namespace, sidecar.pod.labels),
                    sidecar.inbound,
                    self.path,
                    self.command,
                    peer,
                )
                ok, why = decide(sidecar.policies, req)
                sidecar.decisions.append(Decision(peer, self.command, self.path, self.headers.get("host", ""), ok, why))
                if not ok:
                    return self._answer(403, b"RBAC: access denied", "text/plain")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in (PEER_HEADER, "connection", XFCC)}
                if peer:  # Envoy's APPEND_FORWARD: the peer's certificate details after any it was sent
                    own = f"spiffe://{principal(sidecar.pod.namespace, sidecar.pod.service_account)}"
                    sent = self.headers.get(XFCC)
                    headers[XFCC] = (f"{sent}," if sent else "") + f'By={own};Hash=0;Subject="";URI=spiffe://{peer}'
                to_agent = sidecar.inbound == AGENT_PORT and sidecar.pod.agent
                target = sidecar.pod.agent.port if to_agent else sidecar.pod.port
                self._forward(target, self.path, body, headers, 30, "application/json")

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = _serve(Handler, f"sidecar-{self.pod.name}")
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        _shut(self.server)


# --- the ingress gateway's own filters: JWT authentication and authorization -----------------------------

GATEWAY_SERVICE = f"istio-ingressgateway.{ROOT_NS}.svc.cluster.local"
GATEWAY_WORKLOAD = Workload(ROOT_NS, dict(GATEWAY_SELECTOR))
GATEWAY_PORT = 8080  # the gateway pod's HTTP port behind its Service's port 80 (Istio's gateway chart)


class JwtRejected(Exception):
    """A token Envoy's ``jwt_authn`` filter refuses (401)."""


def verified_claims(token: str, authentications: list[dict], keys: dict[str, str]) -> tuple[dict, dict]:
    """(claims, jwtRule) of a bearer token, as Istio's RequestAuthentication checks it at the gateway: a rule of
    a RequestAuthentication selecting the gateway names the token's issuer, the signature verifies with that
    issuer's key (``keys``), it has not expired and, when the rule lists ``audiences``, its ``aud`` has one."""
    import jwt

    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError as exc:
        raise JwtRejected(f"Jwt is not in the form of Header.Payload.Signature ({exc})") from None
    rules = [
        rule
        for ra in authentications
        if ra["metadata"]["namespace"] == ROOT_NS
        and all(
            GATEWAY_SELECTOR.get(k) == v
            for k, v in ((ra["spec"].get("selector") or {}).get("matchLabels") or {}).items()
        )
        for rule in ra["spec"]["jwtRules"]
        if rule["issuer"] == issuer
    ]
    if not rules or issuer not in keys:
        raise JwtRejected("Jwt issuer is not configured")
    rule = rules[0]
    audiences = rule.get("audiences")
    try:
        claims = jwt.decode(
            token,
            keys[issuer],
            algorithms=["HS256"],
            audience=audiences or None,
            options={"verify_aud": bool(audiences)},
        )
    except jwt.InvalidAudienceError:
        raise JwtRejected("Audiences in Jwt are not allowed") from None
    except jwt.ExpiredSignatureError:
        raise JwtRejected("Jwt is expired") from None
    except jwt.PyJWTError:
        raise JwtRejected("Jwt verification fails") from None
    return claims, rule


@dataclass
class GatewayDecision:
    request_principal: str | None
    path: str
    headers: dict
    status: int
    why: str


@dataclass
class Gateway:
    """The ingress gateway's filters in front of its routing (nginx): JWT authentication, then authorization
    with the policies that apply to the gateway's pod; what passes goes on to ``upstream_port``."""

    policies: list[dict]
    authentications: list[dict]
    keys: dict[str, str]
    upstream_port: int = 0
    decisions: list[GatewayDecision] = field(default_factory=list)
    port: int = 0
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        gateway = self

        class Handler(_Proxy):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                # a peer identity is the mesh's to set: a client's own x-twin-peer is dropped here
                headers = {k: v for k, v in self.headers.items() if k.lower() not in (PEER_HEADER, "connection")}
                lower = {k.lower(): v for k, v in headers.items()}
                request_principal = None
                auth = lower.get("authorization", "")
                if auth:
                    if not auth.startswith("Bearer "):
                        return self._refuse(None, lower, 401, "Jwt is missing")
                    try:
                        claims, rule = verified_claims(auth[len("Bearer ") :], gateway.authentications, gateway.keys)
                    except JwtRejected as exc:
                        return self._refuse(None, lower, 401, str(exc))
                    request_principal = f"{claims['iss']}/{claims['sub']}"
                    for out in rule.get("outputClaimToHeaders") or []:  # a claim the token lacks clears the header
                        headers = {k: v for k, v in headers.items() if k.lower() != out["header"].lower()}
                        if isinstance(claims.get(out["claim"]), str):
                            headers[out["header"]] = claims[out["claim"]]
                req = Request(GATEWAY_WORKLOAD, GATEWAY_PORT, self.path, self.command, None, lower, request_principal)
                ok, why = decide(gateway.policies, req)
                if not ok:
                    return self._refuse(request_principal, lower, 403, why)
                gateway.decisions.append(GatewayDecision(request_principal, self.path, lower, 200, why))
                self._forward(gateway.upstream_port, self.path, body, headers, 60, "application/json")

            def _refuse(self, request_principal, lower, status, why):
                gateway.decisions.append(GatewayDecision(request_principal, self.path, lower, status, why))
                text = b"RBAC: access denied" if status == 403 else why.encode()
                return self._answer(status, text, "text/plain")

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = _serve(Handler, "twin-gateway")
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        _shut(self.server)


@dataclass
class PodNetwork:
    """The cluster network as a pod outside the mesh sees it (see the module docstring): an HTTP proxy that
    resolves ``<svc>.<ns>.svc.cluster.local`` with ``resolve(host)`` (the ports of a Service's pods' sidecars,
    or the gateway's) and sends the request there in plain text, with no peer identity."""

    resolve: object
    port: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from urllib.parse import urlsplit

        network = self

        class Handler(_Proxy):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                u = urlsplit(self.path)
                ports = network.resolve(u.hostname or "")
                if not ports:
                    return self._answer(502, f"no Service answers for {u.hostname}".encode(), "text/plain")
                path = u.path + (f"?{u.query}" if u.query else "")
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in (PEER_HEADER, "connection", "proxy-connection")
                }
                self._forward(ports[0], path, body, headers, 60, "text/plain")

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = _serve(Handler, "twin-pod-network")
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        _shut(self.server)


# --- the KServe agent: the InferenceService's logger in each predictor pod --------------------------------

AGENT_SOURCE = "http://localhost:9081/"
REQUEST_EVENT = "org.kubeflow.serving.inference.request"
RESPONSE_EVENT = "org.kubeflow.serving.inference.response"


def go_rfc3339_nano(ns: int) -> str:
    """A time as Go's ``time.RFC3339Nano`` writes it (what the CloudEvents Go SDK puts in ``ce-time``):
    UTC ``Z``, up to nine fraction digits, trailing zeros dropped."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


@dataclass
class Agent:
    """What the KServe agent does in a pod whose predictor has a ``logger`` (kserve/kserve, read at v0.15-v0.20):

    - it is injected by the pod webhook with ``--log-url`` (the logger's ``url``), ``--source-uri`` (the pod's
      name as admission sees it: empty for a Deployment's pod, named from ``generateName`` only after
      admission, so the agent's default ``http://localhost:9081/``: ``cmd/agent/main.go``), ``--log-mode`` (``all``, ``request``, ``response``), ``--inference-service`` (the pod's
      ``serving.kserve.io/inferenceservice`` label), ``--namespace``, ``--endpoint`` (the pod's ``endpoint``
      label, none in raw mode) and ``--component`` (its ``component`` label), and listens on 9081, where the
      Service sends the pod's traffic (``pkg/webhook/admission/pod/agent_injector.go`` ``InjectAgent``);
    - for each request not a kubelet probe: the CloudEvent id is the request's ``Ce-Id`` header, else a new UUID
      (``pkg/logger/handler.go`` ``getOrCreateID``); a request event is queued with the body and the request's
      content type, the request goes to the model server, and on a 200 a response event with the answer and,
      as KServe does, the *request's* content type;
    - a worker sends each event in CloudEvents binary mode (``pkg/logger/worker.go`` ``sendHttpCloudEvent``):
      ``ce-specversion: 1.0``, ``ce-id``, ``ce-type`` (``org.kubeflow.serving.inference.request`` /
      ``.response``), ``ce-source``, ``ce-time`` (the SDK's ``WithTimeNow``, RFC 3339 with nanoseconds), the
      extensions ``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``, ``ce-endpoint`` and
      ``ce-metadata`` (the JSON of the forwarded metadata headers: ``{}``), a failed send is logged and dropped.

    ``send(url, body, headers)`` is the pod's outbound proxy (the mesh, as the pod's service account)."""

    pod: Pod
    send: object
    port: int = 0
    sent: list[tuple[str, str, int]] = field(default_factory=list)  # (type, id, status) of each event
    server: ThreadingHTTPServer | None = None

    def __post_init__(self):
        import queue

        self.queue: queue.Queue = queue.Queue()

    def _event(self, kind: str, rid: str, body: bytes, content_type: str) -> None:
        self.queue.put((kind, rid, body, content_type))

    def _work(self) -> None:
        spec, labels = self.pod.logger or {}, self.pod.labels
        while True:
            item = self.queue.get()
            if item is None:
                return
            kind, rid, body, content_type = item
            headers = {
                "ce-specversion": "1.0",
                "ce-id": rid,
                "ce-type": kind,
                "ce-source": AGENT_SOURCE,
                "ce-time": go_rfc3339_nano(time.time_ns()),
                "ce-inferenceservicename": labels.get("serving.kserve.io/inferenceservice", ""),
                "ce-namespace": self.pod.namespace,
                "ce-component": labels.get("component", ""),
                "ce-endpoint": labels.get("endpoint", ""),
                "ce-metadata": "{}",
                "content-type": content_type,
            }
            try:
                status = self.send(spec["url"], body, headers)
            except OSError:
                status = 0
            self.sent.append((kind, rid, status))

    def start(self) -> None:
        agent = self
        mode = (self.pod.logger or {}).get("mode", "all")

        class Handler(_Proxy):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                probe = self.headers.get("user-agent", "").startswith("kube-probe/")
                rid = self.headers.get("ce-id") or str(uuid.uuid4())
                content_type = self.headers.get("content-type", "")
                if not probe and mode in ("all", "request"):
                    agent._event(REQUEST_EVENT, rid, body, content_type)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn = http.client.HTTPConnection("127.0.0.1", agent.pod.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    answer_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS]
                finally:
                    conn.close()
                if not probe and resp.status == 200 and mode in ("all", "response"):
                    agent._event(RESPONSE_EVENT, rid, data, content_type)
                self.send_response(resp.status)
                for k, v in answer_headers:
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = _serve(Handler, f"agent-{self.pod.name}")
        self.port = self.server.server_address[1]
        threading.Thread(target=self._work, daemon=True, name=f"agent-worker-{self.pod.name}").start()

    def stop(self) -> None:
        self.queue.put(None)
        _shut(self.server)


# --- the serving namespace's own Deployments: the log sink and the feedback service ----------------------

#: What a pod's IRSA web identity gives it on the cluster, and this machine gives a process instead: the role's
#: keys on the local object store (``store_env(role)``: ``KFRELEASE_S3_*``, ``AWS_ACCESS_KEY_ID``...).
IRSA_ENV = ("KFRELEASE_S3_ENDPOINT", "KFRELEASE_S3_SECURE", "KFRELEASE_S3_REGION", "KFRELEASE_BUCKET_PREFIX")


def deployment_pods(deployments: list[dict]) -> list[Pod]:
    """One pod of each rendered Deployment (its template's labels, first container, service account)."""
    pods = []
    for d in deployments:
        template = d["spec"]["template"]
        pods.append(
            Pod(
                name=f"{d['metadata']['name']}-0",
                namespace=d["metadata"]["namespace"],
                labels=dict(template["metadata"].get("labels") or {}),
                container=copy.deepcopy(template["spec"]["containers"][0]),
                service="",
                logger=None,
                service_account=template["spec"].get("serviceAccountName") or "default",
            )
        )
    return pods


def selects(service: dict, pod: Pod) -> bool:
    selector = service["spec"].get("selector") or {}
    return (
        bool(selector)
        and service["metadata"]["namespace"] == pod.namespace
        and all(pod.labels.get(k) == v for k, v in selector.items())
    )


# --- routing: nginx from the rendered VirtualService and Ingress -----------------------------------------


def ingress_server_names(ingress: dict) -> list[str]:
    """nginx ``server_name`` regexes of the Ingress rules (a wildcard is exactly one DNS label)."""
    out = []
    for rule in ingress["spec"]["rules"]:
        host = rule["host"]
        if host.startswith("*."):
            out.append("~^[^.]+" + re.escape(host[1:]).replace("\\-", "-") + "$")
        else:
            out.append(host)
    return out


def envoy_header_value(value: str) -> str:
    """An Envoy custom request header value as nginx writes it: ``%REQ(name)%`` is the request's header
    (``x-request-id`` the id Envoy kept or generated before routing); other ``%...%`` operators are not
    modelled."""

    def header(m: re.Match) -> str:
        name = m.group(1).lower()
        return "$twin_request_id" if name == "x-request-id" else "$http_" + name.replace("-", "_")

    out = re.sub(r"%REQ\(([A-Za-z0-9-]+)\)%", header, value)
    if "%" in out:
        raise ValueError(f"header value {value!r}: only %REQ(...)% of Envoy's operators is modelled")
    return out


def _service_of(host: str) -> str:
    """``<svc>.<ns>.svc.cluster.local`` -> ``<svc>``."""
    if not host.endswith(".svc.cluster.local"):
        raise ValueError(f"destination {host} is not a Service host; the twin routes only to Services")
    return host.split(".")[0]


def nginx_config(
    workdir: Path,
    vs: dict,
    ingress: dict,
    upstreams: dict[str, list[int]],
    ports: dict[str, int],
    client_principal: str | None,
    client_loads_vs: bool = True,
) -> str:
    """nginx for the ALB (``ports['alb']``), the ingress gateway (``ports['gateway']``) and an in-mesh
    client's sidecar (``ports['mesh']``) from the rendered objects; ``upstreams`` maps a Service name to the
    sidecar ports of its pods. ``client_principal`` is the identity the client's sidecar presents to the
    VirtualService's destinations (None: they are outside its egress scope, plain text); ``client_loads_vs``
    False: its Sidecar does not import the VirtualService, so it routes nothing by it."""
    lines = [
        "worker_processes 1;",
        "daemon off;",
        f"pid {workdir}/nginx.pid;",
        f"error_log {workdir}/error.log warn;",
        "events { worker_connections 256; }",
        "http {",
        "  access_log off;",
        *[f"  {t}_temp_path {workdir}/tmp_{t};" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")],
        "  client_body_buffer_size 1m;",
        "  server_names_hash_bucket_size 256;",
        # Envoy keeps a request's x-request-id (the ALB's requests come from inside the VPC: internal) or
        # generates one before routing; mirrored copies carry it too
        '  map $http_x_request_id $twin_request_id { "" $request_id; default $http_x_request_id; }',
    ]
    if os.geteuid() == 0:
        lines.insert(0, "user nobody nogroup;")
    for name, sidecar_ports in sorted(upstreams.items()):
        lines.append(f"  upstream {name} {{")
        lines += [f"    server 127.0.0.1:{p};" for p in sidecar_ports] or ["    server 127.0.0.1:9 down;"]
        lines.append("  }")
    gateways = vs["spec"].get("gateways") or []
    routes = []  # (role, principal)
    if any(g != "mesh" for g in gateways):
        routes.append(("gateway", INGRESS_GATEWAY))
    if "mesh" in gateways and client_loads_vs:
        routes.append(("mesh", client_principal))
    hosts = " ".join(vs["spec"]["hosts"])
    blocks = []
    for i, route in enumerate(vs["spec"]["http"]):
        dests = [(_service_of(r["destination"]["host"]), r.get("weight", 100)) for r in route["route"]]
        if len(dests) > 1:
            lines.append(f'  split_clients "${{request_id}}" $route_{i} {{')
            for svc, w in dests[:-1]:
                lines.append(f"    {w}% {svc};")
            lines.append(f"    * {dests[-1][0]};")
            lines.append("  }")
            target = f"$route_{i}"
        else:
            target = dests[0][0]
        mirror = route.get("mirror")
        if mirror:
            pct = float((route.get("mirrorPercentage") or {}).get("value", 100.0))
            lines.append(f'  split_clients "${{request_id}}" $mirror_{i} {{')
            if pct < 100:
                lines.append(f"    {pct:g}% on;")
                lines.append('    * "";')
            else:
                lines.append("    * on;")
            lines.append("  }")
        blocks.append((i, route, target, mirror))
    alb = ingress_server_names(ingress)
    lines += [
        f"  server {{ listen 127.0.0.1:{ports['alb']} default_server; return 404; }}",
        f"  server {{ listen 127.0.0.1:{ports['alb']}; server_name {' '.join(alb)};",
        # the ALB forwards to the gateway's Service: its filters (``Gateway``) first, then its routing
        f"    location / {{ proxy_pass http://127.0.0.1:{ports['ingress']}; proxy_set_header Host $host; }} }}",
    ]
    if "mesh" in gateways and not client_loads_vs:
        # the release host is a Service without endpoints: Envoy's PassthroughCluster gets connection refused
        lines.append(
            f"  server {{ listen 127.0.0.1:{ports['mesh']} default_server; "
            "return 503 'upstream connect error or disconnect/reset before headers. reset reason: connection failure'; }"
        )
    for role, identity in routes:
        lines.append(f"  server {{ listen 127.0.0.1:{ports[role]} default_server; return 404; }}")
        lines.append(f"  server {{ listen 127.0.0.1:{ports[role]}; server_name {hosts};")
        by_location: dict[str, list[tuple[int, tuple[str, str] | None]]] = {}
        for i, route, _target, _mirror in blocks:
            for m in route["match"]:
                uri = m["uri"]
                if set(m) - {"uri", "headers", "gateways"} or set(uri) - {"prefix", "exact"}:
                    raise ValueError(f"VirtualService match {m} is not modelled (URIs, one exact header, gateways)")
                named = m.get("gateways")
                if named is not None and not any((g == "mesh") == (role == "mesh") for g in named):
                    continue  # the match names only gateways this proxy is not
                condition = None
                if "headers" in m:
                    ((name, value),) = m["headers"].items()
                    if set(value) != {"exact"}:
                        raise ValueError(f"VirtualService header match {m['headers']} is not modelled (exact only)")
                    condition = (name, value["exact"])
                loc = f"^~ {uri['prefix']}" if "prefix" in uri else f"= {uri['exact']}"
                by_location.setdefault(loc, []).append((i, condition))

        def route_body(i: int, role: str = role, identity: str = identity) -> list[str]:
            _, route, target, mirror = blocks[i]
            host_set = ((route.get("headers") or {}).get("request") or {}).get("set") or {}
            body = [f"      mirror /_mirror_{role}_{i};"] if mirror else []
            body += [
                f'      proxy_set_header {PEER_HEADER} "{identity or ""}";',  # "": not sent (plain text)
                f"      proxy_set_header Host {host_set.get('Host', '$host')};",
                "      proxy_set_header x-request-id $twin_request_id;",
                *[
                    f'      proxy_set_header {name} "{envoy_header_value(value)}";'
                    for name, value in host_set.items()
                    if name.lower() != "host"
                ],
                f"      proxy_read_timeout {route.get('timeout', '15s')};",
                f"      proxy_pass http://{target};",
            ]
            return body

        conditional: set[int] = set()
        for loc, entries in by_location.items():
            # Istio tries the routes in order: a header match before it goes to that route's own location
            lines.append(f"    location {loc} {{")
            for i, condition in entries:
                if condition is None:
                    break
                conditional.add(i)
                var = "$http_" + condition[0].lower().replace("-", "_")
                lines.append(f'      if ({var} = "{condition[1]}") {{ rewrite ^ /_route_{role}_{i}$uri last; }}')
            first = next((i for i, condition in entries if condition is None), None)
            lines += route_body(first) if first is not None else ["      return 404;"]
            lines.append("    }")
        for i in sorted(conditional):
            lines += [
                f"    location ^~ /_route_{role}_{i}/ {{",
                "      internal;",
                f"      rewrite ^/_route_{role}_{i}(/.*)$ $1 break;",
                *route_body(i),
                "    }",
            ]
        for i, route, _target, mirror in blocks:
            if mirror:
                host_set = ((route.get("headers") or {}).get("request") or {}).get("set") or {}
                headers_set = ["      proxy_set_header x-request-id $twin_request_id;"] + [
                    f'      proxy_set_header {name} "{envoy_header_value(value)}";'
                    for name, value in host_set.items()
                    if name.lower() != "host"
                ]
                lines += [
                    f"    location = /_mirror_{role}_{i} {{",
                    "      internal;",
                    f'      if ($mirror_{i} = "") {{ return 204; }}',
                    f'      proxy_set_header {PEER_HEADER} "{identity or ""}";',
                    "      proxy_set_header Host $host-shadow;",  # Envoy's Host of a mirrored copy
                    *headers_set,  # the copy has the route's headers (finalized before shadowing: envoyproxy/envoy#8138)
                    f"      proxy_pass http://{_service_of(mirror['host'])}$request_uri;",
                    "    }",
                ]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


class Nginx:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ports = {"alb": free_port(), "gateway": free_port(), "mesh": free_port()}  # + "ingress": Gateway's
        self.process: subprocess.Popen | None = None

    def run(self, text: str) -> None:
        """(Re)start nginx on ``text`` (checked with ``nginx -t`` first)."""
        self.stop()
        conf = self.dir / "nginx.conf"
        conf.write_text(text)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        base = [binary, "-p", f"{self.dir}/", "-c", str(conf), "-e", str(self.dir / "error.log")]
        check = subprocess.run([*base, "-t"], capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, f"nginx refused the twin's config: {check.stderr}"
        self.process = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            for role, port in self.ports.items():
                if role == "ingress":
                    continue
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) != 0:
                        return False
            return True

        eventually(listening, 30, "nginx listening", ignoring=UNREACHABLE)

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


def _stop(process: subprocess.Popen | None) -> None:
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- the twin: reconcile the stand-in cluster's objects into processes -----------------------------------


class Twin:
    """Runs what a cluster holds (``objects``: kind -> list of documents, e.g. the stand-in's) for real.

    ``model_dirs`` maps a model version to its model directory (what the ModelCar mounts at
    ``/mnt/models``); ``store_env(role)`` is the environment that gives a process the access-policy role's keys
    on the local object store (what IRSA gives the pod on EKS). ``reconcile`` starts the pods of new
    predictors (with the KServe agent when the predictor has a ``logger``), stops those that went, starts the
    serving namespace's Deployments once (the log sink, the feedback service), and rebuilds nginx and
    Prometheus from the VirtualService, Ingress, AuthorizationPolicies and PodMonitor."""

    def __init__(
        self,
        workdir: Path,
        model_dirs: dict[str, Path],
        kserve_version: str,
        client_principal: str,
        upstream_policies: list[dict],
        store_env=None,
        *,
        issuer: str = "https://issuer.twin.invalid",
        authentications: list[dict] = (),
        sidecars: list[dict] = (),
    ):
        self.dir, self.model_dirs, self.kserve_version = workdir, model_dirs, kserve_version
        self.client_principal, self.upstream_policies = client_principal, upstream_policies
        self.store_env = store_env
        #: Sidecars the cluster has beyond the reconciled objects' (Kubeflow's own, a client namespace's)
        self.sidecars = list(sidecars)
        self.egress: list[dict] = list(sidecars)  # + the reconciled objects' Sidecars
        self.client_decision = ""  # why the client's sidecar loads (or not) the VirtualService
        self.issuer, self.issuer_key = issuer, uuid.uuid4().hex + uuid.uuid4().hex
        self.pods: dict[tuple[str, str], Pod] = {}
        self.services: dict[str, Pod] = {}  # Deployment name -> its pod
        self.service_docs: list[dict] = []
        self.nginx = Nginx(workdir / "nginx")
        self.prometheus = Prometheus(workdir / "prometheus")
        self.gateway = Gateway(list(upstream_policies), list(authentications), {issuer: self.issuer_key})
        self.gateway.upstream_port = self.nginx.ports["gateway"]
        self.gateway.start()
        self.nginx.ports["ingress"] = self.gateway.port
        self.network = PodNetwork(self.resolve)
        self.network.start()

    def token(self, namespace: str, service_account: str, audience: str, seconds: int = 3600) -> str:
        """A projected service-account token of the twin's issuer (the API server's TokenRequest)."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": [audience],
            "iat": now,
            "nbf": now,
            "exp": now + seconds,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": service_account}},
        }
        return jwt.encode(claims, self.issuer_key, algorithm="HS256")

    def resolve(self, host: str) -> list[int]:
        """The ports behind a cluster host name (``PodNetwork``): the gateway's Service, or a Service's pods'
        sidecars (KServe's predictor Services by name, the Deployments' Services by selector)."""
        if host == GATEWAY_SERVICE:
            return [self.gateway.port]
        if not host.endswith(".svc.cluster.local"):
            return []
        name = _service_of(host)
        return [p.sidecar.port for p in self.pods.values() if p.service == name] or self.service_ports(name)

    # pods
    def _start_pod(self, pod: Pod, policies: list[dict]) -> None:
        pod.port = free_port()
        home = self.dir / "pods" / pod.name
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **pod.env, "KFRELEASE_HOME": str(home)}
        argv = pod.argv(self.model_dirs[pod.version], pod.port)
        pod.model_name = argv[argv.index("--name") + 1]
        pod.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "log", "w"))  # noqa: SIM115
        if pod.logger:
            pod.agent = Agent(pod, lambda url, body, headers, p=pod: self.send_from(p, url, body, headers))
            pod.agent.start()
        for port in pod.ports:
            pod.sidecars[port] = Sidecar(pod, policies, port)
            pod.sidecars[port].start()
        pod.sidecar = pod.sidecars[pod.service_target]

    def _start_service_pod(self, pod: Pod, policies: list[dict]) -> None:
        """A Deployment's pod: its container's command, args and env, with what this machine substitutes (a
        free port for the container port, 127.0.0.1 for 0.0.0.0, a local directory for ``KFRELEASE_HOME``,
        the role's keys on the local object store for IRSA). Only the pod's own env reaches the process."""
        if self.store_env is None:
            raise ValueError(f"Deployment {pod.name} needs the object store: give the Twin store_env")
        pod.port = free_port()
        home = self.dir / "pods" / pod.name
        home.mkdir(parents=True, exist_ok=True)
        env = pod.env
        role = env.get("KFRELEASE_ROLE")
        if not role or not set(IRSA_ENV) <= set(env):
            raise ValueError(f"Deployment {pod.name} sets no object-store role (KFRELEASE_ROLE, {IRSA_ENV})")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("KFRELEASE_", "AWS_"))}
        env = {**base, **env, **self.store_env(role), "KFRELEASE_HOME": str(home)}
        container_port = str(pod.container["ports"][0]["containerPort"])
        local = {container_port: str(pod.port), "0.0.0.0": "127.0.0.1"}
        words = [expand(w, env) for w in (pod.container.get("command") or []) + (pod.container.get("args") or [])]
        words = [local.get(w, w) for w in words]
        if words and words[0] == "python":
            words[0] = sys.executable
        pod.process = subprocess.Popen(words, env=env, stdout=subprocess.DEVNULL, stderr=open(home / "log", "w"))  # noqa: SIM115
        pod.sidecar = Sidecar(pod, policies)
        pod.sidecar.start()
        pod.sidecars = {pod.sidecar.inbound: pod.sidecar}

    def _listening(self, pod: Pod) -> bool:  # the Deployments' tcpSocket readiness probe
        if pod.process.poll() is not None:
            log = (self.dir / "pods" / pod.name / "log").read_text()[-2000:]
            raise AssertionError(f"pod {pod.name} exited ({pod.process.returncode}): {log}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", pod.port)) == 0

    def service_ports(self, name: str) -> list[int]:
        """The sidecar ports of the pods a Service (by name) selects: each pod's inbound proxy on the port the
        Service's first port targets (a number; else the pod's own)."""
        docs = [d for d in self.service_docs if d["metadata"]["name"] == name]
        out = []
        for d in docs:
            target = (d["spec"].get("ports") or [{}])[0].get("targetPort")
            for p in [*self.services.values(), *self.pods.values()]:
                if selects(d, p):
                    sidecar = p.sidecars.get(target) if isinstance(target, int) else None
                    out.append((sidecar or p.sidecar).port)
        return out

    def send_from(self, pod: Pod, url: str, body: bytes, headers: dict) -> int:
        """A POST from ``pod`` to a Service URL inside the mesh: through the pod's outbound sidecar, which
        presents the pod's service-account identity to the destination's sidecar."""
        from urllib.parse import urlsplit

        u = urlsplit(url)
        ports = self.service_ports(_service_of(u.hostname or ""))
        if not ports:
            return 503  # Envoy: no healthy upstream
        identity, _ = peer(
            self.egress, Workload(pod.namespace, pod.labels), pod.service_account, Workload(u.hostname.split(".")[1])
        )
        conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=10)
        try:
            conn.request(
                "POST",
                u.path or "/",
                body=body,
                headers={**headers, "host": u.netloc, **({PEER_HEADER: identity} if identity else {})},
            )
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _ready(self, pod: Pod) -> bool:
        if pod.process.poll() is not None:
            log = (self.dir / "pods" / pod.name / "log").read_text()[-2000:]
            raise AssertionError(f"pod {pod.name} exited ({pod.process.returncode}): {log}")
        url = f"http://127.0.0.1:{pod.port}/v2/models/{pod.model_name}/ready"
        return httpcalls.get(url, timeout=2).status_code == 200

    def reconcile(self, objects: dict[str, list[dict]]) -> None:
        runtime = objects["ServingRuntime"][0]
        policies = self.upstream_policies + objects.get("AuthorizationPolicy", [])
        self.gateway.policies = policies
        self.egress = self.sidecars + objects.get("Sidecar", [])
        wanted: dict[tuple[str, str], Pod] = {}
        for isvc in objects.get("InferenceService", []):
            for pod in predictor_pods(isvc, runtime, self.kserve_version):
                wanted[(pod.service, pod.version)] = pod
        for key in [k for k in self.pods if k not in wanted]:
            gone = self.pods.pop(key)
            gone.stop_sidecars()
            if gone.agent:
                gone.agent.stop()
            _stop(gone.process)
        self.service_docs = objects.get("Service", [])
        for pod in deployment_pods(objects.get("Deployment", [])):
            if pod.name in self.services:
                self.services[pod.name].set_policies(policies)
                continue
            self._start_service_pod(pod, policies)
            self.services[pod.name] = pod
            eventually(lambda p=pod: self._listening(p), 120, f"{pod.name} listening")
        started = []
        for key, pod in wanted.items():
            if key in self.pods:
                self.pods[key].set_policies(policies)
                continue
            self._start_pod(pod, policies)
            self.pods[key] = pod
            started.append(pod)
        for pod in started:
            eventually(lambda p=pod: self._ready(p), 180, f"model server {pod.name} ready", ignoring=UNREACHABLE)
        upstreams: dict[str, list[int]] = {}
        for pod in self.pods.values():
            upstreams.setdefault(pod.service, []).append(pod.sidecar.port)
        for doc in self.service_docs:
            if doc["metadata"]["name"] not in upstreams and self.service_ports(doc["metadata"]["name"]):
                upstreams[doc["metadata"]["name"]] = self.service_ports(doc["metadata"]["name"])
        vs = objects["VirtualService"][0]
        client_ns, client_sa = self.client_principal.split("/")[2], self.client_principal.split("/")[4]
        client = Workload(client_ns, {})
        loads, self.client_decision = imports(self.egress, client, vs)
        identity, _ = peer(self.egress, client, client_sa, Workload(vs["metadata"]["namespace"]))
        for http_route in vs["spec"]["http"]:  # every Service the routes name is an upstream (maybe empty)
            for r in http_route["route"]:
                upstreams.setdefault(_service_of(r["destination"]["host"]), [])
            if http_route.get("mirror"):
                upstreams.setdefault(_service_of(http_route["mirror"]["host"]), [])
        self.nginx.run(
            nginx_config(self.dir / "nginx", vs, objects["Ingress"][0], upstreams, self.nginx.ports, identity, loads)
        )
        config = scrape_config(objects["PodMonitor"][0], list(self.pods.values()))
        if self.prometheus.process is None:
            self.prometheus.start(config)
        else:
            self.prometheus.reload(config)
        names = {p.name for p in self.pods.values()}
        eventually(
            lambda: (
                names <= {t["labels"].get("pod") for t in self.prometheus.active_targets() if t.get("health") == "up"}
            ),
            60,
            f"Prometheus scraping {sorted(names)}",
            ignoring=UNREACHABLE,
        )

    def stop(self) -> None:
        for pod in [*self.pods.values(), *self.services.values()]:
            pod.stop_sidecars()
            if pod.agent:
                pod.agent.stop()
            _stop(pod.process)
        self.nginx.stop()
        self.prometheus.stop()
        self.gateway.stop()
        self.network.stop()

    # clients
    def via_alb(self, host: str, path: str, body, token: str | None = None) -> httpx.Response:
        headers = {"host": host, **({"authorization": f"Bearer {token}"} if token else {})}
        return httpcalls.post(f"http://127.0.0.1:{self.nginx.ports['alb']}{path}", json=body, headers=headers)

    def via_mesh(self, host: str, path: str, body) -> httpx.Response:
        return httpcalls.post(f"http://127.0.0.1:{self.nginx.ports['mesh']}{path}", json=body, headers={"host": host})
