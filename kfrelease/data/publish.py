"""Publish immutable curated dataset versions and read them back.

Layout in the ``curated`` bucket::

    <dataset>/versions/<version>/data.parquet    the rows (written first)
    <dataset>/versions/<version>/quarantine.parquet  rows refused by validation, with reason and source line
                                                  (only with ``on_invalid: quarantine``; written first too)
    <dataset>/versions/<version>/manifest.json   schema, row counts, sources, code, run, time (written second)
    <dataset>/latest                              pointer {"version": ...} (moved last)

A version exists only once its manifest exists; the manifest is created with ``If-None-Match: *`` so a
version is never overwritten. A publish killed before the manifest leaves an orphan ``data.parquet``
that no reader sees (``versions`` lists manifests) and that the next publish of the same content
overwrites with identical bytes. ``latest`` moves only after the manifest is durable.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass

import pandas as pd

from kfrelease.data.frames import FrameWriter, Written, content_hash
from kfrelease.data.ingest import META_COLUMNS, Source
from kfrelease.data.spec import DatasetSpec
from kfrelease.errors import Conflict, NotFound
from kfrelease.faults import crash_point
from kfrelease.registry.lineage import code_version, now_iso
from kfrelease.storage import ObjectStore

log = logging.getLogger(__name__)

BUCKET = "curated"
PARQUET = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class DatasetVersion:
    dataset: str
    version: str
    manifest: dict

    @property
    def row_count(self) -> int:
        return self.manifest["row_count"]

    @property
    def data_key(self) -> str:
        return self.manifest["data_key"]


def version_digest(df: pd.DataFrame, quarantined: pd.DataFrame | None) -> str:
    """The version's content id: the published rows and, when some were quarantined, those rows too, so that
    sources that differ only in refused rows never share a version (or a manifest with the wrong counts)."""
    q = content_hash(quarantined.reset_index(drop=True)) if quarantined is not None and len(quarantined) else None
    return combined_digest(content_hash(df), q)


def combined_digest(data_digest: str, quarantine_digest: str | None) -> str:
    if quarantine_digest is None:
        return data_digest
    return hashlib.sha256((data_digest + quarantine_digest).encode()).hexdigest()


def _key(dataset: str, *parts: str) -> str:
    return "/".join((dataset,) + parts)


def publish(
    df: pd.DataFrame,
    spec: DatasetSpec,
    store: ObjectStore,
    sources: list[Source],
    run_id: str = "",
    quarantined: pd.DataFrame | None = None,
    registry: ObjectStore | None = None,
    lineage: dict | None = None,
) -> DatasetVersion:
    """Publish the rows of a DataFrame as a curated version (``publish_files`` does the work)."""
    df = df.drop(columns=[c for c in META_COLUMNS if c in df.columns]).reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="kfrelease-publish-") as tmp:
        writer = FrameWriter(os.path.join(tmp, "data.parquet"))
        writer.write(df)
        data = writer.close()
        quarantine = None
        if quarantined is not None and len(quarantined):
            qwriter = FrameWriter(os.path.join(tmp, "quarantine.parquet"))
            qwriter.write(quarantined.reset_index(drop=True))
            quarantine = qwriter.close()
        return publish_files(spec, store, data, sources, run_id, quarantine, registry, lineage)


def publish_files(
    spec: DatasetSpec,
    store: ObjectStore,
    data: Written,
    sources: list[Source],
    run_id: str = "",
    quarantine: Written | None = None,
    registry: ObjectStore | None = None,
    lineage: dict | None = None,
) -> DatasetVersion:
    """Publish a Parquet file of validated rows (``data``: written and hashed by ``frames.FrameWriter``) as a
    curated version and move ``latest`` to it (idempotent per content). The files are uploaded as they are,
    never read into memory.

    ``quarantine`` (rows validation refused) is written beside the data and counted in the manifest, and so is
    ``lineage`` (where derived rows came from). Before anything is written, a schema change that breaks a
    production model (``evolution.check_compatible``) is refused."""
    from kfrelease.data.evolution import check_compatible  # cycle: kfrelease.data.evolution imports this module

    check_compatible(store, spec, data.empty_frame(), registry)
    quarantined = quarantine.rows if quarantine is not None else 0
    digest = combined_digest(data.digest, quarantine.digest if quarantined else None)
    version = digest[:16]
    data_key = _key(spec.name, "versions", version, "data.parquet")
    quarantine_key = _key(spec.name, "versions", version, "quarantine.parquet")
    manifest_key = _key(spec.name, "versions", version, "manifest.json")
    existing = store.stat(BUCKET, manifest_key)
    if existing is None:
        data_etag = store.put_file(BUCKET, data_key, data.path, content_type=PARQUET)
        described = None
        if quarantined:
            store.put_file(BUCKET, quarantine_key, quarantine.path, content_type=PARQUET)
            described = {"key": quarantine_key, "row_count": quarantined}
        crash_point("publish.after_data")
        previous = latest_version_id(store, spec.name)
        manifest = {
            "dataset": spec.name,
            "version": version,
            "content_sha256": digest,
            "row_count": data.rows,
            "quarantined_count": quarantined,
            "quarantine": described,
            "on_invalid": spec.on_invalid,
            "columns": [{"name": c, "dtype": t} for c, t in data.dtypes],
            "schema": spec.text,
            "id_column": spec.id_column,
            "target": spec.target,
            "features_step": spec.features,
            "sources": [s.as_dict() for s in sources],
            "data_key": data_key,
            "data_etag": data_etag.strip('"'),
            "code": code_version(),
            "run_id": run_id,
            "published_at": now_iso(),
            "previous_version": previous,
        }
        if lineage:
            manifest["lineage"] = lineage
        try:
            store.put_json(BUCKET, manifest_key, manifest, if_none_match=True)
        except Conflict:
            log.info("version %s of %s was published concurrently with the same content", version, spec.name)
        crash_point("publish.after_manifest")
    else:
        log.info("version %s of %s already published; moving latest only", version, spec.name)
    store.put_json(BUCKET, _key(spec.name, "latest"), {"dataset": spec.name, "version": version, "moved_at": now_iso()})
    return get_version(store, spec.name, version)


def latest_version_id(store: ObjectStore, dataset: str) -> str | None:
    if store.stat(BUCKET, _key(dataset, "latest")) is None:
        return None
    return store.get_json(BUCKET, _key(dataset, "latest"))["version"]


def get_version(store: ObjectStore, dataset: str, version: str = "latest") -> DatasetVersion:
    """The manifest of a version (``latest`` resolves the pointer)."""
    if version == "latest":
        resolved = latest_version_id(store, dataset)
        if resolved is None:
            raise NotFound(
                f"dataset {dataset!r} has no published version; data engineers publish one with "
                f"`kfrelease data publish --dataset {dataset}`"
            )
        version = resolved
    key = _key(dataset, "versions", version, "manifest.json")
    if store.stat(BUCKET, key) is None:
        known = ", ".join(v.version for v in list_versions(store, dataset)[-5:]) or "none"
        raise NotFound(f"dataset {dataset!r} has no version {version!r} (latest known: {known})")
    return DatasetVersion(dataset, version, store.get_json(BUCKET, key))


def list_versions(store: ObjectStore, dataset: str) -> list[DatasetVersion]:
    """Published versions, oldest first (only versions with a manifest exist)."""
    out = []
    for obj in store.iter(BUCKET, _key(dataset, "versions") + "/"):
        if obj.key.endswith("/manifest.json"):
            out.append(DatasetVersion(dataset, obj.key.split("/")[-2], store.get_json(BUCKET, obj.key)))
    return sorted(out, key=lambda v: v.manifest["published_at"])


def load_dataset(
    store: ObjectStore, dataset: str, version: str = "latest", columns: list[str] | None = None
) -> tuple[pd.DataFrame, DatasetVersion]:
    """Read a curated version's rows (any role that may read ``curated``); ``columns`` reads only those.

    The object is streamed to a temporary file, not held in memory, so that only the column chunks read
    (and not the whole object) count in the reader's memory."""
    dv = get_version(store, dataset, version)
    with tempfile.TemporaryDirectory(prefix="kfrelease-dataset-") as tmp:
        path = f"{tmp}/data.parquet"
        store.get_file(BUCKET, dv.data_key, path)
        df = pd.read_parquet(path, columns=columns)
    return df, dv


def load_quarantine(store: ObjectStore, dataset: str, version: str = "latest") -> pd.DataFrame:
    """The rows a version's validation refused (empty when none were): source, line, reason, values."""
    dv = get_version(store, dataset, version)
    q = dv.manifest.get("quarantine")
    if not q:
        return pd.DataFrame(columns=["source", "line", "reason"])
    return pd.read_parquet(io.BytesIO(store.get_bytes(BUCKET, q["key"])))
