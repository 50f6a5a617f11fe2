"""The data pipeline run in-process (``kfrelease data publish``): the same core functions the KFP
components call, in the same order, without KFP. Nothing is held whole in memory: the sources are streamed
(a second time only when a unique column repeats a value), and the rows to publish are written to a local
Parquet file a batch at a time, hashed on the way, then uploaded.

When the valid rows' dtypes are known before the end (no nullable integer or bool column, whose dtype depends
on whether some valid row lacks a value), each batch goes from validation through the feature step straight
into that file; otherwise the valid rows are written once (``validate_to_files``) and read back through the
step (``features_to_file``), as the KFP components do. Both publish the same version.

A dataset spec with ``engine: spark`` is published by ``kfrelease.data.spark`` instead (Spark in local mode
here; a SparkApplication on the cluster).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable

import pandas as pd

from kfrelease.data.features import FeatureWriter, features_to_file
from kfrelease.data.frames import FrameWriter
from kfrelease.data.ingest import SourceSet
from kfrelease.data.publish import DatasetVersion, publish_files
from kfrelease.data.spark import local_session, run_on_spark
from kfrelease.data.spec import DatasetSpec
from kfrelease.data.validate import Sink, Validator, validate_batches, validate_to_files
from kfrelease.storage import ObjectStore


class _Publish(Sink):
    """Each batch's valid rows, in their final dtypes, through the feature step into the file to publish."""

    def __init__(self, spec: DatasetSpec, shape: Validator, dtypes: dict[str, str], tmp: str, search: tuple):
        self.dtypes, self.empty = dtypes, shape.template().astype(dtypes)
        self.data = FeatureWriter(spec, os.path.join(tmp, "data.parquet"), search)
        self.quarantine = FrameWriter(os.path.join(tmp, "quarantine.parquet"), shape.quarantine_template())

    def write(self, valid: pd.DataFrame, invalid: pd.DataFrame) -> None:
        if len(valid):
            change = {c: t for c, t in self.dtypes.items() if str(valid[c].dtype) != t}
            self.data.write(valid.astype(change) if change else valid)
        self.quarantine.write(invalid)

    def discard(self) -> None:
        self.data.discard()
        self.quarantine.discard()


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
    if spec.engine == "spark":
        return run_on_spark(spec, store, local_session(), keys=keys, run_id=run_id, search=search, on_step=on_step)
    with tempfile.TemporaryDirectory(prefix="kfrelease-data-") as tmp, SourceSet(spec, store, keys) as sources:
        on_step(f"ingest ({len(sources.objects)} source(s))")
        columns = sources.columns
        shape = Validator(spec, columns)
        dtypes = shape.dtypes_known()

        def passes(what: str) -> None:
            on_step(f"validate and features: {what}")

        if dtypes is not None:
            outcome, out = validate_batches(
                spec, sources.batches, columns, lambda: _Publish(spec, shape, dtypes, tmp, search), on_pass=passes
            )
            data, quarantine = out.data.close(empty=out.empty), out.quarantine.close()
        else:
            valid, quarantine, outcome = validate_to_files(
                spec,
                sources.batches,
                columns,
                os.path.join(tmp, "valid.parquet"),
                os.path.join(tmp, "quarantine.parquet"),
                on_pass=passes,
            )
            data = features_to_file(spec, valid.path, os.path.join(tmp, "data.parquet"), search)
            os.remove(valid.path)
        on_step(f"publish ({outcome.valid_rows} valid rows of {outcome.total_rows})")
        return publish_files(spec, store, data, sources.sources, run_id, quarantine)
