"""The cluster traffic driver, replayed on the cluster stand-in (``tests/cluster_standin``: the Kubernetes API
cannot run here) loaded with every document an environment renders: the whole release (shadow -> canary
steps -> promote, and a rollback) as the release steps' service account, every object admitted against its
CRD schema, the Role's rights checked on each request, the model's Lease as the release lock."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kfrelease.errors import ConfigError, Conflict
from kfrelease.k8s.driver.kserve import DriverForbidden, KServeTrafficDriver, ref_of
from kfrelease.k8s.environments import RELEASE_NS
from kfrelease.k8s.policy.rbac import service_account
from kfrelease.k8s.render.inference import named_route, production_name, recorded_state
from kfrelease.k8s.render.platform import RELEASE_DRIVER, RELEASE_DRIVER_SA, release_lease_name
from kfrelease.k8s.render.tree import Sources, environment_documents, inference_documents
from kfrelease.release.controller import resume_step
from kfrelease.rollout.spec import RolloutSpecError
from kfrelease.rollout.traffic import TrafficState
from tests.cluster_standin import Cluster
from tests.cluster_standin.http import send_json
from tests.cluster_standin.kserve import KServeController


def predict_route(vs: dict) -> dict:
    return named_route(vs, "predict")


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
    assert recorded_state(vs) == retreated(spec)
    assert all(d["metadata"]["name"] != f"{production_name(spec)}-staging" for d in isvcs(cluster, spec).values())
    lease = cluster.objects[("Lease", spec.serving.namespace, release.lock.ref["name"])]
    assert lease["spec"]["holderIdentity"] == ""
    driver(cluster, spec, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))  # not blocked


def test_a_move_waits_until_the_inference_service_is_ready_before_anything_is_measured():
    """Finding: the release steps measured right after a move, while KServe was still starting the
    candidate. With ``ready_timeout`` the driver waits until KServe's controller reports the spec it wrote as
    served (the stand-in controller writes the status KServe writes: ``tests/cluster_standin/kserve.py``), and
    says which InferenceService is not ready, and why, when the time is up."""
    from kfrelease.k8s.driver.kserve import NotReady

    cluster = cluster_for(SERVERLESS)
    waited = []
    release = driver(cluster, SERVERLESS, ready_timeout=0.0, sleep=waited.append)
    with pytest.raises(NotReady, match=r"diabetes-progression-staging is not Ready .*no Ready yet"):
        release.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    KServeController(cluster, ENV.kserve_version).reconcile()  # what KServe's controller then writes
    ns = SERVERLESS.serving.namespace
    release.wait_ready(
        [
            {"kind": "InferenceService", "apiVersion": "serving.kserve.io/v1beta1", "namespace": ns, "name": n}
            for n in isvcs(cluster, SERVERLESS)
        ],
        timeout=0.0,
    )


KSERVE_020 = "0.20.0"


def reconciled(spec, kserve=KSERVE_020, available=None):
    """A cluster whose InferenceServices KServe's (stand-in) controller has reconciled once, its controller,
    and a driver that waits for readiness, the controller running between two of its polls."""
    cluster = cluster_for(spec, kserve=kserve)
    kserve_controller = KServeController(cluster, kserve, available)
    kserve_controller.reconcile()
    return cluster, kserve_controller, driver(cluster, spec, ready_timeout=5.0, sleep=kserve_controller)


@pytest.mark.parametrize(
    "spec,kserve",
    [(RAW, KSERVE_020), (SERVERLESS, KSERVE_020), (SERVERLESS, "0.15.2")],
    ids=["standard-0.20", "serverless-0.20", "serverless-0.15.2"],
)
def test_every_canary_step_is_ready_as_kserve_reports_it_not_by_generation(spec, kserve):
    """Finding C1 (review-eks): the wait compared ``status.observedGeneration`` with the InferenceService's
    ``metadata.generation``, but KServe copies observedGeneration from the stable predictor's Deployment
    (Standard) or the Knative Service (Serverless): kserve/kserve v0.20.0
    ``pkg/apis/serving/v1beta1/inference_service_status.go`` lines 455-457 and 635. A Standard-mode canary step
    changes only ``spec.canary``, so it never looked ready: NotReady after the timeout, the canary undone, no
    candidate promoted. The whole release now completes against a controller that writes what KServe writes."""
    cluster, _kserve_controller, d = reconciled(spec, kserve)
    release(d, cluster, spec, spec.canary.steps)
    assert d.current() == TrafficState(primary=V2) and cluster.refused == []
    (prod,) = isvcs(cluster, spec).values()
    if spec is RAW:  # the stable Deployment's counter, not the InferenceService's: the old wait never ended
        assert prod["status"]["observedGeneration"] < prod["metadata"]["generation"]
    lease = cluster.objects[("Lease", spec.serving.namespace, release_lease_name(production_name(spec)))]
    assert lease["spec"]["holderIdentity"] == ""


@pytest.mark.parametrize("spec", [RAW, SERVERLESS], ids=["standard-0.20", "serverless"])
def test_a_status_kserve_has_not_updated_since_the_move_is_not_taken_as_ready(spec):
    """The status read right after a move is the one of the previous spec (``Ready=True``): the driver must
    not take it for the new spec's. Each move here is answered only once the controller has run."""
    _cluster, kserve_controller, d = reconciled(spec)
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    for w in spec.canary.steps[:2]:
        runs = kserve_controller.reconciles
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=w))
        assert kserve_controller.reconciles > runs, f"the move to {w} % was taken as ready on the old status"


