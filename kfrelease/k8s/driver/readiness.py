"""When an InferenceService the release driver wrote serves what it was told to: read from the status KServe's
controller writes, per deployment mode, never from ``status.observedGeneration``.

KServe copies ``status.observedGeneration`` from the object it reconciles the *stable* predictor into, not from
the InferenceService: in Standard (raw) mode the stable predictor's Deployment's
(``PropagateRawStatus``: ``ss.ObservedGeneration = deploymentList[0].Status.ObservedGeneration``), in
Serverless the Knative Service's (``PropagateStatus``: ``ss.ObservedGeneration = serviceStatus.ObservedGeneration``);
kserve/kserve ``pkg/apis/serving/v1beta1/inference_service_status.go`` at v0.14.1, v0.15.2, v0.16.0 and v0.20.0
(v0.20.0 lines 455-457 and 635). A move that changes only ``spec.canary`` (or ``canaryTrafficPercent``) raises
the InferenceService's ``metadata.generation`` and leaves those counters where they were, so comparing the two
waits forever. What the controller does write, and what this module reads:

- **Serverless** (``PropagateStatus``, every supported version): ``status.components.predictor`` carries the
  Knative Service's ``latestCreatedRevision`` / ``latestReadyRevision`` and its route's ``traffic``. KServe
  builds that traffic from ``canaryTrafficPercent`` (``reconcilers/knative/ksvc_reconciler.go`` at v0.20.0
  lines 132-161: the latest revision gets the percent, the last revision rolled out at 100 % the rest, tagged
  ``prev``; no percent, or no revision rolled out yet: the latest gets 100). Knative routes a
  ``latestRevision`` target to the latest *ready* revision. Ready here: ``Ready``, the latest created revision
  is the latest ready one, the route gives the latest revision the share the spec asks for, and, when the move
  changed what the predictor runs (its model's ``storageUri`` or ``env``, which every version sets apart), a
  revision newer than the one before the move was created.
- **Standard 0.20** (``spec.canary``): ``Ready`` covers only ``PredictorReady`` and ``IngressReady``
  (``inference_service_status.go:295-298``), not the canary. The canary's own readiness is
  ``status.canaryStatuses[].ready`` (its Deployment's ``AvailableReplicas > 0``) with the ``trafficPercent``
  the controller reconciled, and the ``CanaryPredictorReady`` condition, cleared once no canary is left
  (``components/predictor.go`` ``reconcileCanaryDeployments``, v0.20.0 lines 913-1000). Ready here: ``Ready``;
  each canary of the spec ready at the spec's ``trafficPercent`` and ``CanaryPredictorReady=True``; a spec
  without a canary shows neither (the controller reconciled the canary's removal, in the same pass as the
  stable predictor it promoted). KServe sizes a canary's Deployment by ``canaryReplicaCount``: the canary's own
  ``minReplicas`` when it sets one (kfrelease renders ``serving.min_replicas`` there), else
  ``ceil(stable minReplicas * trafficPercent / 100)`` (v0.20.0 lines 886-896).
- **Standard, a move that changes what the stable predictor runs** (a promotion: the candidate's model on the
  stable predictor; the bootstrapped production's first patch, tag -> digest): its Deployment gets a new pod
  template and rolls it out while the old pods keep serving (``Available`` stays true, so does ``Ready``).
  What KServe copies from that Deployment shows the rollout without reading Deployments: ``status.observedGeneration``
  (``PropagateRawStatus``, every version) passes the value read before the move once the Deployment controller
  has seen the new template, and from v0.16.0 ``PredictorReady``'s reason is the Deployment's ``Progressing``
  reason ``NewReplicaSetAvailable`` only when the new ReplicaSet has rolled out (v0.16.0
  ``inference_service_status.go`` lines 360-400, v0.20.0 lines 379-427; meanwhile it carries ``Available``'s
  ``MinimumReplicasAvailable``). Ready here: both. On v0.14 and v0.15 KServe copies ``Available`` only, so the
  wait ends when the new template is observed, not rolled out (Kubernetes' rolling update keeps old pods
  serving meanwhile).
"""

from __future__ import annotations

_CANARY_READY = "CanaryPredictorReady"  # v1beta1.CanaryPredictorReady


