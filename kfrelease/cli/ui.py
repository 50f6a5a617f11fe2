"""``kfrelease ui``: where the web UI of the embedded stack is (``kfrelease up`` starts it)."""

from __future__ import annotations

import click

from kfrelease.config import Settings
from kfrelease.errors import StackError
from kfrelease.stack.supervisor import probe


def register(cli: click.Group) -> None:
    @cli.command()
    def ui() -> None:
        """Print the URL of the read-only web UI: models, runs, releases, monitoring, reports."""
        settings = Settings.from_env()
        url = settings.url("ui")
        if not probe(settings.url("ui", "/healthz")):
            raise StackError(f"the web UI is not running at {url}; start the stack with `kfrelease up`")
        click.echo(url)