def test_a_standard_canary_gets_no_traffic_until_its_own_pods_are_available():
    """Finding H1 (review-eks): on KServe 0.20 ``Ready`` is ``PredictorReady`` and ``IngressReady`` only
    (``inference_service_status.go`` lines 295-298); the canary's readiness is ``canaryStatuses[].ready`` and
    ``CanaryPredictorReady`` (``components/predictor.go`` lines 966-1000). The driver patched the
    VirtualService's canary weight together with ``spec.canary``, so Envoy sent the canary's share to a
    Service with no pod (503 ``no healthy upstream``). Now the VirtualService gives the canary weight only
    once KServe reports the canary's pods available."""
    canary_deployment = f"{production_name(RAW)}-{V2.lower().replace('.', '-')}-predictor"
    polls = {"n": 0}
    routed_while_unavailable = []

    def available(name):
        return name != canary_deployment or polls["n"] >= 3

    cluster, kserve_controller, d = reconciled(RAW, available=available)

    def controller_then_look(_seconds):
        polls["n"] += 1
        kserve_controller.reconcile()
        vs = cluster.objects[("VirtualService", RAW.serving.namespace, f"{production_name(RAW)}-release")]
        hosts = [r["destination"]["host"] for r in predict_route(vs).get("route") or []]
        if not available(canary_deployment) and any(h.startswith(canary_deployment) for h in hosts):
            routed_while_unavailable.append(hosts)

    d._sleep = controller_then_look
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    assert polls["n"] >= 3 and routed_while_unavailable == []
    vs = cluster.objects[("VirtualService", RAW.serving.namespace, f"{production_name(RAW)}-release")]
    assert [r["weight"] for r in predict_route(vs)["route"]] == [90, 10]
    (prod,) = isvcs(cluster, RAW).values()
    assert {s["name"]: s["ready"] for s in prod["status"]["canaryStatuses"]} == {"v1-2-0": True}


def test_a_standard_canary_whose_pods_never_come_up_never_gets_traffic_and_frees_the_lease():
    from kfrelease.k8s.driver.kserve import NotReady

    canary_deployment = f"{production_name(RAW)}-v1-2-0-predictor"
    cluster, _kserve_controller, d = reconciled(RAW, available=lambda name: name != canary_deployment)
    d.ready_timeout = 0.2
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    with pytest.raises(NotReady, match=r"canary v1-2-0 has no available pod yet.*all traffic is back on V1"):
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    routed = [ref["patch"] for kind, ref in d.objects.calls if kind == "patch" and ref["kind"] == "VirtualService"]
    assert not any(canary_deployment in str(r) for r in routed)  # no VirtualService write ever routed to it
    assert "canary" not in isvcs(cluster, RAW)[production_name(RAW)]["spec"]
    lease = cluster.objects[("Lease", RAW.serving.namespace, release_lease_name(production_name(RAW)))]
    assert lease["spec"]["holderIdentity"] == ""


