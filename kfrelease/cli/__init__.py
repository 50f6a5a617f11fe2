"""The ``kfrelease`` command. Each part registers its commands from its own module (``CLI_MODULES``).

Every ``KfreleaseError`` is printed as one line on stderr (``error: ...``) with exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from kfrelease.config import exit_without_collecting
from kfrelease.errors import KfreleaseError

#: Modules under kfrelease.cli that define ``register(cli)`` (each must exist: a missing one fails the import).
CLI_MODULES = (
    "stack",
    "access",
    "data",
    "specs",
    "pipelines",
    "models",
    "serve",
    "release",
    "monitor",
    "workspace",
    "manifests",
    "demo",
    "ui",
)


class KfreleaseGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KfreleaseError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=KfreleaseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Show progress logs (-v info, -vv debug).")
@click.version_option(package_name="kfrelease")
def cli(verbose: int) -> None:
    """kfrelease: from a merge to main to a watched production model (Kubeflow Pipelines + KServe).

    State lives in KFRELEASE_HOME (default ~/.kfrelease). Start with `kfrelease up`.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if verbose:  # pipeline runs (and the runs this command starts) show kfp.local's full output
        os.environ["KFRELEASE_VERBOSE"] = "1"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("urllib3", "httpx", "httpcore", "kfp", "evidently"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _register_all() -> None:
    for name in CLI_MODULES:
        importlib.import_module(f"kfrelease.cli.{name}").register(cli)


_register_all()


def main() -> None:
    exit_without_collecting()  # a CLI call is a short-lived process
    try:
        cli(prog_name="kfrelease")
    except KfreleaseError as exc:  # raised outside a command (e.g. while parsing settings)
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
