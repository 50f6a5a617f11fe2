"""``kfrelease demo``: the whole flow on the embedded stack, with a summary table at the end."""

from __future__ import annotations

import time

import click

from kfrelease.cli.output import console, table
from kfrelease.config import Settings


def register(cli: click.Group) -> None:
    @cli.command()
    def demo() -> None:
        """Run the end-to-end demo on the embedded stack (safe to run again)."""
        # cycle: the flow prints with kfrelease.cli.output, whose package imports this module; heavy: the flow
        # imports the whole library (kfp, pandas, the monitoring passes), which other commands need not load
        from kfrelease.demo.flow import STEPS, DemoContext  # heavy: pandas

        ctx = DemoContext(Settings.from_env())
        started = time.monotonic()
        phases = []
        for i, (title, step) in enumerate(STEPS, 1):
            console.rule(f"[bold]{i}/{len(STEPS)} {title}")
            t0 = time.monotonic()
            step(ctx)
            seconds = time.monotonic() - t0
            phases.append((f"{i}/{len(STEPS)} {title}", f"{t0 - started:.0f}", f"{seconds:.1f}"))
            console.print(f"[dim]done in {seconds:.1f} s[/] {ctx.clock()}")
        table("kfrelease demo: summary", ["what", "result"], ctx.summary)
        total = time.monotonic() - started
        phases.append(("total", "", f"{total:.1f}"))
        # what runs in the background (training of the next merge, the queued releases) is inside the
        # phase that waits for it
        table("kfrelease demo: phase times (s)", ["phase", "started at", "took"], phases)
        console.print(f"demo finished in {total:.0f} s; state in {ctx.settings.home}")
