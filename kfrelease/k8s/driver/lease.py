"""A model's release lock on the cluster: the ``coordination.k8s.io/v1`` Lease ``kfrelease-release-<model>``.

Times are ``metav1.MicroTime``: the API server writes them as RFC 3339 with microseconds and ``Z``
(``2026-01-01T10:00:00.123456Z``, k8s.io/apimachinery ``pkg/apis/meta/v1/micro_time.go``
``RFC3339Micro``), and the ``kubernetes`` Python client deserializes them into ``datetime`` objects that
``sanitize_for_serialization`` writes back as ``2026-01-01T10:00:00.123456+00:00`` (kubernetes-client/python
``kubernetes/client/api_client.py``: ``__deserialize_datetime`` uses ``dateutil.parser.parse``,
``sanitize_for_serialization`` calls ``isoformat()``). ``parse_micro_time`` reads every one of these forms;
``lease_as_dict`` is the one conversion from the client's typed ``V1Lease``.

While a release holds the Lease, a daemon thread of the lock renews it every ``RENEW_INTERVAL_SECONDS``
(``ClusterReleaseLock.start_renewing``), whatever the release step is doing meanwhile: a gate evaluation over a
large window or any other step that does not wait through the driver no longer lets it expire (review eks3 N4;
client-go's leader election renews from its own goroutine the same way). The thread stops when the lock is
released or lost; a loss is kept in ``lost`` and raised as ``LeaseLost`` in the owner at its next renewal, before it
sends anything more. One Lease operation runs at a time (the owner's and the thread's share a mutex).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING

from kfrelease.errors import Conflict, KfreleaseError
from kfrelease.k8s.render.inference import production_name
from kfrelease.k8s.render.platform import release_lease_name
from kfrelease.rollout.spec import RolloutSpec

if TYPE_CHECKING:
    from kfrelease.k8s.driver.kserve import ClusterObjects

LEASE_API = "coordination.k8s.io/v1"
log = logging.getLogger(__name__)


#: How long a model's release Lease holds without a renewal, and how often a release step renews it while it
#: waits (the shadow's polls, each canary interval, a readiness wait: ``KServeTrafficDriver.wait``). An
#: abandoned release (its step killed without SIGTERM: a node lost) is recovered by the model's next release
#: step once the Lease is ``LEASE_DURATION_SECONDS`` old, not after the whole release's longest gap; a live
#: release renews ten times per duration, so one slow API call or query does not lose it. The same candidate's
#: next step (preflight -> shadow -> rollout are separate pods) takes its own Lease back even when it expired.
LEASE_DURATION_SECONDS = 300
RENEW_INTERVAL_SECONDS = 30


class LeaseError(KfreleaseError):
    """The release Lease on the cluster holds something that cannot be read; no traffic was moved."""


class LeaseLost(Conflict):
    """This release no longer holds its model's Lease (another release took it after it expired, or wrote it
    meanwhile): the release moves no more traffic."""


def parse_micro_time(value, where: str = "Lease") -> dt.datetime:
    """A ``MicroTime`` as the server or the client gives it (RFC 3339 with ``Z`` or an offset, with or without
    fractional seconds, or already a ``datetime``), as an aware UTC ``datetime``."""
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise LeaseError(
                f"{where}: renewTime {value!r} is not an RFC 3339 time; delete the Lease if nothing releases this "
                "model (kubectl delete lease ...), it is recreated by the next release"
            ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def lease_as_dict(lease) -> dict:
    """The client's typed ``V1Lease`` as the dict the lock reads and writes back (the client's own conversion)."""
    from kubernetes.client import ApiClient  # heavy: kubernetes

    return ApiClient().sanitize_for_serialization(lease)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _micro_time(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # metav1.MicroTime


class ClusterReleaseLock:
    """A model's release lock: the Lease ``kfrelease-release-<model>`` in the serving namespace, as client-go's
    leader election uses one (``holderIdentity``, ``leaseDurationSeconds``, ``renewTime``; a write with a stale
    ``resourceVersion`` loses). ``holder`` names the release (the candidate version): a re-run of the same
    release takes the lock back at once; another release waits until the holder releases it or stops renewing
    it for ``duration_seconds``."""

    def __init__(self, objects: ClusterObjects, spec: RolloutSpec, holder: str, duration_seconds: int, clock=now_utc):
        self.objects, self.holder, self.duration, self.clock = objects, holder, int(duration_seconds), clock
        self.ref = {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "namespace": spec.serving.namespace,
            "name": release_lease_name(production_name(spec)),
        }
        self._mutex = threading.RLock()  # one Lease operation at a time: the owner's and the renewal thread's
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        #: why the renewal thread stopped renewing: the Lease is another release's now (raised in the owner)
        self.lost: LeaseLost | None = None

    @property
    def renewing(self) -> bool:
        """Whether the renewal thread runs."""
        return bool(self._renewer and self._renewer.is_alive())

    def start_renewing(self, interval: float) -> None:
        """Renew the Lease every ``interval`` seconds from a daemon thread until ``release`` or ``stop_renewing``,
        or until a renewal finds the Lease taken (kept in ``lost``; the thread stops). An API error is logged and
        retried at the next interval: the Lease lasts ``duration`` seconds, ten intervals by default. Nothing if
        the thread already runs."""
        if self.renewing:
            return
        stop = self._stop = threading.Event()
        where = f"{self.ref['namespace']}/{self.ref['name']}"

        def run() -> None:
            while not stop.wait(interval):
                try:
                    with self._mutex:
                        if stop.is_set():
                            return
                        self.renew()
                except LeaseLost as exc:
                    self.lost = exc
                    log.error("%s", exc)
                    return
                except Exception as exc:  # noqa: BLE001 - the next interval tries again; the Lease still holds
                    log.warning("renewing the Lease %s failed (%s); trying again in %g s", where, exc, interval)

        self._renewer = threading.Thread(target=run, name=f"lease-renewal-{self.ref['name']}", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        """Stop the renewal thread (it ends after a renewal under way; never waited for: a release step after
        SIGTERM has about one second)."""
        self._stop.set()

    def _expired(self, lease: dict) -> bool:
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        renewed = parse_micro_time(spec.get("renewTime"), f"Lease {self.ref['namespace']}/{self.ref['name']}")
        return self.clock() > renewed + dt.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))

    def acquire(self) -> None:
        """Take or renew the lock; ``Conflict`` when another release holds it."""
        with self._mutex:
            self._acquire()

    def _acquire(self) -> None:
        now = _micro_time(self.clock())
        lease = self.objects.get(self.ref)
        if lease is None:
            self.objects.create(
                {
                    "apiVersion": LEASE_API,
                    "kind": "Lease",
                    "metadata": {
                        "name": self.ref["name"],
                        "namespace": self.ref["namespace"],
                        "labels": {"app.kubernetes.io/part-of": "kfrelease"},
                    },
                    "spec": {
                        "holderIdentity": self.holder,
                        "leaseDurationSeconds": self.duration,
                        "acquireTime": now,
                        "renewTime": now,
                        "leaseTransitions": 0,
                    },
                }
            )
            return
        spec = lease.setdefault("spec", {})
        if spec.get("holderIdentity") != self.holder:
            if not self._expired(lease):
                raise Conflict(
                    f"the release of {spec.get('holderIdentity')} holds the lock {self.ref['namespace']}/"
                    f"{self.ref['name']} (renewed {spec.get('renewTime')}); this release moved no traffic; it "
                    "can start when that one ends"
                )
            spec.update(
                holderIdentity=self.holder, acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1
            )
        spec.update(renewTime=now, leaseDurationSeconds=self.duration)
        self.objects.replace(lease)  # Conflict if another driver wrote it since we read it

    def renew(self) -> None:
        """Renew the Lease this release holds: read it, move ``renewTime``, write it back with the
        ``resourceVersion`` read (client-go's leader election does the same; a write in between is a 409 and
        the Lease is read again). ``LeaseLost`` when another release holds it now."""
        with self._mutex:
            self._renew()

    def _renew(self) -> None:
        where = f"{self.ref['namespace']}/{self.ref['name']}"
        for _attempt in range(3):
            lease = self.objects.get(self.ref)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.holder:
                raise LeaseLost(
                    f"the release of {self.holder} lost the Lease {where} "
                    f"(now held by {spec.get('holderIdentity') or 'nobody'}, renewed {spec.get('renewTime')}): it "
                    "stops moving traffic; the release holding the Lease (or the model's next one) decides"
                )
            spec.update(renewTime=_micro_time(self.clock()), leaseDurationSeconds=self.duration)
            try:
                self.objects.replace(lease)
                return
            except LeaseLost:
                raise
            except Conflict:
                continue  # written since we read it: read again
        raise LeaseLost(f"the release of {self.holder} could not renew the Lease {where}: it is written concurrently")

    def release(self) -> None:
        self.stop_renewing()
        with self._mutex:
            self._release()

    def _release(self) -> None:
        lease = self.objects.get(self.ref)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.holder:
            return
        lease["spec"].update(holderIdentity="", renewTime=_micro_time(self.clock()), leaseDurationSeconds=1)
        self.objects.replace(lease)
