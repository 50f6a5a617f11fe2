"""The cluster traffic driver, replayed on the cluster stand-in (``tests/cluster_standin``: the Kubernetes API
cannot run here) loaded with every document an environment renders: the whole release (shadow -> canary
steps -> promote, and a rollback) as the release steps' service account, every object admitted against its
CRD schema, the Role's rights checked on each request, the model's Lease as the release lock."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from kfrelease.errors import ConfigError, Conflict
from kfrelease.k8s.driver.kserve import DriverForbidden, KServeTrafficDriver, ref_of
from kfrelease.k8s.environments import RELEASE_NS
from kfrelease.k8s.policy.rbac import service_account
from kfrelease.k8s.render.inference import production_name, recorded_state
from kfrelease.k8s.render.platform import RELEASE_DRIVER, RELEASE_DRIVER_SA, release_lease_name
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents
from kfrelease.release.controller import resume_step
from kfrelease.rollout.spec import RolloutSpecError
from kfrelease.rollout.traffic import TrafficState
from tests.cluster_standin import Cluster

SOURCES = Sources.load()
ENV = SOURCES.envs.environments["staging"]
V1, V2, V3 = ENV.production_version, "V1.2.0", "V1.3.0"
REPO = f"oci://{ENV.registry}/kfrelease/diabetes-progression"
URIS = {V1: f"{REPO}:{V1}", V2: f"{REPO}@sha256:" + "b" * 64, V3: f"{REPO}@sha256:" + "c" * 64}
DRIVER = service_account(RELEASE_NS, RELEASE_DRIVER_SA)
SERVERLESS = SOURCES.spec
RAW = SERVERLESS.with_changes(serving={"deployment_mode": "RawDeployment"})


def cluster_for(spec, docs=None, kserve=ENV.kserve_version) -> Cluster:
    """The stand-in holding what the platform engineer applied for ``spec``'s serving mode, on the
    environment's KServe (its CRD schemas and admission rules check every write)."""
    return Cluster(docs if docs is not None else applied(spec), kserve=kserve)


def applied(spec) -> list[dict]:
    """The overlay and the one-time bootstrap (production InferenceService + VirtualService)."""
    src = Sources(**{**SOURCES.__dict__, "spec": spec})
    return environment_documents(src, ENV) + inference_documents(spec, ENV)


def driver(cluster, spec, holder=V2, **kwargs) -> KServeTrafficDriver:
    return KServeTrafficDriver(
        spec,
        URIS,
        cluster.client(DRIVER),
        holder=holder,
        kserve_version=cluster.kserve or ENV.kserve_version,
        domain=ENV.model_domain,
        **kwargs,
    )


def isvcs(cluster, spec) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d
        for (k, ns, _), d in cluster.objects.items()
        if k == "InferenceService"
        and ns == spec.serving.namespace
        and d["metadata"]["labels"]["kfrelease.io/model"] == production_name(spec)
    }


def weight(cluster, spec) -> int | None:
    pred = isvcs(cluster, spec)[production_name(spec)]["spec"]
    if spec.serving.deployment_mode == "Serverless":
        return pred["predictor"].get("canaryTrafficPercent")
    return (pred.get("canary") or [{}])[0].get("trafficPercent")


def release(d, cluster, spec, steps, fail_at=None):
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    assert set(isvcs(cluster, spec)) == {production_name(spec), f"{production_name(spec)}-staging"}
    for w in steps:
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=w))
        # Serverless renders a canary at 100 % as promoted (no canaryTrafficPercent)
        assert weight(cluster, spec) == (None if w == 100 and spec.serving.deployment_mode == "Serverless" else w)
        if w == fail_at:
            d.apply(TrafficState(primary=V1))
            return
    d.apply(TrafficState(primary=V2))


def traffic_objects(cluster) -> dict:
    """Everything but the release lock (which a refused move may still have renewed)."""
    return {k: v for k, v in cluster.objects.items() if k[0] != "Lease"}


def env_of(doc) -> dict:
    return {e["name"]: e["value"] for e in doc["spec"]["predictor"]["model"]["env"]}


