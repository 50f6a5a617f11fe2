"""A non-first release on the cluster twin (``tests/twin``): the release driver moves the rendered objects on
the cluster stand-in as the release steps' service account, and the twin runs what they say for real (model
servers from the rendered containers, nginx from the rendered VirtualService and Ingress, the rendered
AuthorizationPolicies deciding at each pod, Prometheus from the rendered PodMonitor). The candidate is
shadowed (mirrored copies from the ingress gateway and from an in-mesh client's sidecar both reach it),
canaried (the controller's own Prometheus queries read non-zero requests of the canary with the labels the
rendered pod sets), and promoted.

The shadow's evidence goes the cluster's way too: each predictor pod's KServe agent (the rendered ``logger``)
sends its CloudEvents to the rendered log sink (``kfrelease-logsink``, started from its rendered Deployment, as
the serving role), clients label their requests through the rendered VirtualService's feedback route (the
rendered ``kfrelease-feedback`` Deployment), and the shadow gate decides on the labelled pairs the lake joins.

At the canary, the labelled accuracy check's replay (production's answers to the canary's logged inputs) goes the
cluster's way: the release step runs outside the mesh (KFP: ``sidecar.istio.io/inject: "false"``,
kubeflow/pipelines#14468) with the env and projected token its rendered PodDefault gives it, through the
twin's pod network to the ingress gateway, which validates the token with Kubeflow's ``m2m-token-issuer``
RequestAuthentication (vendored from kubeflow/manifests, patched as ``oauth2_proxy_kustomization`` patches
it), admits the replay route for the release driver only (the rendered ``kfrelease-production-replay``), and
routes it by the rendered VirtualService to production's predictor alone.

Every outbound sidecar is scoped as Istio scopes it (review eks2 H2, M1): Kubeflow's mesh-wide egress ``Sidecar``
(vendored) and the rendered ones; the in-mesh client reaches the release host only because the rendered
``mesh-clients`` Sidecar lists the serving namespace."""

from __future__ import annotations

import json

import httpx
import jsonpatch
import numpy as np
import pandas as pd
import pytest
import yaml

from kfrelease import httpcalls
from kfrelease.access.credentials import load_credentials
from kfrelease.collectors.feedback import LabelSources, write_feedback
from kfrelease.k8s.driver.kserve import KServeTrafficDriver
from kfrelease.k8s.environments import MONITORING_NS, RELEASE_NS
from kfrelease.k8s.policy.istio import Request, Workload, decide, upstream_policies, upstream_sidecars
from kfrelease.k8s.policy.rbac import service_account
from kfrelease.k8s.render.egress import mesh_client_sidecars
from kfrelease.k8s.render.inference import (
    CANARY_SERIES_STAGE,
    REPLAY_HEADER,
    REPLAY_VALUE,
    predictor_identity,
    predictor_name,
    predictor_service,
    production_name,
    staging_name,
    version_slug,
)
from kfrelease.k8s.render.kubeflow import oauth2_proxy_kustomization
from kfrelease.k8s.render.mesh import INGRESS_GATEWAY, ROOT_NS, principal, request_principal
from kfrelease.k8s.render.platform import RELEASE_DRIVER_SA, RELEASE_DRIVER_STEP, STEP_LABEL
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents
from kfrelease.kfp.submit import TOKEN_AUDIENCE
from kfrelease.lake import read_labels, read_predictions, shadow_pairs
from kfrelease.registry.artifact import model_format
from kfrelease.release.checks import render_query
from kfrelease.release.controller import ReleaseController
from kfrelease.release.shadow import evaluate_shadow
from kfrelease.release.signals import MetricSourceError, PrometheusMetrics
from kfrelease.resources import resource_dir
from kfrelease.rollout.traffic import TrafficState
from kfrelease.storage import store_for
from tests.cluster_standin import Cluster
from tests.serving.serving_helpers import FEATURES, curated_frame, expected_predictions, make_model_dir
from tests.waiting import eventually

