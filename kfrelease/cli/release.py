"""``kfrelease release``: run a release (shadow gate, canary steps, promote or roll back) and see where it is."""

from __future__ import annotations

import click

from kfrelease.cli.output import console, table
from kfrelease.config import Settings

DEFAULT_MODEL = "diabetes-progression"


def _print_event(event: dict) -> None:
    console.print(f"  [cyan]{event['stage']:<10}[/] {event['why']}")


def register(cli: click.Group) -> None:
    @cli.group()
    def release() -> None:
        """Release a staging candidate: shadow accuracy gate, canary steps, automatic rollback."""

    @release.command("run")
    @click.argument("model")
    @click.argument("version")
    @click.option(
        "--spec",
        "spec_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Rollout spec YAML (default: the packaged kfrelease/rollout/default.yaml).",
    )
    @click.option(
        "--background",
        is_flag=True,
        help="Start it detached (as the training pipeline does) and return.",
    )
    def run_cmd(
        model: str, version: str, spec_path: str | None, background: bool
    ) -> None:
        """Release VERSION of MODEL (it must be in staging) on the embedded stack."""
        from kfrelease.rollout.spec import load_rollout_spec

        settings = Settings.from_env()
        spec = load_rollout_spec(
            spec_path
        )  # a bad spec fails here, before anything moves
        if background:
            from kfrelease.release.handover import start_release

            record = start_release(settings, model, version, spec_path)
            console.print(
                f"release of {model} {version} started (pid {record['pid']}); log {record['log']}"
            )
            return
        from kfrelease.release.run import run_release

        console.print(f"[bold]release[/] {model} {version}")
        outcome = run_release(settings, model, version, spec, on_decision=_print_event)
        console.print(
            f"{model} {version}: [bold]{outcome.result}[/]; production is {outcome.production_after}"
        )

    @release.command("status")
    @click.argument("model", default=DEFAULT_MODEL)
    def status_cmd(model: str) -> None:
        """Production and staging versions, the traffic state, and the staging candidate's decisions."""
        from kfrelease.registry import ModelRegistry
        from kfrelease.serving.gateway import read_gateway_record
        from kfrelease.storage import store_for

        settings = Settings.from_env()
        registry = ModelRegistry(store_for("data-scientist", settings))
        versions = registry.list(model)
        table(
            f"{model}: versions",
            ["version", "stage", "commit"],
            [(v.version, v.stage or "", (v.commit or "")[:12]) for v in versions],
        )
        rec = read_gateway_record(settings) or {}
        state = rec.get("state")
        if state:
            parts = [f"primary {state['primary']}"]
            if state.get("canary"):
                parts.append(f"canary {state['canary']} at {state['canary_weight']}%")
            if state.get("shadow"):
                parts.append(f"shadow {state['shadow']}")
            console.print("traffic: " + ", ".join(parts))
        else:
            console.print(
                "traffic: the gateway has no traffic state (run `kfrelease serve`)"
            )
        latest = versions[-1] if versions else None
        if latest is not None:
            events = registry.history(model, latest.version)
            table(
                f"{model} {latest.version}: decisions",
                ["when", "stage", "who", "why"],
                [(e["when"], e["stage"], e["who"], e["why"]) for e in events],
            )