@pytest.mark.parametrize(
    "spec,kserve",
    [(SERVERLESS, ENV.kserve_version), (RAW, ENV.kserve_version), (SERVERLESS, "0.15.2")],
    ids=["serverless", "raw", "serverless-kserve-0.15.2"],
)
def test_the_whole_release_runs_as_the_driver_service_account_with_no_403(spec, kserve):
    cluster = cluster_for(spec, kserve=kserve)
    d = driver(cluster, spec)
    d.check_rights(
        [
            TrafficState(primary=V1, shadow=V2, mirror_percent=100),
            *[TrafficState(primary=V1, canary=V2, canary_weight=w) for w in spec.canary.steps],
            TrafficState(primary=V2),
        ]
    )
    release(d, cluster, spec, spec.canary.steps)
    assert cluster.refused == []
    (prod,) = isvcs(cluster, spec).values()  # the staging shadow was deleted
    assert env_of(prod)["KFRELEASE_MODEL_VERSION"] == V2 and weight(cluster, spec) is None
    assert prod["spec"]["predictor"]["model"]["storageUri"] == URIS[V2]
    assert d.current() == TrafficState(primary=V2)
    lease = cluster.objects[("Lease", spec.serving.namespace, release_lease_name(production_name(spec)))]
    assert lease["spec"]["holderIdentity"] == ""  # released once one version serves


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_a_rollback_sets_the_canary_to_zero_first_then_back_to_production_with_no_403(spec):
    cluster = cluster_for(spec)
    d = driver(cluster, spec)
    release(d, cluster, spec, [10, 25], fail_at=25)
    assert cluster.refused == []
    patches = [
        ref["patch"]["spec"] for kind, ref in d.objects.calls if kind == "patch" and ref["kind"] == "InferenceService"
    ]
    zero = patches[-2]
    if spec.serving.deployment_mode == "Serverless":
        assert zero["predictor"]["canaryTrafficPercent"] == 0  # KServe's instant rollback
    else:
        assert zero["canary"][0]["trafficPercent"] == 0
    (prod,) = isvcs(cluster, spec).values()
    assert env_of(prod)["KFRELEASE_MODEL_VERSION"] == V1 and weight(cluster, spec) is None


def without_staging_delete(docs: list[dict]) -> list[dict]:
    """The Role as it was rendered before: no delete on InferenceServices."""
    docs = copy.deepcopy(docs)
    for doc in docs:
        if doc["kind"] == "Role" and doc["metadata"]["name"] == RELEASE_DRIVER:
            doc["rules"] = [r for r in doc["rules"] if "delete" not in r["verbs"]]
    return docs


def test_a_move_the_role_does_not_allow_sends_nothing_so_no_canary_is_left_half_moved():
    cluster = cluster_for(SERVERLESS, without_staging_delete(applied(SERVERLESS)))
    d = driver(cluster, SERVERLESS)
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    before = copy.deepcopy(traffic_objects(cluster))
    with pytest.raises(DriverForbidden, match="delete InferenceService .*diabetes-progression-staging"):
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))  # ends the shadow: deletes staging
    assert traffic_objects(cluster) == before, "production was patched although the move could not complete"
    assert weight(cluster, SERVERLESS) is None
    with pytest.raises(DriverForbidden, match="no traffic was moved"):  # and the up-front check says so
        driver(cluster_for(SERVERLESS, without_staging_delete(applied(SERVERLESS))), SERVERLESS).check_rights(
            [
                TrafficState(primary=V1, shadow=V2, mirror_percent=100),
                TrafficState(primary=V1, canary=V2, canary_weight=10),
            ]
        )


def test_the_driver_may_not_delete_production():
    cluster = cluster_for(SERVERLESS)
    assert not cluster.can(
        DRIVER, "delete", "InferenceService", SERVERLESS.serving.namespace, production_name(SERVERLESS)
    )
    assert cluster.can(
        DRIVER, "delete", "InferenceService", SERVERLESS.serving.namespace, f"{production_name(SERVERLESS)}-staging"
    )


def test_two_releases_of_one_model_never_patch_the_same_objects():
    cluster = cluster_for(SERVERLESS)
    first, second = driver(cluster, SERVERLESS, holder=V2), driver(cluster, SERVERLESS, holder=V3)
    first.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    before = copy.deepcopy(cluster.objects)
    with pytest.raises(Conflict, match=f"the release of {V2} holds the lock"):
        second.apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))
    assert cluster.objects == before  # not even the lock changed
    first.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    first.apply(TrafficState(primary=V2))  # one version serves: the lock is free
    second.apply(TrafficState(primary=V2, shadow=V3, mirror_percent=100))
    assert env_of(isvcs(cluster, SERVERLESS)[f"{production_name(SERVERLESS)}-staging"])["KFRELEASE_MODEL_VERSION"] == V3


