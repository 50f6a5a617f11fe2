"""The data pipeline run in-process (``kfrelease data publish``): the same core functions the KFP
components call, in the same order, without KFP."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from kfrelease.data.features import apply_features
from kfrelease.data.ingest import ingest
from kfrelease.data.publish import DatasetVersion, publish
from kfrelease.data.spec import DatasetSpec
from kfrelease.data.validate import validate
from kfrelease.storage import ObjectStore


def run_data_pipeline(
    spec: DatasetSpec,
    store: ObjectStore,
    keys: list[str] | None = None,
    run_id: str | None = None,
    on_step: Callable[[str], None] = lambda step: None,
) -> DatasetVersion:
    """ingest -> validate -> features -> publish. Any failure leaves ``curated`` and ``latest`` untouched;
    with ``on_invalid: quarantine`` the rows validation refused are published beside the version."""
    run_id = run_id or f"inline-{uuid.uuid4().hex[:12]}"
    on_step("ingest")
    rows, sources = ingest(spec, store, keys)
    on_step(f"validate ({len(rows)} rows from {len(sources)} source(s))")
    checked = validate(rows, spec)
    on_step("features")
    feats = apply_features(checked.valid, spec)
    on_step("publish")
    return publish(feats, spec, store, sources, run_id, quarantined=checked.invalid)
