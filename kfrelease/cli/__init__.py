"""The ``kfrelease`` command. Each part registers its commands from its own module (``register(cli)``);
``COMMANDS`` says which module(s) define each top-level command, and a call imports only those (a CLI call
used to import all thirteen modules, pandas and the training runner among them, ~1.2 s of CPU before
``kfrelease status`` did anything). ``--help`` loads them all to show each command's summary;
``tests/test_cli_output.py`` holds ``COMMANDS`` equal to what the modules register.

Every ``KfreleaseError`` is printed as one line on stderr (``error: ...``) with exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from kfrelease.config import LOG_FORMAT, exit_without_collecting
from kfrelease.errors import KfreleaseError

#: Each top-level command and the modules under kfrelease.cli that define it, in registration order (``specs``
#: adds ``data init`` to the ``data`` group, so ``data`` needs both).
COMMANDS: dict[str, tuple[str, ...]] = {
    "up": ("stack",),
    "status": ("stack",),
    "down": ("stack",),
    "access": ("access",),
    "data": ("data", "specs"),
    "spec": ("specs",),
    "compile": ("pipelines",),
    "trigger": ("pipelines",),
    "runs": ("pipelines",),
    "models": ("models",),
    "reports": ("models",),
    "serve": ("serve",),
    "release": ("release",),
    "monitor": ("monitor",),
    "alerts": ("monitor",),
    "newdata": ("monitor",),
    "workspace": ("workspace",),
    "manifests": ("manifests",),
    "demo": ("demo",),
    "ui": ("ui",),
}


def load_command(name: str) -> click.Command | None:
    """The top-level command ``name`` built by its modules' ``register`` (None for an unknown name)."""
    if name not in COMMANDS:
        return None
    scratch = click.Group()
    for module in COMMANDS[name]:
        importlib.import_module(f"kfrelease.cli.{module}").register(scratch)
    return scratch.commands[name]


class KfreleaseGroup(click.Group):
    """The root group: commands load on first use (``COMMANDS``); a ``KfreleaseError`` is one line, exit 1."""

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            command = load_command(cmd_name)
            if command is not None:
                self.commands[cmd_name] = command
        return self.commands.get(cmd_name)

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
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)
    for noisy in ("urllib3", "httpx", "httpcore", "kfp", "evidently"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def main() -> None:
    exit_without_collecting()  # a CLI call is a short-lived process
    try:
        cli(prog_name="kfrelease")
    except KfreleaseError as exc:  # raised outside a command (e.g. while parsing settings)
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
