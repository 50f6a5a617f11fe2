"""Model images in KServe's ModelCar layout, built and pushed without a container daemon.

A ModelCar is an OCI image whose ``/models`` holds the model files; KServe runs it as a sidecar that must
be able to run ``sh``, ``ln`` and ``sleep`` (it links ``/models`` for the predictor and sleeps), so the
image carries a static busybox (Debian ``busybox-static``) under ``/bin`` (KServe docs, "Serving models
with OCI images"). Built with ``umoci`` (``--rootless``: no root, no daemon), pushed with
``skopeo``, both Debian packages. The same ``push`` sends the image to the embedded stack's registry or to
Amazon ECR (give ``KFRELEASE_IMAGE_REGISTRY=<account>.dkr.ecr.<region>.amazonaws.com`` and registry
credentials with ``KFRELEASE_REGISTRY_CREDS=AWS:$(aws ecr get-login-password)`` or an auth file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kfrelease.config import Settings, setting
from kfrelease.errors import KfreleaseError

log = logging.getLogger(__name__)

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_APPLETS = ("sh", "ln", "sleep", "ls", "cat", "mkdir")
MODEL_DIR = "models"


class ImageError(KfreleaseError):
    """An image could not be built, pushed or pulled."""


@dataclass(frozen=True)
class ImageRef:
    ref: str  # registry/repository:tag
    digest: str  # sha256:...

    @property
    def pinned(self) -> str:
        return f"{self.ref.rsplit(':', 1)[0]}@{self.digest}"

    def as_dict(self) -> dict:
        return {"ref": self.ref, "digest": self.digest}


def _run(*argv: str, timeout: float = 300) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        raise ImageError(f"{argv[0]} is not installed; `make setup` installs it (Debian package {argv[0]})")
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc.stdout


def busybox_path() -> str:
    for path in BUSYBOX_CANDIDATES:
        if os.path.isfile(path):
            out = (
                subprocess.run(["file", "-b", path], capture_output=True, text=True, check=False).stdout
                if shutil.which("file")
                else ""
            )
            if "dynamically" not in out:
                return path
    raise ImageError("a static busybox is needed for ModelCar images; install the Debian package busybox-static")


def image_registry(settings: Settings) -> str:
    """Where images go: ``KFRELEASE_IMAGE_REGISTRY`` (e.g. ECR), else the embedded stack's registry."""
    return setting("KFRELEASE_IMAGE_REGISTRY") or f"127.0.0.1:{settings.port('registry')}"


def _is_local(registry: str) -> bool:
    host = registry.split("/")[0].split(":")[0]
    return host in ("127.0.0.1", "localhost")


def build_modelcar(model_dir: str | Path, layout: str | Path, tag: str, labels: dict[str, str] | None = None) -> Path:
    """Build a ModelCar image (OCI layout at ``layout``, tag ``tag``) with ``model_dir``'s files under /models."""
    model_dir, layout = Path(model_dir), Path(layout)
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    if not files:
        raise ImageError(f"{model_dir} holds no model files")
    busybox = busybox_path()
    if layout.exists():
        shutil.rmtree(layout)
    with tempfile.TemporaryDirectory(prefix="kfrelease-bundle-") as tmp:
        bundle = Path(tmp) / "bundle"
        image = f"{layout}:{tag}"
        _run("umoci", "init", "--layout", str(layout))
        _run("umoci", "new", "--image", image)
        _run("umoci", "unpack", "--rootless", "--image", image, str(bundle))
        rootfs = bundle / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        os.chmod(rootfs / "bin" / "busybox", 0o755)
        for applet in BUSYBOX_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / MODEL_DIR).mkdir()
        for f in files:
            shutil.copy2(f, rootfs / MODEL_DIR / f.name)
        _run("umoci", "repack", "--image", image, str(bundle))
    args = ["umoci", "config", "--image", image, "--config.cmd", "/bin/sh", "--os", "linux", "--architecture", "amd64"]
    for key, value in (labels or {}).items():
        args += ["--config.label", f"{key}={value}"]
    _run(*args)
    return layout


def push(layout: str | Path, tag: str, destination: str, creds: str | None = None) -> ImageRef:
    """Push ``layout:tag`` to ``destination`` (``registry/repository:tag``); returns the pushed digest."""
    registry = destination.split("/")[0]
    creds = creds or setting("KFRELEASE_REGISTRY_CREDS")
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        args = [
            "skopeo",
            "copy",
            "--retry-times",
            "2",
            "--digestfile",
            str(digest_file),
            f"--dest-tls-verify={'false' if _is_local(registry) else 'true'}",
        ]
        if creds:
            args += ["--dest-creds", creds]
        _run(*args, f"oci:{layout}:{tag}", f"docker://{destination}", timeout=600)
        digest = digest_file.read_text().strip()
    log.info("pushed %s (%s)", destination, digest)
    return ImageRef(destination, digest)


def containerize(
    model_dir: str | Path, registry: str, repository: str, tag: str, labels: dict[str, str] | None = None
) -> ImageRef:
    """Build the ModelCar image of a model directory and push it as ``registry/repository:tag``."""
    with tempfile.TemporaryDirectory(prefix="kfrelease-oci-") as tmp:
        layout = build_modelcar(model_dir, Path(tmp) / "layout", tag, labels)
        return push(layout, tag, f"{registry}/{repository}:{tag}")


def pull(ref: str, dest: str | Path) -> tuple[str, Path]:
    """Pull an image back into an OCI layout and unpack it; returns (manifest digest, root filesystem)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    registry = ref.split("/")[0]
    layout = dest / "layout"
    tls = f"--src-tls-verify={'false' if _is_local(registry) else 'true'}"
    _run("skopeo", "copy", tls, f"docker://{ref}", f"oci:{layout}:pulled", timeout=600)
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    _run("umoci", "unpack", "--rootless", "--image", f"{layout}:pulled", str(dest / "bundle"))
    return digest, dest / "bundle" / "rootfs"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