def test_a_lock_nobody_renews_expires_and_a_stale_write_loses():
    cluster = cluster_for(SERVERLESS)
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    first = driver(cluster, SERVERLESS, holder=V2, clock=lambda: now[0])
    first.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    second = driver(cluster, SERVERLESS, holder=V3, clock=lambda: now[0])
    now[0] += dt.timedelta(seconds=first.lock.duration - 1)
    with pytest.raises(Conflict):
        second.lock.acquire()
    now[0] += dt.timedelta(seconds=2)
    lease = second.objects.get(second.lock.ref)
    first.lock.acquire()  # the holder renews between the other's read and write ...
    with pytest.raises(Conflict, match="modified"):
        second.objects.replace({**lease, "spec": {**lease["spec"], "holderIdentity": V3}})  # ... which loses


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_an_evicted_release_resumes_from_the_state_the_cluster_records(spec):
    cluster = cluster_for(spec)
    d = driver(cluster, spec)
    release_states = [
        TrafficState(primary=V1, shadow=V2, mirror_percent=100),
        TrafficState(primary=V1, canary=V2, canary_weight=10),
        TrafficState(primary=V1, canary=V2, canary_weight=25),
    ]
    for state in release_states:
        d.apply(state)
    # the pod is evicted; KFP retries the step: a new process, a new driver, the same release
    again = driver(cluster, spec)
    assert again.current() == release_states[-1]
    steps = list(spec.canary.steps)  # the controller's canary loop continues at 25 %, not at the first step
    assert resume_step(again.current(), V2, steps) == steps.index(25) > 0
    assert resume_step(again.current(), V3, steps) == 0  # another candidate's release starts over
    again.apply(TrafficState(primary=V1, canary=V2, canary_weight=50))  # takes its own lock back at once
    assert weight(cluster, spec) == 50 and cluster.refused == []
    vs = next(doc for (k, _, _), doc in cluster.objects.items() if k == "VirtualService")
    assert recorded_state(vs) == TrafficState(primary=V1, canary=V2, canary_weight=50)


def test_a_bad_state_sends_nothing():
    cluster = cluster_for(SERVERLESS)
    d = driver(cluster, SERVERLESS)
    before = copy.deepcopy(traffic_objects(cluster))
    with pytest.raises(ConfigError, match="no storage URI"):
        d.apply(TrafficState(primary=V1, canary="V9.9.9", canary_weight=10))  # no image for it
    with pytest.raises(RolloutSpecError):
        TrafficState(primary=V1, canary=V2, canary_weight=120)
    assert traffic_objects(cluster) == before


def test_a_release_never_touches_another_models_objects():
    from kfrelease.k8s.render.inference import render_release

    other = SERVERLESS.with_changes(model="housing-prices")
    theirs = render_release(
        other,
        TrafficState(primary="V3.1.0", shadow="V3.2.0", mirror_percent=100),
        {"V3.1.0": f"{REPO}:V3.1.0", "V3.2.0": f"{REPO}:V3.2.0"},
    )
    cluster = cluster_for(SERVERLESS, applied(SERVERLESS) + theirs)
    before = {k: copy.deepcopy(v) for k, v in cluster.objects.items() if "housing-prices" in k[2]}
    assert len(before) == 3
    d = driver(cluster, SERVERLESS)
    release(d, cluster, SERVERLESS, SERVERLESS.canary.steps)
    assert {k: v for k, v in cluster.objects.items() if "housing-prices" in k[2]} == before
    assert cluster.refused == []


