"""The data pipeline run in-process (``kfrelease data publish``): the same core functions the KFP
components call, in the same order, without KFP. Nothing is held whole in memory: the sources are streamed
(twice when the spec has a unique column), the valid rows and the rows to publish go through local Parquet
files in a temporary folder, which are then uploaded."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable

from kfrelease.data.features import features_to_file
from kfrelease.data.ingest import SourceSet
from kfrelease.data.publish import DatasetVersion, publish_files
from kfrelease.data.spec import DatasetSpec
from kfrelease.data.validate import validate_to_files
from kfrelease.storage import ObjectStore


def run_data_pipeline(
    spec: DatasetSpec,
    store: ObjectStore,
    keys: list[str] | None = None,
    run_id: str | None = None,
    on_step: Callable[[str], None] = lambda step: None,
    search: tuple[str, ...] = (),
) -> DatasetVersion:
    """ingest -> validate -> features -> publish. Any failure leaves ``curated`` and ``latest`` untouched;
    with ``on_invalid: quarantine`` the rows validation refused are published beside the version. ``search``:
    folders where the feature step's module may be (the dataset spec's, ``features.resolve``)."""
    run_id = run_id or f"inline-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory(prefix="kfrelease-data-") as tmp, SourceSet(spec, store, keys) as sources:
        on_step(f"ingest ({len(sources.objects)} source(s))")
        columns = sources.columns
        valid, quarantine, outcome = validate_to_files(
            spec,
            sources.batches,
            columns,
            os.path.join(tmp, "valid.parquet"),
            os.path.join(tmp, "quarantine.parquet"),
            on_pass=lambda what: on_step(f"validate: {what}"),
        )
        on_step(f"features ({outcome.valid_rows} valid rows of {outcome.total_rows})")
        data = features_to_file(spec, valid.path, os.path.join(tmp, "data.parquet"), search)
        os.remove(valid.path)
        on_step("publish")
        return publish_files(spec, store, data, sources.sources, run_id, quarantine)
