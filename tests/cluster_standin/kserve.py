"""A stand-in for KServe's InferenceService controller on the cluster stand-in: it writes each InferenceService's
``status`` the way the controller does, so the release driver's readiness wait reads what it would read on a
cluster. It is a stand-in because neither KServe nor Kubernetes' Deployment controller nor Knative runs here.

What it models, from kserve/kserve at v0.20.0 (the same fields at v0.14.1-v0.16.0 for Serverless):

- ``status.observedGeneration`` is the **stable predictor's** Deployment's (Standard:
  ``pkg/apis/serving/v1beta1/inference_service_status.go`` ``PropagateRawStatus``, lines 455-457) or the Knative
  Service's (Serverless: ``PropagateStatus``, line 635), never the InferenceService's ``metadata.generation``.
  A Deployment's generation moves only when its spec (the stable predictor) changes; a Knative Service's when
  its template or its traffic changes.
- Standard: the ``Ready`` condition covers ``PredictorReady`` and ``IngressReady`` only (lines 295-298); each
  ``spec.canary`` entry gets its own Deployment and a ``status.canaryStatuses`` entry ``{name, ready,
  trafficPercent}``, ``ready`` being its Deployment's ``AvailableReplicas > 0``, and the condition
  ``CanaryPredictorReady`` (``AllCanariesReady`` / ``CanariesNotReady``), cleared with ``canaryStatuses`` once
  the spec has no canary (``components/predictor.go`` ``reconcileCanaryDeployments``, lines 913-1000).
- Serverless: a new Knative revision for every change of the predictor's pod template; ``components.predictor``
  with ``latestCreatedRevision``, ``latestReadyRevision``, ``latestRolledoutRevision`` and the route's
  ``traffic`` as ``reconcilers/knative/ksvc_reconciler.go`` (lines 132-161) asks for it and Knative resolves it
  (a ``latestRevision`` target points at the latest *ready* revision).

- Standard: the stable Deployment's rolling update as ``PropagateRawStatus`` reports it. A changed stable
  predictor is a new Deployment generation, observed at once (``status.observedGeneration``); while its new
  ReplicaSet rolls out, the old pods keep ``Available=True`` (reason ``MinimumReplicasAvailable``) and the
  Deployment's ``Progressing`` reason is ``ReplicaSetUpdated``; once complete it is ``NewReplicaSetAvailable``
  (Kubernetes ``pkg/controller/deployment/progress.go``). From v0.16.0 KServe copies that into
  ``PredictorReady`` (reason ``NewReplicaSetAvailable`` when complete, ``MinimumReplicasAvailable`` from
  ``Available`` meanwhile: ``inference_service_status.go`` v0.16.0 lines 360-400, v0.20.0 lines 379-427); v0.14
  and v0.15 copy ``Available`` only.

Pods become available when ``available(deployment_or_revision_name)`` says so (default: at once); a stable
Deployment's generation ``g`` (from 2 on) has rolled out when ``rolled_out(deployment_name, g)`` says so
(default: at once). The controller acts only when ``reconcile()`` is called: tests pass it as the driver's
``sleep`` so it runs between two polls, as the real one runs between two reads of the driver. Not modelled: the
ingress, transformers and explainers, autoscaling, orphan clean-up.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from kfrelease.k8s.render.inference import predictor_service


class KServeController:
    def __init__(
        self,
        cluster,
        kserve_version: str,
        available: Callable[[str], bool] | None = None,
        rolled_out: Callable[[str, int], bool] | None = None,
    ):
        self.cluster, self.version = cluster, kserve_version
        self.available = available or (lambda _name: True)
        self.rolled_out = rolled_out or (lambda _name, _generation: True)
        #: Deployment name -> [spec, generation]
        self.deployments: dict[str, list] = {}
        #: InferenceService name -> Knative Service record
        self.ksvcs: dict[str, dict] = {}
        self.reconciles = 0

    def __call__(self, _seconds: float = 0.0) -> None:
        self.reconcile()

    def reconcile(self) -> None:
        self.reconciles += 1
        for (kind, _ns, name), doc in sorted(self.cluster.objects.items()):
            if kind != "InferenceService":
                continue
            mode = (doc["metadata"].get("annotations") or {}).get("serving.kserve.io/deploymentMode")
            status = copy.deepcopy(doc.get("status") or {})
            if mode in ("RawDeployment", "Standard"):
                self._raw(name, doc["spec"], status)
            else:
                self._serverless(name, doc["spec"], status)
            doc["status"] = status  # the status subresource: metadata.generation does not move

    @staticmethod
    def _set(status: dict, kind: str, ok: bool, reason: str = "") -> None:
        conditions = [c for c in status.get("conditions") or [] if c["type"] != kind]
        conditions.append({"type": kind, "status": "True" if ok else "False", "reason": reason})
        status["conditions"] = conditions

    def _deployment(self, name: str, spec: dict) -> int:
        """The Deployment ``name`` reconciled to ``spec``; its generation (= its observedGeneration)."""
        have = self.deployments.get(name)
        if have is None:
            self.deployments[name] = have = [copy.deepcopy(spec), 1]
        elif have[0] != spec:
            have[0], have[1] = copy.deepcopy(spec), have[1] + 1
        return have[1]

    def _raw(self, name: str, spec: dict, status: dict) -> None:
        stable = {k: v for k, v in spec["predictor"].items()}
        stable_name = predictor_service(name, stable.get("name"), self.version)
        generation = self._deployment(stable_name, stable)
        ready = self.available(stable_name)
        complete = generation == 1 or self.rolled_out(stable_name, generation)
        progress_mirrored = tuple(int(p) for p in self.version.split(".")[:2]) >= (0, 16)
        reason = "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable"
        if ready and complete and progress_mirrored:
            reason = "NewReplicaSetAvailable"  # Progressing=True, NewReplicaSetAvailable overrides
        self._set(status, "PredictorReady", ready, reason)
        self._set(status, "IngressReady", True)
        self._set(status, "Ready", ready)  # NewLivingConditionSet(PredictorReady, IngressReady)
        status["observedGeneration"] = generation  # PropagateRawStatus: the stable Deployment's
        canaries = spec.get("canary") or []
        if canaries:
            states = []
            for canary in canaries:
                cname = predictor_service(name, canary["predictor"]["name"], self.version)
                self._deployment(cname, canary)
                states.append(
                    {
                        "name": canary["predictor"]["name"],
                        "ready": self.available(cname),
                        "trafficPercent": canary["trafficPercent"],
                    }
                )
            status["canaryStatuses"] = states
            all_ready = all(s["ready"] for s in states)
            self._set(
                status, "CanaryPredictorReady", all_ready, "AllCanariesReady" if all_ready else "CanariesNotReady"
            )
        else:
            status.pop("canaryStatuses", None)
            status["conditions"] = [c for c in status.get("conditions") or [] if c["type"] != "CanaryPredictorReady"]

    def _serverless(self, name: str, spec: dict, status: dict) -> None:
        predictor = spec["predictor"]
        template = {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}
        ksvc = self.ksvcs.setdefault(
            name, {"template": None, "traffic": None, "generation": 0, "revisions": [], "ready": None}
        )
        comp = (status.get("components") or {}).get("predictor") or {}
        rolled = comp.get("latestRolledoutRevision", "")
        percent = predictor.get("canaryTrafficPercent")
        split = percent is not None and rolled != ""
        traffic = ("split", int(percent), rolled) if split else ("latest", 100, "")
        if template != ksvc["template"] or traffic != ksvc["traffic"]:
            ksvc["generation"] += 1
            if template != ksvc["template"]:
                ksvc["revisions"].append(f"{name}-predictor-{len(ksvc['revisions']) + 1:05d}")
            ksvc["template"], ksvc["traffic"] = copy.deepcopy(template), traffic
        created = ksvc["revisions"][-1]
        if self.available(created):
            ksvc["ready"] = created
        ready = ksvc["ready"]
        # Knative's route: a latestRevision target resolves to the latest ready revision
        targets = [{"revisionName": ready, "latestRevision": True, "percent": traffic[1]}] if ready else []
        if split and traffic[1] < 100:
            targets.append(
                {"revisionName": rolled, "latestRevision": False, "percent": 100 - traffic[1], "tag": "prev"}
            )
        comp = dict(comp, latestCreatedRevision=created, traffic=targets)
        if ready:
            comp["latestReadyRevision"] = ready
        # PropagateStatus: track the last revision fully rolled out
        if ready and ready == created and traffic[1] == 100 and comp.get("latestRolledoutRevision") != ready:
            comp["previousRolledoutRevision"] = comp.get("latestRolledoutRevision", "")
            comp["latestRolledoutRevision"] = ready
        status.setdefault("components", {})["predictor"] = comp
        ok = ready == created
        self._set(status, "PredictorReady", ok, "" if ok else "RevisionMissing")
        self._set(status, "IngressReady", True)
        self._set(status, "Ready", ok)
        status["observedGeneration"] = ksvc["generation"]  # PropagateStatus: the Knative Service's
