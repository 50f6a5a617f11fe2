"""A release's traffic state applied to the cluster as JSON merge patches (RFC 7386) of the objects
``kfrelease.k8s.render.inference`` renders: ``traffic_patches`` is what the traffic driver sends (``kubectl patch
--type merge``), ``apply_traffic`` (``apply_plan``) what the cluster then holds (for tests and dry runs).
Only the objects of the release's own model, and only their ``spec`` and the annotations the renderer sets,
are ever touched."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from kfrelease.k8s.render.inference import _dns, production_name, render_release
from kfrelease.rollout.spec import RolloutSpec
from kfrelease.rollout.traffic import TrafficState


def merge_patch(old, new):
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (``None`` deletes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def apply_merge_patch(doc, patch):
    """Apply a JSON merge patch (RFC 7386) to a copy of ``doc``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _key(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def _ref(doc: dict) -> dict:
    """``{apiVersion, kind, namespace, name}`` of an object (what a patch or a delete names)."""
    kind, namespace, name = _key(doc)
    return {"apiVersion": doc["apiVersion"], "kind": kind, "namespace": namespace, "name": name}


def _owned(doc: dict, rendered: dict) -> dict:
    """The part of ``doc`` a release owns: its ``spec`` and the annotations the renderer sets."""
    keys = ((rendered.get("metadata") or {}).get("annotations") or {}).keys()
    have = (doc.get("metadata") or {}).get("annotations") or {}
    spec = doc.get("spec")
    if doc.get("kind") == "Service" and isinstance(spec, dict):
        # only the fields rendered here: the API server fills in clusterIP, ipFamilies... (immutable, not ours)
        spec = {k: spec.get(k) for k in (rendered.get("spec") or {})}
    out: dict = {"spec": spec}
    if keys:
        out["metadata"] = {"annotations": {k: have.get(k) for k in keys if k in have}}
    return out


def traffic_patches(
    current: list[dict],
    spec: RolloutSpec,
    state: TrafficState,
    storage_uris: Mapping[str, str],
    **kwargs,
) -> dict[str, list[dict]]:
    """What the release controller sends to the cluster to move to ``state``: ``{"patch": [...],
    "create": [...], "delete": [...]}``. Each patch is ``{apiVersion, kind, namespace, name, patch}``, a
    JSON merge patch (``kubectl patch --type merge``) of the object's spec and of the annotations rendered
    here (the recorded traffic state), never of anything else. A state in which no version serves
    (``unavailable``: a first model withdrawn) leaves production's InferenceService in place (the release
    driver may not delete it, ``release_driver_rbac``): its VirtualService answers clients 503 with the reason,
    so it serves no client; an operator deletes it. Raises before anything is computed if the spec or state is
    bad."""
    wanted = render_release(spec, state, storage_uris, **kwargs)
    # only this model's objects: other models in the namespace are never patched or deleted
    model = _dns(spec.model)
    have = {
        _key(d): d
        for d in current
        if ((d.get("metadata") or {}).get("labels") or {}).get("kfrelease.io/model") == model
    }
    out: dict[str, list[dict]] = {"patch": [], "create": [], "delete": []}
    wanted_keys = set()
    for doc in wanted:
        key = _key(doc)
        wanted_keys.add(key)
        if key not in have:
            out["create"].append(doc)
            continue
        patch = merge_patch(_owned(have[key], doc), _owned(doc, doc))
        if patch:
            out["patch"].append({**_ref(doc), "patch": patch})
    for key, doc in have.items():
        if (
            key not in wanted_keys
            and doc.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/part-of") == "kfrelease"
            and not (state.unavailable and key[0] == "InferenceService" and key[2] == production_name(spec))
        ):
            out["delete"].append(_ref(doc))
    return out


def apply_traffic(
    current: list[dict],
    spec: RolloutSpec,
    state: TrafficState,
    storage_uris: Mapping[str, str],
    **kwargs,
) -> list[dict]:
    """The objects after ``traffic_patches`` (what the cluster will hold); for tests and dry runs."""
    return apply_plan(current, traffic_patches(current, spec, state, storage_uris, **kwargs))


def apply_plan(current: list[dict], plan: dict[str, list[dict]]) -> list[dict]:
    """The objects after a plan of ``traffic_patches`` is sent to a cluster that holds ``current``."""
    by_key = {_key(d): copy.deepcopy(d) for d in current}
    for p in plan["patch"]:
        key = (p["kind"], p["namespace"], p["name"])
        by_key[key] = apply_merge_patch(by_key[key], p["patch"])
    for d in plan["delete"]:
        by_key.pop((d["kind"], d["namespace"], d["name"]), None)
    for d in plan["create"]:
        by_key[_key(d)] = d
    return list(by_key.values())
