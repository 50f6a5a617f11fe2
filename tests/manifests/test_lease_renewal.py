"""The release Lease lives as long as its release, whatever the step does (review eks3 N4).

It used to be renewed only inside the driver's waits (``KServeTrafficDriver.wait``, readiness waits), so a step
that spent longer than the Lease's duration elsewhere (a gate evaluation over a large window) let it expire and the
model's next release could recover (roll back) a live one. The lock now renews it from its own thread
(``ClusterReleaseLock.start_renewing``) until it is released or lost. On the stand-in API server with a 2 s Lease
renewed every 0.2 s; nobody calls the driver while the test waits."""

from __future__ import annotations

import pytest

from kfrelease.errors import Conflict
from kfrelease.k8s.driver.lease import LeaseLost, parse_micro_time
from kfrelease.k8s.render.inference import production_name
from kfrelease.k8s.render.platform import release_lease_name
from kfrelease.rollout.traffic import TrafficState
from tests.manifests.test_driver import SERVERLESS, V1, V2, V3, cluster_for, driver
from tests.waiting import eventually

SPEC = SERVERLESS
LEASE = ("Lease", SPEC.serving.namespace, release_lease_name(production_name(SPEC)))
SHADOW = TrafficState(primary=V1, shadow=V2, mirror_percent=100)


def lease_spec(cluster) -> dict:
    with cluster.lock:
        return dict(cluster.objects[LEASE]["spec"])


def lived_past_its_duration(cluster):
    spec = lease_spec(cluster)
    held = parse_micro_time(spec["renewTime"]) - parse_micro_time(spec["acquireTime"])
    return spec["holderIdentity"] == V2 and held.total_seconds() > 2 * spec["leaseDurationSeconds"]


def test_the_lease_is_renewed_while_the_step_does_something_else():
    cluster = cluster_for(SPEC)
    d = driver(cluster, SPEC, lease_seconds=2, renew_seconds=0.2)
    d.apply(SHADOW)
    eventually(lambda: lived_past_its_duration(cluster), 60, "the Lease held past twice its duration with no wait")
    with pytest.raises(Conflict, match=f"the release of {V2} holds the lock"):
        driver(cluster, SPEC, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))
    assert d.lock.renewing
    d.apply(TrafficState(primary=V1))  # the shadow ends: the Lease is released and no longer renewed
    eventually(lambda: not d.lock.renewing, 30, "the renewal thread stopped after the release")
    assert lease_spec(cluster)["holderIdentity"] == ""
    driver(cluster, SPEC, holder=V3).apply(TrafficState(primary=V1, shadow=V3, mirror_percent=100))


def test_a_lease_taken_meanwhile_stops_the_renewal_and_the_owner_sends_nothing_more():
    cluster = cluster_for(SPEC)
    d = driver(cluster, SPEC, lease_seconds=2, renew_seconds=0.2)
    d.apply(SHADOW)
    with cluster.lock:  # another release took the model (as after an expiry): the Lease is its own now
        cluster.objects[LEASE]["spec"]["holderIdentity"] = V3
    eventually(lambda: d.lock.lost, 30, "the renewal thread found the Lease taken")
    eventually(lambda: not d.lock.renewing, 30, "the renewal thread stopped")
    sent = len(d.objects.calls)
    with pytest.raises(LeaseLost, match=f"the release of {V2} lost the Lease"):
        d.apply(TrafficState(primary=V1, canary=V2, canary_weight=10))
    assert len(d.objects.calls) == sent and lease_spec(cluster)["holderIdentity"] == V3