@pytest.mark.parametrize("spec", [RAW, SERVERLESS], ids=["standard-0.20", "serverless"])
def test_a_promotion_or_rollback_kserve_is_slow_to_report_still_frees_the_lease(spec):
    """Finding M1 (review-eks): a terminal move (promotion, rollback) that timed out as NotReady re-raised
    before releasing the model's Lease, so the next candidate got Conflict until it expired (1,200 s by
    default), although every write had been sent. Now the Lease is released and NotReady says so."""
    from kfrelease.k8s.driver.kserve import NotReady

    for end in (TrafficState(primary=V2), TrafficState(primary=V1)):
        cluster, _kserve_controller, d = reconciled(spec)
        d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
        d._sleep = lambda _s: None  # KServe's controller stops reconciling (restarting, throttled ...)
        d.ready_timeout = 0.2
        with pytest.raises(NotReady, match="were all sent and the release Lease is released"):
            d.apply(end)
        lease = cluster.objects[("Lease", spec.serving.namespace, release_lease_name(production_name(spec)))]
        assert lease["spec"]["holderIdentity"] == "", end
        vs = cluster.objects[("VirtualService", spec.serving.namespace, f"{production_name(spec)}-release")]
        assert recorded_state(vs) == end
        assert "canary" not in isvcs(cluster, spec)[production_name(spec)]["spec"]
        driver(cluster, spec, holder=V3).apply(TrafficState(primary=end.primary, shadow=V3, mirror_percent=100))


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
    assert recorded_state(vs) == TrafficState(primary=V1) and "mirror" not in predict_route(vs)
    assert set(isvcs(cluster, spec)) == {production_name(spec)}
    lease = cluster.objects[("Lease", ns, release.lock.ref["name"])]
    assert lease["spec"]["holderIdentity"] == ""
    driver(cluster, spec, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))  # not blocked