def _condition(status: dict, kind: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _is_true(status: dict, kind: str) -> bool:
    return (_condition(status, kind) or {}).get("status") == "True"


def _runs(predictor: dict) -> tuple:
    """What a predictor's pods run (the fields that reach the revision's / Deployment's pod template)."""
    model = predictor.get("model") or {}
    return model.get("storageUri"), model.get("env")


def _raw(doc: dict) -> bool:
    mode = ((doc.get("metadata") or {}).get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    return mode in ("RawDeployment", "Standard")


def _reports_rollout(kserve_version: str | None) -> bool:
    """KServe copies the Deployment's ``Progressing`` reason into ``PredictorReady`` from v0.16.0 on."""
    if not kserve_version:
        return False
    return tuple(int(p) for p in str(kserve_version).split(".")[:2]) >= (0, 16)


def unready(doc: dict, before: dict | None = None, kserve_version: str | None = None) -> list[str]:
    """Why the InferenceService ``doc`` (as read from the server) does not yet serve its spec, empty when it
    does; ``before``: the same object as read before the move (None: it was created by the move);
    ``kserve_version``: the cluster's KServe (what its raw-mode status reports)."""
    status = doc.get("status") or {}
    spec = doc.get("spec") or {}
    why = []
    if not _is_true(status, "Ready"):
        c = _condition(status, "Ready")
        why.append(f"Ready={c.get('status')} ({c.get('reason') or c.get('message') or ''})" if c else "no Ready yet")
    if _raw(doc):
        canaries = spec.get("canary") or []
        states = {s.get("name"): s for s in status.get("canaryStatuses") or []}
        for canary in canaries:
            name = (canary.get("predictor") or {}).get("name")
            seen = states.get(name)
            if seen is None:
                why.append(f"canary {name} not reconciled yet")
            elif seen.get("trafficPercent") != canary.get("trafficPercent"):
                why.append(
                    f"canary {name} reconciled at {seen.get('trafficPercent')} %, "
                    f"not yet at {canary.get('trafficPercent')} %"
                )
            elif not seen.get("ready"):
                why.append(f"canary {name} has no available pod yet")
        if canaries and not _is_true(status, _CANARY_READY):
            c = _condition(status, _CANARY_READY)
            why.append(f"{_CANARY_READY}={(c or {}).get('status', 'absent')} ({(c or {}).get('reason') or ''})")
        if not canaries and (states or _condition(status, _CANARY_READY)):
            why.append("the canary's removal is not reconciled yet")
        if before is not None and _runs(before.get("spec", {}).get("predictor") or {}) != _runs(
            spec.get("predictor") or {}
        ):
            was = (before.get("status") or {}).get("observedGeneration")
            now = status.get("observedGeneration")
            if was is not None and (now is None or int(now) <= int(was)):
                why.append(
                    f"the stable predictor's Deployment has not seen its new pod template yet (generation {now})"
                )
            elif _reports_rollout(kserve_version):
                c = _condition(status, "PredictorReady") or {}
                if c.get("reason") != "NewReplicaSetAvailable":
                    why.append(
                        f"the stable predictor's new pods are still rolling out ({c.get('reason') or 'no reason'})"
                    )
        return why
    predictor = spec.get("predictor") or {}
    comp = (status.get("components") or {}).get("predictor") or {}
    created, ready = comp.get("latestCreatedRevision"), comp.get("latestReadyRevision")
    if not created or created != ready:
        why.append(f"latest revision {created or 'none yet'} is not the latest ready one ({ready or 'none'})")
    if before is not None and _runs(before.get("spec", {}).get("predictor") or {}) != _runs(predictor):
        was = (((before.get("status") or {}).get("components") or {}).get("predictor") or {}).get(
            "latestCreatedRevision"
        )
        if was and created == was:
            why.append(f"no new revision yet (still {was})")
    percent = predictor.get("canaryTrafficPercent")
    share = 100 if percent is None or not comp.get("latestRolledoutRevision") else int(percent)
    # a target of 0 % may be left out of the route's status: no target reads as 0 %
    got = sum(int(t.get("percent") or 0) for t in comp.get("traffic") or [] if t.get("latestRevision"))
    if got != share:
        why.append(f"the route gives the latest revision {got} %, not yet {share} %")
    return why
