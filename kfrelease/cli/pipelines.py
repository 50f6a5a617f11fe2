"""``kfrelease compile``: write every pipeline as a KFP YAML package."""

from __future__ import annotations

from pathlib import Path

import click

from kfrelease.cli.output import console
from kfrelease.kfp_runner import compile_pipelines


def register(cli: click.Group) -> None:
    @cli.command("compile")
    @click.option("--out", type=click.Path(file_okay=False), default="build/pipelines", show_default=True)
    @click.argument("names", nargs=-1)
    def compile_cmd(out: str, names: tuple[str, ...]) -> None:
        """Compile pipelines (default: all) to KFP YAML packages for the Kubeflow UI or `kfp.Client`.

        KFRELEASE_IMAGE sets the components' base image (default: the public project image).
        """
        for path in compile_pipelines(Path(out), list(names) or None):
            console.print(f"wrote {path}")