@contextlib.contextmanager
def objects_answered(status: int, body: dict, seen: list | None = None):
    """``KubernetesObjects`` through the real ``kubernetes`` client against a stand-in for the API server that
    answers every request ``status`` with the JSON ``body`` (and records its (method, path) in ``seen``)."""
    from kubernetes import client

    from kfrelease.k8s.driver.kserve import KubernetesObjects

    class Answer(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self):
            self.rfile.read(int(self.headers.get("content-length") or 0))
            if seen is not None:
                seen.append((self.command, self.path))
            send_json(self, status, body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    previous = client.Configuration.get_default_copy()
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        client.Configuration.set_default(config)
        yield KubernetesObjects(api=client.CustomObjectsApi(client.ApiClient(config)))
    finally:
        client.Configuration.set_default(previous)
        server.shutdown()


def test_the_driver_asks_the_api_server_to_refuse_unknown_fields_instead_of_pruning_them():
    """Finding: the client sent no ``fieldValidation``, so the server's default ``Warn`` pruned fields an
    older KServe's CRD does not know and answered 200. Every write of ``KubernetesObjects`` now carries
    ``fieldValidation=Strict``; checked on the HTTP requests the real ``kubernetes`` client sends to a
    recording server (a stand-in for the API server: it only records and answers 200)."""
    seen = []
    with objects_answered(200, {"apiVersion": "v1", "kind": "Status", "metadata": {}}, seen) as objects:
        ns = SERVERLESS.serving.namespace
        isvc = next(d for d in applied(SERVERLESS) if d["kind"] == "InferenceService")
        objects.create(isvc)
        objects.patch({**ref_of(isvc), "patch": {"spec": {"predictor": {"minReplicas": 2}}}})
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": ns}}
        objects.create(lease)
        objects.replace(lease)
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
        predict = predict_route(vs)
        if end is withdrawn:
            assert "route" not in predict and predict["directResponse"]["status"] == 503
            assert why in predict["directResponse"]["body"]["string"]
            assert not any(kind == "delete" for kind, _ in d.objects.calls)
        else:
            assert "directResponse" not in predict and predict["route"]
        assert cluster.objects[lease_key]["spec"]["holderIdentity"] == ""  # released once the release ended


def test_a_404_on_patch_is_an_error_naming_the_object_and_on_delete_or_get_an_answer():
    """Finding L3 (review-eks): ``KubernetesObjects`` returned None on every 404, so a patch of an
    InferenceService deleted meanwhile (by an operator) was reported as moved and the VirtualService then
    routed to a Service that no longer exists. Through the real ``kubernetes`` client against a server that
    answers 404 as the API server does (a ``Status`` with ``code: 404``): a patch raises ``ObjectMissing``
    naming the object; a get is None (the object is absent); a delete succeeds (its goal, the object gone,
    holds: the driver deletes only the staging shadow, which a re-run may find deleted already)."""
    from kfrelease.k8s.driver.kserve import ObjectMissing

    not_found = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
    with objects_answered(404, not_found) as objects:
        isvc = ref_of(next(d for d in applied(RAW) if d["kind"] == "InferenceService"))
        with pytest.raises(ObjectMissing, match=rf"InferenceService {isvc['namespace']}/{isvc['name']} is not on"):
            objects.patch({**isvc, "patch": {"spec": {"canary": None}}})
        assert objects.get(isvc) is None
        objects.delete({**isvc, "name": f"{isvc['name']}-staging"})
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "namespace": isvc["namespace"], "name": "l"}
        assert objects.get(lease) is None
        with pytest.raises(ObjectMissing, match="Lease .*/l is not on the cluster"):
            objects.replace({**lease, "metadata": {"name": "l", "namespace": isvc["namespace"]}})


def retreated(spec) -> TrafficState:
    """Where a SIGTERM's retreat leaves a canary at 25 %: Serverless, KServe's instant rollback (the canary at 0,
    no new revision Knative could route to while it starts); Standard, production alone."""
    if spec.serving.deployment_mode == "Serverless":
        return TrafficState(primary=V1, canary=V2, canary_weight=0)
    return TrafficState(primary=V1)


