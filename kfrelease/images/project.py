"""The one project image: base image of every KFP component and the ServingRuntime image on EKS.

``KFRELEASE_IMAGE`` names it; it is read when a pipeline is compiled (``compile_package``), not when the
components are imported: KFP fixes a component's ``base_image`` at decoration time, so ``compile_package``
writes the image into every executor of the compiled package. On a cluster the image must be named by
digest (``<registry>/kfrelease@sha256:...``, what ``ci/github/kfrelease-image.yaml`` pushes and
``kfrelease-trigger.yaml`` resolves): a tag could be re-pointed between two steps of one run.

Every executor also gets ``KFRELEASE_IMAGE`` in its environment, so a step that compiles and submits a
pipeline itself (the training pipeline's hand-over to the release, ``kfrelease.release.handover``)
compiles it on the very image it runs on. Locally, ``kfp.local``'s SubprocessRunner ignores the image and
runs components in the current environment.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kfrelease.config import declared, setting
from kfrelease.errors import ConfigError

IMAGE_ENV = "KFRELEASE_IMAGE"
DEFAULT_PROJECT_IMAGE = declared(IMAGE_ENV).default
_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9.\-:]*(/[a-z0-9._\-]+)+@sha256:[0-9a-f]{64}$")


def project_image() -> str:
    """The image pipelines are compiled against now: ``KFRELEASE_IMAGE``, else the public default."""
    return setting(IMAGE_ENV)


def is_by_digest(image: str) -> bool:
    """``<registry>/<repository>@sha256:<64 hex>``: one image forever, whatever happens to tags."""
    return bool(_BY_DIGEST.match(image or ""))


def pinned_project_image() -> str:
    """``project_image()`` when it is named by digest; else a ``ConfigError`` saying how to get one."""
    image = project_image()
    if not is_by_digest(image):
        raise ConfigError(
            f"{IMAGE_ENV}={image!r} does not name the project image by digest; a cluster run needs "
            f"{IMAGE_ENV}=<account>.dkr.ecr.<region>.amazonaws.com/kfrelease@sha256:<digest> (the digest "
            "ci/github/kfrelease-image.yaml pushed; `aws ecr describe-images --repository-name kfrelease` shows it)"
        )
    return image


def executors(package: dict) -> dict[str, dict]:
    """Executor name -> its ``container`` spec, for every container executor of a compiled package."""
    return {
        name: body["container"]
        for name, body in (package.get("deploymentSpec") or {}).get("executors", {}).items()
        if "container" in body
    }


def pin_package(package: dict, image: str) -> dict:
    """Set every container executor's image to ``image`` and its ``KFRELEASE_IMAGE`` env (in place)."""
    for container in executors(package).values():
        container["image"] = image
        env = [e for e in container.get("env", []) if e.get("name") != IMAGE_ENV]
        container["env"] = env + [{"name": IMAGE_ENV, "value": image}]
    return package


def compile_package(pipeline, path: str | Path, image: str | None = None) -> Path:
    """Compile a pipeline or component to ``path`` with every step on ``image`` (default: ``project_image()``
    at this moment). The first YAML document is the pipeline spec; kfp-kubernetes' platform spec, if any,
    follows unchanged."""
    from kfp import compiler  # heavy: kfp

    path = Path(path)
    compiler.Compiler().compile(pipeline, str(path))
    docs = list(yaml.safe_load_all(path.read_text()))
    pin_package(docs[0], image or project_image())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)
    return path
