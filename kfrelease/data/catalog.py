"""Datasets by name: which datasets are published, and the spec of a dataset given its name.

Every curated version stores the dataset spec it was published with (``schema`` in its manifest,
``kfrelease.data.publish``), so a dataset published from a spec file is found afterwards by its name
alone: the spec of its latest version. A name never published falls back to the packaged specs
(``kfrelease/data/specs/<name>.yaml``); a path to a YAML file is read as it is.
"""

from __future__ import annotations

from pathlib import Path

from kfrelease.data.spec import DatasetSpec, load_spec, parse_spec
from kfrelease.errors import ConfigError, NotFound
from kfrelease.storage import ObjectStore

BUCKET = "curated"


def is_spec_path(name_or_path: str) -> bool:
    """Whether a --dataset value names a spec file (rather than a dataset)."""
    return name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path or Path(name_or_path).is_file()


def published_datasets(store: ObjectStore) -> list[str]:
    """Names of the datasets with at least one published version (a ``latest`` pointer)."""
    names = [o.key.rstrip("/") for o in store.iter(BUCKET, "", recursive=False) if o.key.endswith("/")]
    return sorted(n for n in names if store.stat(BUCKET, f"{n}/latest") is not None)


def dataset_name(store: ObjectStore, given: str | None) -> str:
    """The dataset a command is about: the one given (a name, or a spec file's ``name``), or the only
    published one; with none given and several (or no) datasets published, refuse to guess."""
    if given:
        return load_spec(given).name if is_spec_path(given) else given
    names = published_datasets(store)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError("no dataset is published yet; give its spec: --dataset NAME or --dataset PATH.yaml")
    raise ConfigError(f"several datasets are published ({', '.join(names)}); say which: --dataset NAME")


def stored_spec(store: ObjectStore, name: str) -> DatasetSpec | None:
    """The spec the latest curated version of ``name`` was published with (None if never published)."""
    from kfrelease.data.publish import get_version  # heavy: pandas

    try:
        manifest = get_version(store, name).manifest
    except NotFound:
        return None
    return version_spec(manifest)


def version_spec(manifest: dict) -> DatasetSpec | None:
    """The spec a curated version was published with (its manifest's ``schema``; None before specs were stored)."""
    text = manifest.get("schema")
    where = f"the spec stored with {manifest.get('dataset')} version {manifest.get('version')}"
    return parse_spec(text, where) if text else None


def resolve_spec(store: ObjectStore, given: str | None) -> DatasetSpec:
    """The dataset spec a command works with: a YAML file's, else the one stored with the dataset's latest
    version, else the packaged spec of that name (an unknown name lists the known ones)."""
    if given and is_spec_path(given):
        return load_spec(given)
    name = dataset_name(store, given)
    spec = stored_spec(store, name)
    if spec is not None:
        return spec
    try:
        return load_spec(name)
    except ConfigError as exc:
        published = ", ".join(published_datasets(store)) or "none"
        raise ConfigError(
            f"{exc}; published datasets: {published}; a new dataset needs its spec file: --dataset PATH.yaml"
        ) from None
