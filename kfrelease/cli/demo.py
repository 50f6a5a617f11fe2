"""``kfrelease demo``: the whole flow on the embedded stack, with a summary table at the end."""

from __future__ import annotations

import time

import click

from kfrelease.cli.output import console, table
from kfrelease.config import Settings
from kfrelease.demo.flow import STEPS, DemoContext


def register(cli: click.Group) -> None:
    @cli.command()
    def demo() -> None:
        """Run the end-to-end demo on the embedded stack (safe to run again)."""
        ctx = DemoContext(Settings.from_env())
        started = time.monotonic()
        for i, (title, step) in enumerate(STEPS, 1):
            console.rule(f"[bold]{i}/{len(STEPS)} {title}")
            t0 = time.monotonic()
            step(ctx)
            console.print(f"[dim]done in {time.monotonic() - t0:.1f} s[/]")
        table("kfrelease demo: summary", ["what", "result"], ctx.summary)
        console.print(f"demo finished in {time.monotonic() - started:.0f} s; state in {ctx.settings.home}")