def kfp_step(url: str, mode: str, ready, poll: float):
    """The canary step (``sigterm_step``) in a KFP main container's process tree (``cluster_standin.kfp_pod``:
    emissary -> launcher -> step), started and seen ready."""
    import subprocess
    import sys
    import time

    pod = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster_standin.kfp_pod", "emissary", str(poll), "--", sys.executable]
        + ["-m", "tests.cluster_standin.kfp_pod", "launcher", "--", sys.executable]
        + ["-m", "tests.manifests.sigterm_step", url, mode, str(ready)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert pod.poll() is None, f"the step exited before it was ready: {pod.stderr.read()}"
        assert time.monotonic() < deadline, "the step was not ready within 120 s"
        time.sleep(0.05)
    return pod


def terminate(pod, grace: float = 30.0) -> str:
    """What the kubelet does to a pod KFP terminates: SIGTERM to the container's PID 1, SIGKILL after the
    grace period. Returns the step's log."""
    import signal
    import subprocess

    pod.send_signal(signal.SIGTERM)
    try:
        _, err = pod.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        pod.kill()
        _, err = pod.communicate()
    return err


@pytest.mark.parametrize("spec", [RAW, SERVERLESS], ids=["standard", "serverless"])
def test_a_kfp_terminate_takes_the_canary_off_within_the_second_the_step_has(spec, tmp_path):
    """Finding H2 (review-eks): under KFP the step has about one second after SIGTERM: Argo's emissary
    forwards it to the launcher's process group, the launcher (no handler) exits, the emissary reaps it within
    a second and exits, and everything left in the container dies. The old handler moved back with the
    600 s readiness wait and released the Lease only afterwards, so it never got there: the canary kept its
    share and the Lease stayed held. A real process tree (``cluster_standin.kfp_pod``) runs the step against
    the stand-in API server over HTTP; the retreat (no readiness wait, VirtualService first, then the Lease)
    finishes within the emissary's one-second window."""
    from tests.cluster_standin.http import StandInServer

    cluster = cluster_for(spec, kserve=KSERVE_020)
    KServeController(cluster, KSERVE_020).reconcile()
    driver(cluster, spec).apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    with StandInServer(cluster, DRIVER) as url:
        pod = kfp_step(url, "raw" if spec is RAW else "serverless", tmp_path / "ready", poll=1.0)
        log = terminate(pod)
    ns = spec.serving.namespace
    vs = cluster.objects[("VirtualService", ns, f"{production_name(spec)}-release")]
    assert recorded_state(vs) == retreated(spec), log
    assert weight(cluster, spec) in (None, 0)
    lease = cluster.objects[("Lease", ns, release_lease_name(production_name(spec)))]
    assert lease["spec"]["holderIdentity"] == "", log


@pytest.mark.parametrize("spec", [RAW, SERVERLESS], ids=["standard", "serverless"])
def test_a_step_killed_before_its_retreat_is_recovered_by_the_next_release_step(spec, tmp_path):
    """Finding H2, the other half: a step killed before its retreat wrote anything (the emissary reaps at once;
    a node lost) leaves the canary at its share and the Lease held. Once the Lease is expired (nobody renews
    it), the model's next release step (``pipeline_steps.driver_for`` calls ``recover``) moves the traffic
    back before anything else; while the Lease is live it leaves the release alone."""
    import datetime as dt
    import os
    import signal

    from tests.cluster_standin.http import StandInServer

    cluster = cluster_for(spec, kserve=KSERVE_020)
    KServeController(cluster, KSERVE_020).reconcile()
    driver(cluster, spec).apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    with StandInServer(cluster, DRIVER) as url:
        pod = kfp_step(url, "raw" if spec is RAW else "serverless", tmp_path / "ready", poll=1.0)
        os.kill(int((tmp_path / "ready").read_text()), signal.SIGKILL)  # the step dies, no handler runs
        pod.communicate(timeout=30)  # the launcher returns, the emissary reaps it and exits
    ns = spec.serving.namespace
    lease_key = ("Lease", ns, release_lease_name(production_name(spec)))
    vs_key = ("VirtualService", ns, f"{production_name(spec)}-release")
    assert cluster.objects[lease_key]["spec"]["holderIdentity"] == V2
    assert recorded_state(cluster.objects[vs_key]).canary_weight == 25
    now = dt.datetime.now(dt.UTC)
    assert driver(cluster, spec, holder=V3, clock=lambda: now).recover() is None  # the Lease is live
    later = now + dt.timedelta(seconds=driver(cluster, spec).lock.duration + 1)
    nxt = driver(cluster, spec, holder=V3, clock=lambda: later)
    assert nxt.recover() == TrafficState(primary=V1, canary=V2, canary_weight=25)
    assert recorded_state(cluster.objects[vs_key]) == retreated(spec) and weight(cluster, spec) in (None, 0)
    assert cluster.objects[lease_key]["spec"]["holderIdentity"] == ""
    nxt.apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))  # the next candidate's release goes on
    assert cluster.refused == []


