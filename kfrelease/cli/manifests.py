"""``kfrelease manifests``: regenerate the EKS/Kubeflow/KServe manifests from their sources, or check them."""

from __future__ import annotations

from pathlib import Path

import click

from kfrelease.cli.output import console
from kfrelease.errors import ConfigError
from kfrelease.k8s.environments import MANIFESTS_DIR, environments_file
from kfrelease.k8s.policy.checks import CHECKS, CheckContext, run_checks
from kfrelease.k8s.render.tree import check_tree, write_tree


def manifests_dir(path: str | None) -> Path:
    root = Path(path) if path else MANIFESTS_DIR
    if not environments_file(root).is_file():
        raise ConfigError(f"{root} is not a manifests directory: it has no {environments_file(root).relative_to(root)}")
    return root


def register(cli: click.Group) -> None:
    @cli.group()
    def manifests() -> None:
        """EKS (eksctl, CloudFormation), Kubeflow and KServe manifests: kustomize base + overlays."""

    @manifests.command("render")
    @click.option(
        "--dir",
        "directory",
        type=click.Path(file_okay=False),
        help=f"Manifests directory (default: {MANIFESTS_DIR}).",
    )
    @click.option(
        "--check",
        is_flag=True,
        help="Write nothing; exit 1 if a generated file is not current.",
    )
    def render(directory: str | None, check: bool) -> None:
        """Regenerate base/, overlays/<env>/ and eks/<env>/ from the access policy, rollout spec, monitoring
        rules and dashboard, sources/environments.yaml and sources/workspaces/."""
        root = manifests_dir(directory)
        if check:
            stale = check_tree(root)
            if stale:
                raise ConfigError(
                    f"{len(stale)} generated file(s) under {root} are not current ({', '.join(stale[:5])}"
                    f"{', ...' if len(stale) > 5 else ''}); run `kfrelease manifests render`"
                )
            console.print(f"{root}: every generated file is current", soft_wrap=True)
            return
        changed, removed = write_tree(root)
        for rel in changed:
            console.print(f"wrote {root / rel}", soft_wrap=True)
        for rel in removed:
            console.print(f"removed {root / rel}", soft_wrap=True)
        if not changed and not removed:
            console.print(f"{root}: already current", soft_wrap=True)

    @manifests.command("check")
    @click.option(
        "--dir", "directory", type=click.Path(file_okay=False), help=f"Manifests directory (default: {MANIFESTS_DIR})."
    )
    @click.option(
        "--compiled",
        type=click.Path(file_okay=False, exists=True),
        help="Also check the compiled pipeline packages in this folder (`kfrelease compile --out`).",
    )
    @click.option("--image", help="The project image (by digest) every compiled step must run.")
    @click.option("--only", multiple=True, help="Run only this check (repeatable).")
    def check(directory: str | None, compiled: str | None, image: str | None, only: tuple[str, ...]) -> None:
        """Report what would fail on a real cluster: stale generated files, documents that do not match the
        schemas of the declared KServe version, release-owned objects in the re-applied overlay, no default
        StorageClass, compiled steps not on the image by digest, CI authentication (m2m issuer, ingress), ...
        Exit 1 when anything is found."""
        root = manifests_dir(directory)
        ctx = CheckContext(root, Path(compiled) if compiled else None, image)
        findings = run_checks(ctx, list(only) or None)
        for finding in findings:
            console.print(str(finding), soft_wrap=True, markup=False)
        if findings:
            classes = sorted({f.check for f in findings})
            raise ConfigError(f"{len(findings)} finding(s) in {root} ({', '.join(classes)})")
        names = [n for n, _ in CHECKS if not only or n in only]
        console.print(f"{root}: no findings ({', '.join(names)})", soft_wrap=True)