def test_the_lock_reads_the_lease_as_a_real_api_server_and_client_return_it():
    """Finding: the Lease's ``renewTime`` comes back from a real server as ``...123456Z`` and out of the
    ``kubernetes`` client's typed ``V1Lease`` as ``...123456+00:00``; the lock parsed only the first and
    crashed every later release of the model. The stand-in now hands the Lease through ``V1Lease``."""
    from kfrelease.k8s.driver.lease import lease_as_dict, parse_micro_time
    from tests.cluster_standin import typed

    server_json = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kfrelease-release-x", "namespace": "ns", "resourceVersion": "7"},
        "spec": {"holderIdentity": V2, "leaseDurationSeconds": 60, "renewTime": "2026-01-01T10:00:00.123456Z"},
    }
    as_client_returns = lease_as_dict(typed(server_json, "V1Lease"))
    assert as_client_returns["spec"]["renewTime"] == "2026-01-01T10:00:00.123456+00:00"
    expected = dt.datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=dt.UTC)
    for form in ("2026-01-01T10:00:00.123456Z", "2026-01-01T10:00:00.123456+00:00", "2026-01-01T11:00:00.123456+01:00"):
        assert parse_micro_time(form) == expected

    cluster = cluster_for(SERVERLESS)
    now = [dt.datetime(2026, 12, 1, tzinfo=dt.UTC)]
    first = driver(cluster, SERVERLESS, holder=V2, clock=lambda: now[0])
    first.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    stored = cluster.objects[("Lease", SERVERLESS.serving.namespace, first.lock.ref["name"])]
    assert stored["spec"]["renewTime"].endswith("Z")  # the server's own form
    later = driver(cluster, SERVERLESS, holder=V3, clock=lambda: now[0])
    with pytest.raises(Conflict, match="holds the lock"):  # read through V1Lease, parsed, still held
        later.apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))
    now[0] += dt.timedelta(seconds=first.lock.duration + 1)
    later.lock.acquire()  # expired: taken over
    assert (
        cluster.objects[("Lease", SERVERLESS.serving.namespace, first.lock.ref["name"])]["spec"]["holderIdentity"] == V3
    )


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_a_release_step_that_gets_sigterm_leaves_production_serving_and_the_lease_free(spec):
    """Finding: no release step handled SIGTERM, so a KFP Terminate or an eviction left the canary at N %
    with the Lease held, and the model's next release was refused until the Lease expired. A real SIGTERM to
    this process, inside the step's ``terminable`` block, moves all traffic back and frees the Lease."""
    import os
    import signal
    import time

    from kfrelease.release.pipeline_steps import ReleaseTerminated, terminable

    cluster = cluster_for(spec)
    release = driver(cluster, spec, holder=V2)
    release.apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ReleaseTerminated, match="signal 15"), terminable(release, V1):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the step's work; the signal interrupts it
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not reach the step within 10 s")
    assert signal.getsignal(signal.SIGTERM) == before
    vs = next(
        d
        for (k, _, n), d in cluster.objects.items()
        if k == "VirtualService" and n == f"{production_name(spec)}-release"
    )
    assert recorded_state(vs) == TrafficState(primary=V1)
    assert all(d["metadata"]["name"] != f"{production_name(spec)}-staging" for d in isvcs(cluster, spec).values())
    lease = cluster.objects[("Lease", spec.serving.namespace, release.lock.ref["name"])]
    assert lease["spec"]["holderIdentity"] == ""
    driver(cluster, spec, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))  # not blocked


def test_a_move_waits_until_the_inference_service_is_ready_before_anything_is_measured():
    """Finding: the release steps measured right after a move, while KServe was still starting the
    candidate. With ``ready_timeout`` the driver waits for ``Ready`` on the generation it wrote, and says
    which InferenceService is not ready when the time is up."""
    from kfrelease.k8s.driver.kserve import NotReady

    cluster = cluster_for(SERVERLESS)
    waited = []
    release = driver(cluster, SERVERLESS, ready_timeout=0.0, sleep=waited.append)
    with pytest.raises(NotReady, match=r"diabetes-progression-staging is not Ready .*none yet"):
        release.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    ns = SERVERLESS.serving.namespace
    for (kind, namespace, _), doc in cluster.objects.items():  # what KServe's controller then writes
        if kind == "InferenceService" and namespace == ns:
            doc["status"] = {
                "observedGeneration": doc["metadata"]["generation"],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
    release.wait_ready(
        [
            {"kind": "InferenceService", "apiVersion": "serving.kserve.io/v1beta1", "namespace": ns, "name": n}
            for n in isvcs(cluster, SERVERLESS)
        ],
        timeout=0.0,
    )


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_a_candidate_not_ready_in_shadow_goes_away_and_frees_the_lease(spec):
    """Finding: a shadow whose InferenceService never became Ready raised ``NotReady`` out of the move with the
    mirror still on it and the model's Lease held, so every later candidate of the model was refused
    (``Conflict``) until the Lease expired. The driver now undoes the move (all traffic on production, the
    staging InferenceService deleted), releases the Lease, and says so."""
    from kfrelease.k8s.driver.kserve import NotReady

    cluster = cluster_for(spec)
    release = driver(cluster, spec, ready_timeout=0.0, sleep=lambda _s: None)
    with pytest.raises(NotReady, match=rf"staging is not Ready .*all traffic is back on {V1} and the release Lease"):
        release.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    ns = spec.serving.namespace
    vs = cluster.objects[("VirtualService", ns, f"{production_name(spec)}-release")]
    assert recorded_state(vs) == TrafficState(primary=V1) and "mirror" not in vs["spec"]["http"][0]
    assert set(isvcs(cluster, spec)) == {production_name(spec)}
    lease = cluster.objects[("Lease", ns, release.lock.ref["name"])]
    assert lease["spec"]["holderIdentity"] == ""
    driver(cluster, spec, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))  # not blocked


