"""The one model-download cache of the embedded stack: a registered version's files on local disk.

A version is downloaded once, with the ``serving`` identity, into ``<home>/services/models/<model>/<V>/``
(the artifact folder of ``kfrelease.registry.artifact``: the model file and ``model.json``): first into a ``.partial-*`` folder, then moved into
place, so a half-written download is never served. Both ways of naming a version end here: the registry's
(model, version) and its artifact URI ``s3://models/artifacts/<model>/<V>/``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from kfrelease.config import Settings
from kfrelease.errors import ConfigError
from kfrelease.registry import ModelRegistry
from kfrelease.registry.artifact import is_complete
from kfrelease.storage import store_for


def cache_dir(settings: Settings, model: str, version: str) -> Path:
    return settings.home / "services" / "models" / model / version


def local_model_dir(settings: Settings, model: str, version: str) -> Path:
    """The local directory of a registered version, downloaded from the registry on first use."""
    dest = cache_dir(settings, model, version)
    if is_complete(dest):
        return dest

    tmp = dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        ModelRegistry(store_for("serving", settings)).download(model, version, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def parse_artifact_uri(uri: str, settings: Settings) -> tuple[str, str]:
    """``s3://<prefix>models/artifacts/<model>/<V>/`` -> (model, version); anything else is a ConfigError."""
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    parts = prefix.strip("/").split("/")
    if bucket.removeprefix(settings.bucket_prefix) != "models" or len(parts) != 3 or parts[0] != "artifacts":
        raise ConfigError(f"{uri} is not a registered model's artifacts; use s3://models/artifacts/<model>/<V>/")
    return parts[1], parts[2]


#: ModelCar paths: the image holds the model in /models; KServe mounts it at /mnt/models (KServe docs,
#: "Serving models with OCI images").
MODELCAR_DIRS = ("/mnt/models", "/models")


def resolve_model_dir(source: str, settings: Settings | None = None) -> Path:
    """A local directory for ``source``: a directory, a ModelCar path, or ``s3://models/artifacts/<model>/<V>/``
    (downloaded once into the stack's model cache, ``kfrelease.stack.model_files``)."""
    if source.startswith("s3://"):
        settings = settings or Settings.from_env()
        return local_model_dir(settings, *parse_artifact_uri(source, settings))
    path = Path(source)
    if path.is_dir():
        return path
    for candidate in MODELCAR_DIRS:  # a ModelCar image mounted where KServe puts it
        if source in MODELCAR_DIRS and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError(
        f"model directory {source} does not exist; pass a directory, /mnt/models or s3://models/artifacts/<model>/<V>/"
    )