def test_a_serverless_rollback_never_gives_the_candidate_traffic_while_production_restarts():
    """Found while fixing C1: a Serverless rollback set ``canaryTrafficPercent: 0`` and then sent production's
    spec without it. KServe then asks Knative for 100 % on the latest revision (kserve v0.20.0
    ``ksvc_reconciler.go`` lines 132-161), and Knative routes a ``latestRevision`` target to the latest *ready*
    revision: the candidate's, until the revision of production's spec is ready. The rollback now keeps the
    percent at 0 until that revision is ready, then removes it."""
    cand_rev = {}
    polls = {"n": 0, "rollback": None}

    def available(name):  # production's new revision takes three polls to start
        return name != cand_rev.get("next") or polls["n"] >= (polls["rollback"] or 0) + 3

    cluster, kserve_controller, d = reconciled(SERVERLESS, available=available)
    candidate_share = []

    def controller_then_look(_seconds):
        polls["n"] += 1
        kserve_controller.reconcile()
        comp = isvcs(cluster, SERVERLESS)[production_name(SERVERLESS)]["status"]["components"]["predictor"]
        if polls["rollback"] is not None:
            candidate_share.extend(
                t["percent"] for t in comp["traffic"] if t["revisionName"] == cand_rev["rev"] and t["percent"]
            )

    d._sleep = controller_then_look
    d.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    comp = isvcs(cluster, SERVERLESS)[production_name(SERVERLESS)]["status"]["components"]["predictor"]
    cand_rev["rev"] = comp["latestReadyRevision"]
    n = int(cand_rev["rev"].rsplit("-", 1)[1])
    cand_rev["next"] = f"{cand_rev['rev'].rsplit('-', 1)[0]}-{n + 1:05d}"
    polls["rollback"] = polls["n"]
    d.apply(TrafficState(primary=V1))
    assert candidate_share == [], f"the rolled-back candidate got {candidate_share} % while production restarted"
    prod = isvcs(cluster, SERVERLESS)[production_name(SERVERLESS)]
    assert "canaryTrafficPercent" not in prod["spec"]["predictor"] and env_of(prod)["KFRELEASE_MODEL_VERSION"] == V1
    assert prod["status"]["components"]["predictor"]["latestReadyRevision"] == cand_rev["next"]


def test_a_standard_mode_canary_gets_its_logged_service_and_loses_it_when_it_ends():
    """The release driver creates the Service in front of the canary's KServe agent with the canary (before the
    VirtualService routes to it) and deletes it when the canary ends, promoted or rolled back, as its own
    service account (render.inference.logged_canary_service: KServe 0.20's canary Service skips the agent)."""
    cluster = cluster_for(RAW)
    d = driver(cluster, RAW)
    name = f"{production_name(RAW)}-v1-2-0-logged"
    key = ("Service", RAW.serving.namespace, name)
    d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    assert cluster.objects[key]["spec"]["ports"][0]["targetPort"] == 9081
    calls = [
        (verb, (doc.get("kind"), doc.get("name") or doc.get("metadata", {}).get("name")))
        for verb, doc in d.objects.calls
    ]
    assert calls.index(("create", ("Service", name))) < calls.index(
        ("patch", ("VirtualService", f"{production_name(RAW)}-release"))
    )
    d.apply(TrafficState(primary=V1, canary=V2, canary_weight=50))  # a step: the Service stays as it is
    assert key in cluster.objects
    d.apply(TrafficState(primary=V2))
    assert key not in cluster.objects and not cluster.refused
    d2 = driver(cluster, RAW, holder=V3)
    d2.apply(TrafficState(primary=V2, canary=V3, canary_weight=10))
    d2.apply(TrafficState(primary=V2))  # rolled back
    assert not [k for k in cluster.objects if k[0] == "Service" and k[2].endswith("-logged")] and not cluster.refused


# --- the release Lease renewed while a release waits (issue 24: a short Lease, recovery in minutes) ----------


class Clock:
    """The driver's UTC clock and sleep, moved together (a wait of 15 minutes takes no time here); the Lease's
    times are written from it as MicroTime and read back through the client's typed V1Lease by the stand-in."""

    def __init__(self):
        self.now = dt.datetime.now(dt.UTC)
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += dt.timedelta(seconds=seconds)


def lease_of(cluster, spec) -> dict:
    """The model's Lease as the driver reads it: through the ``kubernetes`` client's typed ``V1Lease``."""
    from kfrelease.k8s.driver.lease import parse_micro_time

    ref = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "namespace": spec.serving.namespace}
    lease = cluster.client(DRIVER).get({**ref, "name": release_lease_name(production_name(spec))})
    return {**lease["spec"], "renewed": parse_micro_time(lease["spec"]["renewTime"])}