def test_the_driver_asks_the_api_server_to_refuse_unknown_fields_instead_of_pruning_them():
    """Finding: the client sent no ``fieldValidation``, so the server's default ``Warn`` pruned fields an
    older KServe's CRD does not know and answered 200. Every write of ``KubernetesObjects`` now carries
    ``fieldValidation=Strict``; checked on the HTTP requests the real ``kubernetes`` client sends to a
    recording server (a stand-in for the API server: it only records and answers 200)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubernetes import client

    from kfrelease.k8s.driver.kserve import KubernetesObjects

    seen = []

    class Recorder(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append((self.command, self.path))
            body = json.dumps({"apiVersion": "v1", "kind": "Status", "metadata": {}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PATCH = do_PUT = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    previous = client.Configuration.get_default_copy()
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        client.Configuration.set_default(config)
        objects = KubernetesObjects(api=client.CustomObjectsApi(client.ApiClient(config)))
        ns = SERVERLESS.serving.namespace
        isvc = next(d for d in applied(SERVERLESS) if d["kind"] == "InferenceService")
        objects.create(isvc)
        objects.patch({**ref_of(isvc), "patch": {"spec": {"predictor": {"minReplicas": 2}}}})
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": ns}}
        objects.create(lease)
        objects.replace(lease)
    finally:
        client.Configuration.set_default(previous)
        server.shutdown()
    assert [m for m, _ in seen] == ["POST", "PATCH", "POST", "PUT"]
    assert all("fieldValidation=Strict" in path for _, path in seen), seen


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_a_first_model_is_served_provisional_then_promoted_or_withdrawn_with_no_403(spec):
    """No production model yet (only the platform applied): the first model serves alone as provisional (a
    canary at 100 with no primary, rendered as production's InferenceService) and is promoted; or it is
    withdrawn: its VirtualService answers 503 naming why (Istio's directResponse, admitted by the vendored
    CRD schema) and production's InferenceService is left in place (the driver may not delete it)."""
    src = Sources(**{**SOURCES.__dict__, "spec": spec})
    provisional = TrafficState(primary=None, canary=V2, canary_weight=100)
    why = "diabetes-progression has no production model: its first model V1.2.0 was rolled back"
    withdrawn = TrafficState(primary=None, unavailable=why)
    for end in (TrafficState(primary=V2), withdrawn):
        cluster = cluster_for(spec, environment_documents(src, ENV))
        d = driver(cluster, spec)
        d.check_rights([provisional, end])
        d.apply(provisional)
        lease_key = ("Lease", spec.serving.namespace, release_lease_name(production_name(spec)))
        assert cluster.objects[lease_key]["spec"]["holderIdentity"] == V2  # still being released: the lock is held
        d.apply(end)
        assert cluster.refused == [] and d.current() == end
        (prod,) = isvcs(cluster, spec).values()
        assert env_of(prod)["KFRELEASE_MODEL_VERSION"] == V2
        vs = next(
            doc
            for (kind, ns, name), doc in cluster.objects.items()
            if kind == "VirtualService" and name == f"{production_name(spec)}-release"
        )
        assert recorded_state(vs) == end
        predict = vs["spec"]["http"][0]
        if end is withdrawn:
            assert "route" not in predict and predict["directResponse"]["status"] == 503
            assert why in predict["directResponse"]["body"]["string"]
            assert not any(kind == "delete" for kind, _ in d.objects.calls)
        else:
            assert "directResponse" not in predict and predict["route"]
        assert cluster.objects[lease_key]["spec"]["holderIdentity"] == ""  # released once the release ended