from . import GATEWAY_SERVICE, UNREACHABLE, Twin

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]  # KServe 0.20: Standard mode with spec.canary
# min_exposure 0: the gate's tail check needs about 1,900 labelled pairs before it can pass (GateRule); the
# accuracy check decides on this test's ~60
SPEC = SOURCES.spec.with_changes(serving={"deployment_mode": "RawDeployment"}, shadow={"min_exposure": 0})
#: a second model the platform serves (rendered beside SPEC: its own predictor identities and sink writers)
OTHER = SPEC.with_changes(model="friedman-response")
V1, V2 = ENV.production_version, "V1.2.0"
REPO = f"oci://{ENV.registry}/kfrelease/{SPEC.model}"
URIS = {V1: f"{REPO}:{V1}", V2: f"{REPO}@sha256:" + "b" * 64}
PATH = f"/v1/models/{SPEC.model}:predict"


def cluster_objects(cluster: Cluster) -> dict[str, list[dict]]:
    """What the twin's controllers read: the serving namespace's objects, the Ingress and the PodMonitor."""
    ns = SPEC.serving.namespace
    out: dict[str, list[dict]] = {}
    for (kind, namespace, _), doc in sorted(cluster.objects.items()):
        if (
            namespace == ns
            or kind == "Ingress"
            or (kind == "PodMonitor" and namespace == MONITORING_NS)
            or (kind == "AuthorizationPolicy" and namespace == ROOT_NS)  # the gateway's
            or kind == "Sidecar"  # the egress scope of every sidecar (knative-serving's rendered ones)
        ):
            out.setdefault(kind, []).append(doc)
    out["PodMonitor"] = [d for d in out["PodMonitor"] if d["metadata"]["name"] == "kfrelease-predictors"]
    return out


def store_env(stack):
    """What IRSA gives a pod of the role on EKS, on this machine: the role's keys on the local object store."""

    def env(role: str) -> dict[str, str]:
        creds = load_credentials(stack, role)
        return {
            "KFRELEASE_S3_ENDPOINT": stack.s3_address,
            "KFRELEASE_S3_SECURE": "false",
            "KFRELEASE_S3_REGION": stack.s3_region,
            "KFRELEASE_BUCKET_PREFIX": stack.bucket_prefix,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        }

    return env


def gateway_authentications() -> list[dict]:
    """Kubeflow's ``m2m-token-issuer`` RequestAuthentication (kubeflow/manifests
    ``common/oauth2-proxy/components/istio-m2m/requestauthentication.yaml``, vendored) with the patches our
    oauth2-proxy kustomization applies to it for this environment (the cluster's issuer, ``audiences``)."""
    upstream = yaml.safe_load(
        (resource_dir("schemas") / "kubeflow" / "oauth2-proxy" / "requestauthentication.yaml").read_text()
    )
    ops = [op for patch in oauth2_proxy_kustomization(ENV)["patches"] for op in yaml.safe_load(patch["patch"])]
    return [jsonpatch.apply_patch(upstream, ops)]