def test_an_abandoned_release_is_recovered_five_minutes_after_its_last_renewal():
    """A release step killed without SIGTERM (a node lost) leaves its canary at 25 % and its Lease held. The
    Lease was max(shadow wait, canary interval x (holds + 1)) + 300 s long (1,200 s and more), so the model's
    next release could not recover it for 20 minutes or more; now it is 300 s, renewed by the live release."""
    clock = Clock()
    cluster = cluster_for(RAW)
    driver(cluster, RAW, clock=clock).apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    assert lease_of(cluster, RAW)["leaseDurationSeconds"] == 300
    clock.sleep(299)
    assert driver(cluster, RAW, holder=V3, clock=clock).recover() is None  # still live
    clock.sleep(2)
    nxt = driver(cluster, RAW, holder=V3, clock=clock)
    assert nxt.recover() == TrafficState(primary=V1, canary=V2, canary_weight=25)
    vs = cluster.objects[("VirtualService", RAW.serving.namespace, f"{production_name(RAW)}-release")]
    assert recorded_state(vs) == TrafficState(primary=V1)


def test_a_live_release_renews_its_lease_while_it_waits_so_no_other_release_takes_the_model():
    """A canary interval (or the shadow's wait) three times the Lease's duration: the driver renews every 30 s of
    the wait, each renewal a read and a write with the resourceVersion read, so at no point of the wait can the
    model's next candidate recover or take the model."""
    clock = Clock()
    cluster = cluster_for(RAW)
    live = driver(cluster, RAW, clock=clock)
    live.apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    renewals = []

    def sleep_and_look(seconds):
        clock.sleep(seconds)
        other = driver(cluster, RAW, holder=V3, clock=clock)
        assert other.recover() is None, f"the live release's Lease lapsed after {sum(clock.slept):g} s"
        with pytest.raises(Conflict):
            other.apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))
        renewals.append(lease_of(cluster, RAW)["renewed"])

    live.wait(900, sleep_and_look)
    assert sum(clock.slept) == 900 and max(clock.slept) <= 30
    assert (clock.now - lease_of(cluster, RAW)["renewed"]).total_seconds() <= 30
    assert len(set(renewals)) >= 900 / 30 - 1  # renewed at every slice, with real MicroTime round trips
    live.apply(TrafficState(primary=V2))  # promotion: the Lease is released
    assert lease_of(cluster, RAW)["holderIdentity"] == ""
    assert cluster.refused == []


def test_a_renewal_that_lost_the_lease_stops_moving_traffic_and_says_so(caplog):
    """The live release's pod stalls past the Lease's duration (a paused node, a partition); the next candidate
    recovers the model and holds it. The stalled release's next renewal finds the Lease taken: it raises
    ``LeaseLost`` naming the holder, and no later move or retreat of it sends anything."""
    from kfrelease.k8s.driver.lease import LeaseLost

    clock = Clock()
    cluster = cluster_for(RAW)
    stalled = driver(cluster, RAW, clock=clock)
    stalled.apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    clock.sleep(301)
    nxt = driver(cluster, RAW, holder=V3, clock=clock)
    nxt.recover()
    nxt.apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))
    vs_key = ("VirtualService", RAW.serving.namespace, f"{production_name(RAW)}-release")
    before = copy.deepcopy(cluster.objects[vs_key])
    with pytest.raises(LeaseLost) as err:
        stalled.wait(60, clock.sleep)
    assert V3 in str(err.value) and "stops moving traffic" in str(err.value)
    assert "lost the Lease" in caplog.text
    with pytest.raises(LeaseLost):
        stalled.apply(TrafficState(primary=V1, canary=V2, canary_weight=50))
    stalled.retreat(TrafficState(primary=V1))  # the SIGTERM path: nothing either
    assert cluster.objects[vs_key] == before
    assert lease_of(cluster, RAW)["holderIdentity"] == V3


