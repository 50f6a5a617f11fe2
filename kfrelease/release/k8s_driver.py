"""``KServeTrafficDriver``: the ``TrafficDriver`` of a cluster. It moves a release by patching the KServe
InferenceService(s) and the Istio VirtualService that ``kfrelease.serving.k8s`` renders from the rollout
spec: ``traffic_patches`` gives JSON merge patches of the objects' ``spec`` (``kubectl patch --type
merge``), objects to create (the staging shadow) and to delete (it again).

Rollback in Serverless mode first sets ``canaryTrafficPercent: 0`` (KServe's instant rollback: all traffic
back to the last revision that had 100 %, no new revision; FACTS.md, KServe canary docs), then rolls the
spec forward to the production version. In RawDeployment (Standard) mode the ``spec.canary`` entry's
``trafficPercent`` goes to 0 first, then the entry is removed.

The objects go through a small ``ClusterObjects`` interface: ``KubernetesObjects`` (the ``kubernetes``
client's ``CustomObjectsApi``, in a pod with its service account) or ``InMemoryObjects`` (the rendered
manifests held in memory: what the tests drive, there being no Kubernetes API here).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Protocol

from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficState

log = logging.getLogger(__name__)

PLURALS = {"InferenceService": "inferenceservices", "VirtualService": "virtualservices"}


class ClusterObjects(Protocol):
    def list(self, spec: RolloutSpec) -> list[dict]: ...

    def patch(self, ref: dict) -> None: ...

    def create(self, doc: dict) -> None: ...

    def delete(self, ref: dict) -> None: ...


def _key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return (
        doc["kind"],
        meta.get("namespace", doc.get("namespace", "")),
        meta.get("name", doc.get("name")),
    )


class InMemoryObjects:
    """The cluster's objects as dicts; applies merge patches as the API server does (RFC 7386)."""

    def __init__(self, docs: list[dict] | None = None):
        self.docs = {_key(d): copy.deepcopy(d) for d in docs or []}
        self.calls: list[tuple[str, dict]] = []

    def list(self, spec: RolloutSpec) -> list[dict]:
        return [copy.deepcopy(d) for d in self.docs.values()]

    def patch(self, ref: dict) -> None:
        from kfrelease.serving.k8s import apply_merge_patch

        key = (ref["kind"], ref["namespace"], ref["name"])
        self.docs[key] = apply_merge_patch(
            self.docs[key],
            {"spec": ref["patch"]["spec"]} if "spec" in ref["patch"] else ref["patch"],
        )
        self.calls.append(("patch", copy.deepcopy(ref)))

    def create(self, doc: dict) -> None:
        self.docs[_key(doc)] = copy.deepcopy(doc)
        self.calls.append(("create", copy.deepcopy(doc)))

    def delete(self, ref: dict) -> None:
        self.docs.pop((ref["kind"], ref["namespace"], ref["name"]), None)
        self.calls.append(("delete", copy.deepcopy(ref)))


class KubernetesObjects:  # pragma: no cover - needs a Kubernetes API server
    """The InferenceServices and VirtualServices of the serving namespace through ``CustomObjectsApi``."""

    def __init__(self, api=None):
        if api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CustomObjectsApi()
        self.api = api

    @staticmethod
    def _gv(api_version: str) -> tuple[str, str]:
        group, _, version = api_version.partition("/")
        return group, version

    def list(self, spec: RolloutSpec) -> list[dict]:
        out = []
        for api_version, kind in (
            ("serving.kserve.io/v1beta1", "InferenceService"),
            ("networking.istio.io/v1", "VirtualService"),
        ):
            group, version = self._gv(api_version)
            items = self.api.list_namespaced_custom_object(
                group,
                version,
                spec.serving.namespace,
                PLURALS[kind],
                label_selector="app.kubernetes.io/part-of=kfrelease",
            )
            out += items.get("items", [])
        return out

    def patch(self, ref: dict) -> None:
        group, version = self._gv(ref["apiVersion"])
        # a dict body is sent as application/merge-patch+json by the kubernetes client for custom objects
        self.api.patch_namespaced_custom_object(
            group,
            version,
            ref["namespace"],
            PLURALS[ref["kind"]],
            ref["name"],
            ref["patch"],
        )

    def create(self, doc: dict) -> None:
        group, version = self._gv(doc["apiVersion"])
        self.api.create_namespaced_custom_object(
            group, version, doc["metadata"]["namespace"], PLURALS[doc["kind"]], doc
        )

    def delete(self, ref: dict) -> None:
        group, version = self._gv(ref["apiVersion"])
        self.api.delete_namespaced_custom_object(
            group, version, ref["namespace"], PLURALS[ref["kind"]], ref["name"]
        )


class KServeTrafficDriver:
    """Implements ``kfrelease.rollout.traffic.TrafficDriver`` on a cluster (see the module docstring)."""

    def __init__(
        self,
        spec: RolloutSpec,
        storage_uris: Mapping[str, str],
        objects: ClusterObjects,
        logger_url: str | None = None,
    ):
        self.spec, self.storage_uris, self.objects, self.logger_url = (
            spec,
            dict(storage_uris),
            objects,
            logger_url,
        )
        self._state: TrafficState | None = None

    def current(self) -> TrafficState | None:
        return self._state

    def _move(self, state: TrafficState) -> None:
        from kfrelease.serving.k8s import traffic_patches

        plan = traffic_patches(
            self.objects.list(self.spec),
            self.spec,
            state,
            self.storage_uris,
            logger_url=self.logger_url,
        )  # raises on a bad state before anything is sent
        for doc in plan["create"]:
            self.objects.create(doc)
        for ref in plan["patch"]:
            self.objects.patch(ref)
        for ref in plan["delete"]:
            self.objects.delete(ref)

    def apply(self, state: TrafficState) -> None:
        before = self._state
        if (
            before
            and before.canary
            and before.canary_weight > 0
            and not state.canary
            and state.primary == before.primary
        ):
            # rollback: the canary's share to 0 first (instant), then the spec back to production
            self._move(before.with_canary(before.canary, 0))
        self._move(state)
        self._state = state
