"""The cluster traffic driver on the manifests ``kfrelease.serving.k8s`` renders: the same sequence of
traffic states the release controller produces, applied as merge patches to the objects (held in memory:
no Kubernetes API server runs here), every resulting object valid against the vendored KServe/Istio CRDs."""

from __future__ import annotations

import pytest

from kfrelease.errors import ConfigError
from kfrelease.k8s.schemas import validate
from kfrelease.release.k8s_driver import InMemoryObjects, KServeTrafficDriver
from kfrelease.rollout.spec import RolloutSpecError, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState

V1, V2 = "V1.1.0", "V1.2.0"
URIS = {
    V1: "oci://123.dkr.ecr.eu-west-1.amazonaws.com/kfrelease/diabetes-progression@sha256:"
    + "a" * 64,
    V2: "oci://123.dkr.ecr.eu-west-1.amazonaws.com/kfrelease/diabetes-progression@sha256:"
    + "b" * 64,
}
SERVERLESS = load_rollout_spec()
RAW = SERVERLESS.with_changes(serving={"deployment_mode": "RawDeployment"})


def production(objects: InMemoryObjects) -> dict:
    return next(
        d
        for d in objects.docs.values()
        if d["kind"] == "InferenceService"
        and d["metadata"]["labels"]["kfrelease.io/stage"] == "production"
    )


def release(spec, objects, driver, steps, fail_at=None):
    driver.apply(TrafficState(primary=V1, shadow=V2, mirror_percent=100))
    assert {
        d["metadata"]["labels"]["kfrelease.io/stage"]
        for d in objects.docs.values()
        if d["kind"] == "InferenceService"
    } == {"production", "staging"}
    for w in steps:
        driver.apply(TrafficState(primary=V1, canary=V2, canary_weight=w))
        for doc in objects.docs.values():
            validate(doc)
        pred = production(objects)["spec"]
        if spec.serving.deployment_mode == "Serverless":
            assert pred["predictor"]["canaryTrafficPercent"] == w
        else:
            assert pred["canary"][0]["trafficPercent"] == w
        if w == fail_at:
            driver.apply(TrafficState(primary=V1))
            return
    driver.apply(TrafficState(primary=V2))


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_promotion_patches_the_canary_share_step_by_step_then_serves_the_candidate(
    spec,
):
    objects = InMemoryObjects()
    driver = KServeTrafficDriver(spec, URIS, objects)
    driver.apply(TrafficState(primary=V1))
    release(spec, objects, driver, [10, 25, 50])
    isvcs = [d for d in objects.docs.values() if d["kind"] == "InferenceService"]
    assert len(isvcs) == 1  # the staging shadow was deleted
    pred = isvcs[0]["spec"]["predictor"]
    assert "canaryTrafficPercent" not in pred and not isvcs[0]["spec"].get("canary")
    env = {e["name"]: e["value"] for e in pred["model"]["env"]}
    assert (
        env["KFRELEASE_MODEL_VERSION"] == V2 and pred["model"]["storageUri"] == URIS[V2]
    )
    assert driver.current() == TrafficState(primary=V2)
    for doc in objects.docs.values():
        validate(doc)


@pytest.mark.parametrize("spec", [SERVERLESS, RAW], ids=["serverless", "raw"])
def test_rollback_sets_the_canary_to_zero_first_then_back_to_production(spec):
    objects = InMemoryObjects()
    driver = KServeTrafficDriver(spec, URIS, objects)
    driver.apply(TrafficState(primary=V1))
    release(spec, objects, driver, [10, 25], fail_at=25)
    patches = [
        ref["patch"]["spec"]
        for kind, ref in objects.calls
        if kind == "patch" and ref["kind"] == "InferenceService"
    ]
    zero = patches[-2]
    if spec.serving.deployment_mode == "Serverless":
        assert (
            zero["predictor"]["canaryTrafficPercent"] == 0
        )  # KServe's instant rollback
    else:
        assert zero["canary"][0]["trafficPercent"] == 0
    pred = production(objects)["spec"]["predictor"]
    env = {e["name"]: e["value"] for e in pred["model"]["env"]}
    assert env["KFRELEASE_MODEL_VERSION"] == V1 and "canaryTrafficPercent" not in pred


def test_a_bad_state_sends_nothing():
    objects = InMemoryObjects()
    driver = KServeTrafficDriver(SERVERLESS, URIS, objects)
    driver.apply(TrafficState(primary=V1))
    n = len(objects.calls)
    with pytest.raises(ConfigError, match="no storage URI"):
        driver.apply(
            TrafficState(primary=V1, canary="V9.9.9", canary_weight=10)
        )  # no image for it
    with pytest.raises(RolloutSpecError):
        TrafficState(primary=V1, canary=V2, canary_weight=120)
    assert len(objects.calls) == n and driver.current() == TrafficState(primary=V1)