def test_a_renewal_raced_by_another_writer_rereads_the_lease_and_gives_up_when_it_lost():
    """Optimistic concurrency: the next candidate takes the (expired) Lease between the live release's read and
    its write; the write carries the resourceVersion read, so the stand-in answers 409 as the API server does,
    the driver reads the Lease again and finds it lost."""
    from kfrelease.k8s.driver.lease import LeaseLost

    clock = Clock()
    cluster = cluster_for(RAW)
    objects = cluster.client(DRIVER)
    live = KServeTrafficDriver(
        RAW, URIS, objects, holder=V2, kserve_version=cluster.kserve, domain=ENV.model_domain, clock=clock
    )
    live.apply(TrafficState(primary=V1, canary=V2, canary_weight=25))
    later = Clock()
    later.now = clock.now + dt.timedelta(seconds=400)
    thief = driver(cluster, RAW, holder=V3, clock=later)
    write, raced = objects.replace, []

    def racing_replace(doc):
        if doc["kind"] == "Lease" and not raced:
            raced.append(doc["metadata"]["resourceVersion"])
            thief.lock.acquire()  # between our read and our write
        return write(doc)

    objects.replace = racing_replace
    clock.sleep(31)
    with pytest.raises(LeaseLost) as err:
        live.renew()
    assert raced and V3 in str(err.value)
    assert lease_of(cluster, RAW)["holderIdentity"] == V3


def test_the_same_release_takes_its_expired_lease_back_between_its_steps_instead_of_recovering_itself():
    """preflight -> shadow gate -> rollout are separate pods: between two steps (a cold node, an image pull) the
    Lease can expire. The same candidate's next step resumes its release from the state the cluster records;
    before, ``recover`` took that state for an abandoned release and moved all traffic back to production."""
    clock = Clock()
    cluster = cluster_for(RAW)
    driver(cluster, RAW, clock=clock).apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    clock.sleep(1800)
    resumed = driver(cluster, RAW, clock=clock)
    assert resumed.recover() is None
    assert resumed.current() == TrafficState(primary=V1, shadow=V2, mirror_percent=100)
    resumed.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    assert lease_of(cluster, RAW)["holderIdentity"] == V2


def test_a_standard_promotion_is_ready_only_once_the_stable_predictor_has_rolled_the_candidate_out():
    """review-eks: in Standard mode a move that changes only the stable predictor (a promotion puts the candidate's
    model there) rolls its Deployment while the old pods keep it Available, so ``Ready`` never dropped and the
    driver called the promotion done (and released the Lease) with production's pods still being replaced. KServe
    copies the Deployment's observedGeneration and, from v0.16.0, its ``Progressing`` reason into
    ``PredictorReady`` (kserve/kserve v0.20.0 ``inference_service_status.go`` ``PropagateRawStatus``, lines
    379-427 and 455-457): the driver now waits for ``NewReplicaSetAvailable`` on a newer generation, without
    reading Deployments (which its Role does not allow)."""
    seen: dict = {}
    holder: dict = {}

    def rolled_out(name, generation):  # the new ReplicaSet takes three reconciles to roll out
        first = seen.setdefault((name, generation), holder["controller"].reconciles)
        return holder["controller"].reconciles >= first + 3

    cluster = cluster_for(RAW, kserve=KSERVE_020)
    holder["controller"] = kserve_controller = KServeController(cluster, KSERVE_020, rolled_out=rolled_out)
    kserve_controller.reconcile()
    d = driver(cluster, RAW, ready_timeout=5.0, sleep=kserve_controller)
    release(d, cluster, RAW, RAW.canary.steps[:-1])  # the canary up to its last step, then the promotion
    prod = isvcs(cluster, RAW)[production_name(RAW)]
    predictor_ready = next(c for c in prod["status"]["conditions"] if c["type"] == "PredictorReady")
    assert prod["spec"]["predictor"]["model"]["storageUri"] == URIS[V2]
    assert predictor_ready["reason"] == "NewReplicaSetAvailable", "promoted while production's pods still roll out"
    assert prod["status"]["observedGeneration"] >= 2  # a later template of the stable Deployment: the candidate
    assert d.current() == TrafficState(primary=V2) and cluster.refused == []