def release_step_env(cluster: Cluster, twin: Twin, home) -> dict[str, str]:
    """What the release step's pod has, on this machine: the env of the PodDefault its label selects (as the
    admission webhook applies it), and each projected service-account token it mounts, issued by the twin for
    the pod's service account and audience, in a local directory instead of the mount path."""
    pod = cluster.admit_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "release-step", "namespace": RELEASE_NS, "labels": {STEP_LABEL: RELEASE_DRIVER_STEP}},
            "spec": {"serviceAccountName": "default-editor", "containers": [{"name": "main", "image": "kfrelease"}]},
        }
    )
    defaults = cluster.objects[("PodDefault", RELEASE_NS, f"kfrelease-{RELEASE_DRIVER_STEP}-step")]
    env = {e["name"]: e["value"] for e in defaults["spec"].get("env") or []}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
        for source in (volumes[mount["name"]].get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if not token:
                continue
            local = home / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            issued = twin.token(RELEASE_NS, pod["spec"]["serviceAccountName"], token["audience"])
            (local / token["path"]).write_text(issued)
            env = {k: v.replace(mount["mountPath"], str(local)) for k, v in env.items()}
    return env


@pytest.fixture
def twin(tmp_path, stack):
    rows = curated_frame().head(40)
    dirs = {
        V1: make_model_dir(tmp_path / "models", SPEC.model, V1, flavour="onnx"),
        V2: make_model_dir(tmp_path / "models2", SPEC.model, V2, offset=25.0, flavour="onnx"),
    }
    client = principal(ENV.mesh_clients[0], "default")
    t = Twin(
        tmp_path / "twin",
        dirs,
        ENV.kserve_version,
        client,
        upstream_policies(),
        store_env(stack),
        issuer=ENV.oidc_issuer,
        authentications=gateway_authentications(),
        # what the cluster has beyond the overlay: Kubeflow's own Sidecars and the client namespace's (applied
        # from manifests/eks/<env>/mesh-clients.yaml)
        sidecars=upstream_sidecars(ENV.kubeflow_version) + mesh_client_sidecars(ENV, SPEC.serving.namespace),
    )
    t.home = tmp_path
    t.stack = stack
    t.rows, t.dirs = rows, dirs
    yield t
    t.stop()


def answers(twin: Twin, host: str, n: int, via: str = "alb", ids: list | None = None) -> list[float]:
    """``n`` requests (rows in turn); ``ids`` gets each answer's ``x-request-id`` and row, what a client labels."""
    send = twin.via_alb if via == "alb" else twin.via_mesh
    out = []
    for i in range(n):
        row = twin.rows[FEATURES].iloc[i % len(twin.rows)].tolist()
        r = send(host, PATH, {"instances": [row]})
        assert r.status_code == 200, (via, host, r.status_code, r.text[:300])
        out.append(r.json()["predictions"][0])
        if ids is not None:
            ids.append((r.headers["x-request-id"], i % len(twin.rows)))
    return out


@pytest.mark.slow(seconds=45, waits=True)
def test_a_non_first_candidate_is_shadowed_canaried_with_the_clusters_labels_and_promoted(twin, monkeypatch):
    src = Sources(**{**SOURCES.__dict__, "spec": SPEC, "models": (SPEC, OTHER)})
    cluster = Cluster(environment_documents(src, ENV) + inference_documents(SPEC, ENV), kserve=ENV.kserve_version)
    driver = KServeTrafficDriver(
        SPEC,
        URIS,
        cluster.client(service_account(RELEASE_NS, RELEASE_DRIVER_SA)),
        holder=V2,
        kserve_version=ENV.kserve_version,
        domain=ENV.model_domain,
        # each version's modelFormat from its entry, as the release steps read it (pipeline_steps.version_sources)
        model_formats={v: model_format(json.loads((d / "model.json").read_text())) for v, d in twin.dirs.items()},
    )
    v1 = expected_predictions(twin.dirs[V1], twin.rows)
    v2 = expected_predictions(twin.dirs[V2], twin.rows)

    # production V1 from the bootstrap: the ALB accepts the model's host and answers 404 to others
    twin.reconcile(cluster_objects(cluster))
    vs = cluster_objects(cluster)["VirtualService"][0]
    host = next(h for h in vs["spec"]["hosts"] if h.endswith(ENV.model_domain))  # the public release host
    mesh_host = next(h for h in vs["spec"]["hosts"] if h.endswith(".svc.cluster.local"))  # in the mesh
    assert answers(twin, host, 5) == pytest.approx(v1[:5])
    assert twin.via_alb("model.unknown.example.org", PATH, {"instances": [[0.0] * len(FEATURES)]}).status_code == 404

    # shadow: every mirrored copy reaches the candidate, from the gateway and from a client's own sidecar
    since = pd.Timestamp.now(tz="UTC")
    driver.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    twin.reconcile(cluster_objects(cluster))
    ids: list[tuple[str, int]] = []
    assert answers(twin, host, 20, ids=ids) == pytest.approx(v1[:20])  # clients see production only
    assert answers(twin, mesh_host, 20, via="mesh", ids=ids) == pytest.approx(v1[:20])
    shadow = next(p for p in twin.pods.values() if p.labels["kfrelease.io/stage"] == "staging")
    copies = eventually(
        lambda: (
            [d for d in shadow.sidecar.decisions if d.path == PATH] if len(shadow.sidecar.decisions) >= 40 else None
        ),
        30,
        "40 mirrored copies at the shadow",
        ignoring=UNREACHABLE,
    )
    assert all(d.allowed for d in copies), [d.why for d in copies if not d.allowed][:3]
    assert {d.peer for d in copies} == {INGRESS_GATEWAY, twin.client_principal}
    assert all(d.host.endswith("-shadow") for d in copies)
    shadow_answered = PrometheusMetrics(
        twin.prometheus.url, SPEC.model, V2, stage="staging", namespace=SPEC.serving.namespace
    )
    eventually(
        lambda: (shadow_answered.health(None, 120).requests or 0) >= 30,
        60,
        "the shadow's answers scraped",
        ignoring=UNREACHABLE,
    )

    # labelled pairs: both stages' KServe agents log to the rendered sink, the clients' labels go in through the
    # rendered feedback route, and the shadow gate decides on what the lake joins (the labels say the candidate
    # is right: its answer plus noise of sd 5; production is about 25 off)
    answers(twin, host, 40, ids=ids)
    assert len({rid for rid, _ in ids}) == len(ids) == 80
    truth = np.asarray(v2) + np.random.default_rng(0).normal(0.0, 5.0, len(v2))
    labels = [{"request_id": rid, "truth": float(truth[i]), "model": SPEC.model} for rid, i in ids]
    # through the gateway only a declared label source may post (environments.yaml label_sources), with its
    # pod's projected token: a data scientist's default-editor token, any other verified token, or none, is 403
    (labeller_ns, labeller_sa) = ENV.label_sources[0].split("/")
    labeller = twin.token(labeller_ns, labeller_sa, TOKEN_AUDIENCE)
    for token in (
        twin.token("ds-ada", "default-editor", TOKEN_AUDIENCE),
        twin.token("shop", "default", TOKEN_AUDIENCE),
    ):
        refused = twin.via_alb(host, "/v1/feedback", labels[:1], token=token)
        assert refused.status_code == 403 and refused.text == "RBAC: access denied", refused.text[:200]
    assert twin.via_alb(host, "/v1/feedback", labels[:1]).status_code == 403  # no token
    r = twin.via_alb(host, "/v1/feedback", labels[:40], token=labeller)  # a client outside: ALB, gateway
    assert r.status_code == 200, r.text[:300]
    r = twin.via_mesh(mesh_host, "/v1/feedback", labels[40:])  # an in-mesh client, through its own sidecar
    assert r.status_code == 200, r.text[:300]
    feedback = next(p for p in twin.services.values() if p.labels["app.kubernetes.io/name"] == "kfrelease-feedback")
    assert {(d.peer, d.allowed) for d in feedback.sidecar.decisions} == {
        (INGRESS_GATEWAY, True),
        (twin.client_principal, True),
    }
    # labels of an undeclared source (written in bulk under a data scientist's name, later, so "latest label
    # wins" would take them: production's own answers as truth) do not count in the gates
    serving_store = store_for("serving", twin.stack)
    forged = [{"request_id": rid, "truth": float(v1[i])} for rid, i in ids]
    write_feedback(
        serving_store, SPEC.model, forged, f"{INGRESS_GATEWAY} user=system:serviceaccount:ds-ada:default-editor"
    )
    step_env = release_step_env(cluster, twin, twin.home / "release-step")
    declared = LabelSources.from_declaration(json.loads(step_env["KFRELEASE_LABEL_SOURCES"])).declares
    agents = [p.agent for p in twin.pods.values() if p.agent]
    assert len(agents) == 2 and all(p.agent for p in twin.pods.values())  # every predictor logs (rendered logger)
    store = store_for("pipeline", twin.stack)
    rule = SPEC.shadow.rule()
    scale = float(np.sqrt(np.mean((truth - np.asarray(v1)) ** 2)))  # production's reference RMSE on these rows
    last: list = []

    def gate():
        last[:] = [evaluate_shadow(store, SPEC.model, V2, V1, since, rule=rule, declared=declared, scale=scale)]
        return last[0].decided and last[0]

    try:
        verdict = eventually(gate, 90, "the shadow gate's decision on labelled pairs")
    except AssertionError as exc:
        sent = {(kind[-8:], status) for a in agents for kind, _, status in a.sent}
        raise AssertionError(f"{exc}; last verdict: {last[0].summary() if last else None}; events: {sent}") from None
    assert all(status == 200 for a in agents for _, _, status in a.sent), [a.sent[:3] for a in agents]
    assert verdict.decision == "pass", verdict.summary()
    assert verdict.evidence["n"] >= rule.min_labelled_samples and verdict.evidence["test"]["n"] > 0
    # each label carries who posted it: the mesh identity the feedback pod's sidecar passed on (the gateway with
    # the verified user it relayed, the in-mesh client's own), both declared label sources of the rendered
    # Deployment; the forged ones are not
    (stored,) = eventually(  # a 1-tuple: eventually tests its value's truth, which a DataFrame refuses
        lambda: (got,) if len(got := read_labels(store, SPEC.model, since=since, declared=declared)) >= 80 else None,
        30,
        "the 80 labels stored",
    )
    relayed = f"{INGRESS_GATEWAY} user=system:serviceaccount:{labeller_ns}:{labeller_sa}"
    assert len(stored) == 80 and set(stored["source"]) == {relayed, twin.client_principal}
    assert len(read_labels(store, SPEC.model, since=since)) == 160  # the forged ones are stored, and ignored
    sink = next(p for p in twin.services.values() if p.labels["app.kubernetes.io/name"] == "kfrelease-logsink")
    ns = SPEC.serving.namespace
    own = {principal(ns, predictor_identity(SPEC, "production")), principal(ns, predictor_identity(SPEC, "staging"))}
    assert {d.peer for d in sink.sidecar.decisions} == own  # production's agent and the shadow's, each its own SA
    assert all(d.allowed for d in sink.sidecar.decisions)

    # the shadow's identity logs the shadow only (review eks4 R2; its pickle is refused anyway): "production's"
    # answer to a mirrored, labelled request, posted from the shadow's pod to the rendered logger URL as code in it
    # would post it (KServe's headers, an earlier ce-time, another ce-source, an x-forwarded-client-cert of its
    # own naming production), is refused by the rendered sink and changes no pair the shadow gate reads
    def pairs():
        labels = read_labels(store, SPEC.model, since=since, declared=declared)
        return shadow_pairs(read_predictions(store, SPEC.model, since=since), labels, V2, V1)

    before = pairs()
    forged = {
        "ce-specversion": "1.0",
        "ce-id": ids[0][0],
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-source": "http://forger/",
        "ce-time": since.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "ce-inferenceservicename": production_name(SPEC),
        "ce-namespace": ns,
        "ce-component": "predictor",
        "ce-endpoint": "",
        "content-type": "application/json",
        "x-forwarded-client-cert": f"URI=spiffe://{principal(ns, predictor_identity(SPEC, 'production'))}",
    }
    body = json.dumps({"predictions": [1e6], "model_version": V1}).encode()
    assert twin.send_from(shadow, shadow.logger["url"], body, forged) == 403
    sink_url = f"http://127.0.0.1:{sink.port}/healthz"
    eventually(
        lambda: httpcalls.get(sink_url, timeout=5).json()["pending"] == 0, 30, "the sink holds nothing unwritten"
    )
    after = pairs()
    assert len(after) == len(before) and ids[0][0] in set(after["request_id"])
    answered = after[after["request_id"] == ids[0][0]]["production"]
    assert answered.tolist() == pytest.approx([v1[ids[0][1]]])  # production's own answer, not the forged 1e6
    # nor does it log anything of another model: the other's staging events (the stage it logs, another model's
    # shadow gate) are refused too, since each InferenceService has its own identity; one service account for
    # every model's shadow took them
    other = {
        **forged,
        "ce-id": "other-model-1",
        "ce-inferenceservicename": staging_name(OTHER),
        "x-forwarded-client-cert": f"URI=spiffe://{principal(ns, predictor_identity(OTHER, 'staging'))}",
    }
    assert twin.send_from(shadow, shadow.logger["url"], body, other) == 403
    eventually(
        lambda: httpcalls.get(sink_url, timeout=5).json()["pending"] == 0, 30, "the sink holds nothing unwritten"
    )
    assert len(read_predictions(store, OTHER.model, since=since)) == 0

    # canary at 50 %: the controller's own queries read the canary's requests with the cluster's labels
    driver.apply(TrafficState(primary=V1, canary=V2, canary_weight=50))
    twin.reconcile(cluster_objects(cluster))
    canary_since = pd.Timestamp.now(tz="UTC")
    canary_ids: list[tuple[str, int]] = []
    got = answers(twin, host, 80, ids=canary_ids)
    v2_values = {round(x, 6) for x in v2}
    from_v2 = sum(1 for g in got if round(g, 6) in v2_values)
    assert 15 <= from_v2 <= 65, from_v2  # both versions answer
    # as the controller builds it on a cluster (release.controller.signals_for): the PodMonitor job and namespace
    canary = PrometheusMetrics(
        twin.prometheus.url, SPEC.model, V2, stage=CANARY_SERIES_STAGE, namespace=SPEC.serving.namespace
    )
    health = eventually(
        lambda: (h := canary.health(None, 60)).requests >= 0.8 * from_v2 and h,
        60,
        "the canary's requests scraped",
        ignoring=UNREACHABLE,
    )
    assert health.errors == 0 and health.error_rate == 0 and health.latency_ms[0.99] is not None
    # every series of the canary's pod, KServe's own included, carries its version (the PodMonitor's
    # podTargetLabels); KServe's request_preprocess_seconds is observed only off the predictor's fast lane
    assert canary.query(f'sum(up{{kfrelease_io_version="{version_slug(V2)}",pod=~".*{version_slug(V2)}.*"}})') == 1
    declared = render_query(
        'sum(increase(kfrelease_predictor_requests_total{{model="{model}",version="{version}",stage="{stage}"}}'
        "[{window}]))",
        SPEC.model,
        V2,
        canary.stage,
        60,
    )
    # the same requests through the declared series, read until Prometheus has it: ``increase`` needs two scrapes of
    # a series inside its window, and one fresh-clone run read None right after the health above had passed
    eventually(
        lambda: (canary.query(declared) or 0) > 0, 30, "the declared series' canary requests", ignoring=UNREACHABLE
    )
    assert decide(
        twin.upstream_policies + cluster_objects(cluster)["AuthorizationPolicy"],
        Request(Workload(SPEC.serving.namespace, shadow.labels), 8080, "/metrics", "GET", None),
    )[0]  # Prometheus (no sidecar) may scrape the pods

    # the canary's requests are logged (KServe 0.20's own canary Service skips the agent; the VirtualService
    # sends the canary's share to the rendered Service in front of it) and labelled by a declared source
    canary_pod = next(p for p in twin.pods.values() if p.canary)
    assert canary_pod.service_target == 8080  # KServe's canary Service: the model server, past the agent
    r = twin.via_alb(
        host,
        "/v1/feedback",
        [{"request_id": rid, "truth": float(truth[i]), "model": SPEC.model} for rid, i in canary_ids],
        token=labeller,
    )
    assert r.status_code == 200, r.text[:300]
    # the canary's labelled accuracy check: production's answers to the canary's logged inputs, asked as the
    # release step asks them on the cluster (its PodDefault's env and token, from outside the mesh)
    instances = twin.rows[FEATURES].values.tolist()
    with monkeypatch.context() as mp:
        for name, value in step_env.items():
            mp.setenv(name, value)
        mp.setenv("HTTP_PROXY", twin.network.url)  # the pod's network: cluster DNS names, no sidecar
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        controller = ReleaseController(twin.stack, SPEC, driver, store=store, report=False)
        try:
            labelled = eventually(
                lambda: (n := len(controller.canary_labelled(V2, canary_since))) >= 0.8 * from_v2 and n,
                60,
                "the canary's labelled requests in the lake",
            )
        except AssertionError as exc:
            sent = [(kind[-8:], status) for kind, _, status in (canary_pod.agent.sent if canary_pod.agent else [])]
            raise AssertionError(f"{exc}; the canary's agent sent {len(sent)} events") from None
        assert labelled <= from_v2
        try:
            replayed = controller.production_scorer(V1, instances, "replay-twin-1")
        except MetricSourceError as exc:
            raise AssertionError(f"the canary's labelled check cannot get production's answers: {exc}") from None
    assert replayed == pytest.approx(v1)  # every answer is production's, none the canary's, at 50 %
    (asked,) = [d for d in twin.gateway.decisions if d.headers.get(REPLAY_HEADER) == REPLAY_VALUE]
    assert asked.status == 200 and asked.request_principal == request_principal(
        ENV.oidc_issuer, RELEASE_NS, RELEASE_DRIVER_SA
    )
    # why not directly: without a sidecar the predictor's own Service refuses the step (global-deny-all) ...
    production_svc = predictor_service(production_name(SPEC), predictor_name(V1), ENV.kserve_version)
    direct = httpcalls.post(
        f"http://{production_svc}.{SPEC.serving.namespace}.svc.cluster.local{PATH}",
        json={"instances": instances[:1]},
        proxy=twin.network.url,
    )
    assert direct.status_code == 403 and direct.text == "RBAC: access denied"
    # ... and at the gateway the replay route is the release driver's alone
    gateway = f"http://{GATEWAY_SERVICE}{PATH}"

    def replay_as(token: str | None) -> httpx.Response:
        headers = {"host": host, REPLAY_HEADER: REPLAY_VALUE}
        if token:
            headers["authorization"] = f"Bearer {token}"
        return httpcalls.post(gateway, json={"instances": instances[:1]}, headers=headers, proxy=twin.network.url)

    assert replay_as(None).status_code == 403  # no token: no request principal
    assert replay_as(twin.token("shop", "default", TOKEN_AUDIENCE)).status_code == 403  # another identity
    assert replay_as(twin.token(RELEASE_NS, RELEASE_DRIVER_SA, "sts.amazonaws.com")).status_code == 401  # audience
    assert replay_as(twin.token(RELEASE_NS, RELEASE_DRIVER_SA, TOKEN_AUDIENCE)).status_code == 200

    # promote: V2 serves everything, the Lease is released
    driver.apply(TrafficState(primary=V2))
    twin.reconcile(cluster_objects(cluster))
    assert answers(twin, host, 10) == pytest.approx(v2[:10])
    lease = cluster.objects[("Lease", SPEC.serving.namespace, driver.lock.ref["name"])]
    assert lease["spec"]["holderIdentity"] == ""


def test_an_in_mesh_client_reaches_the_release_host_only_when_its_sidecar_lists_the_serving_namespace(twin):
    """Review eks2 H2: under Kubeflow's mesh-wide egress Sidecar alone, the client namespace's sidecar does not load
    the release VirtualService (namespace ``kfrelease-serving``), so a request to the release host goes to a
    Service without endpoints (Envoy's 503); the ALB path is unaffected. With the rendered namespace-default
    Sidecar of ``mesh-clients.yaml`` the client routes by the VirtualService and the predictor admits its identity."""
    src = Sources(**{**SOURCES.__dict__, "spec": SPEC})
    cluster = Cluster(environment_documents(src, ENV) + inference_documents(SPEC, ENV), kserve=ENV.kserve_version)
    v1 = expected_predictions(twin.dirs[V1], twin.rows)
    twin.sidecars = upstream_sidecars(ENV.kubeflow_version)  # Kubeflow's default only
    twin.reconcile(cluster_objects(cluster))
    vs = cluster_objects(cluster)["VirtualService"][0]
    host = next(h for h in vs["spec"]["hosts"] if h.endswith(ENV.model_domain))
    mesh_host = next(h for h in vs["spec"]["hosts"] if h.endswith(".svc.cluster.local"))
    row = twin.rows[FEATURES].iloc[0].tolist()
    refused = twin.via_mesh(mesh_host, PATH, {"instances": [row]})
    assert refused.status_code == 503, (refused.status_code, refused.text[:200])
    assert "does not list kfrelease-serving/" in twin.client_decision
    assert answers(twin, host, 2) == pytest.approx(v1[:2])

    twin.sidecars = upstream_sidecars(ENV.kubeflow_version) + mesh_client_sidecars(ENV, SPEC.serving.namespace)
    twin.reconcile(cluster_objects(cluster))
    assert answers(twin, mesh_host, 3, via="mesh") == pytest.approx(v1[:3])
    (pod,) = twin.pods.values()
    assert [d.peer for d in pod.sidecar.decisions if d.path == PATH][-3:] == [twin.client_principal] * 3
