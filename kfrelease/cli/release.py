"""``kfrelease release``: run a release (shadow gate, canary steps, promote or roll back) and see where it is."""

from __future__ import annotations

import click

from kfrelease.cli.output import console, table
from kfrelease.config import Settings


def _print_event(event: dict) -> None:
    console.print(f"  [cyan]{event['stage']:<10}[/] {event['why']}")


def register(cli: click.Group) -> None:
    @cli.group()
    def release() -> None:
        """Release a staging candidate: shadow accuracy gate, canary steps, automatic rollback."""

    spec_option = click.option(
        "--spec",
        "spec_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Rollout spec YAML (default: the packaged kfrelease/rollout/default.yaml).",
    )

    @release.command("run")
    @click.argument("model")
    @click.argument("version")
    @spec_option
    @click.option(
        "--background",
        is_flag=True,
        help="Start it detached (as the training pipeline does) and return.",
    )
    def run_cmd(model: str, version: str, spec_path: str | None, background: bool) -> None:
        """Release VERSION of MODEL (it must be in staging) on the embedded stack."""
        from kfrelease.rollout.spec import load_rollout_spec

        settings = Settings.from_env()
        spec = load_rollout_spec(spec_path, model=model)  # a bad spec fails here, before anything moves
        if background:
            from kfrelease.release.handover import start_release

            record = start_release(settings, model, version, spec_path)
            console.print(f"release of {model} {version} started (pid {record['pid']}); log {record['log']}")
            return
        from kfrelease.release.embedded import run_release

        console.print(f"[bold]release[/] {model} {version}")
        outcome = run_release(settings, model, version, spec, on_decision=_print_event)
        console.print(f"{model} {version}: [bold]{outcome.result}[/]; production is {outcome.production_after}")

    @release.command("plan")
    @click.argument("model")
    @click.argument("version")
    @spec_option
    @click.option(
        "--power",
        type=click.FloatRange(0.05, 0.99),
        default=0.8,
        show_default=True,
        help="Wanted probability that the shadow gate has passed by the planned count.",
    )
    @click.option(
        "--max-pairs",
        type=click.IntRange(100, 200_000),
        default=20_000,
        show_default=True,
        help="Labelled requests simulated per shadow.",
    )
    def plan_cmd(model: str, version: str, spec_path: str | None, power: float, max_pairs: int) -> None:
        """Estimate the labelled requests (and time) the shadow gate will need for VERSION of MODEL, from
        the held-out split scored by both versions; recorded in the version's history."""
        from kfrelease.release.plan import plan_release
        from kfrelease.rollout.spec import load_rollout_spec

        spec = load_rollout_spec(spec_path, model=model)
        plan = plan_release(Settings.from_env(), spec, version, power=power, max_pairs=max_pairs)
        console.print(plan.describe())
        if plan.caveat:
            console.print(f"  note: {plan.caveat}")

    @release.command("status")
    @click.argument("model_arg", metavar="[MODEL]", required=False)
    @click.option("--model", default=None, help="Show one model in detail (default: every model, one row each).")
    def status_cmd(model_arg: str | None, model: str | None) -> None:
        """Where each model's release stands: production and staging versions, traffic, the last decision;
        with --model, that model's versions and its latest version's decisions."""
        from kfrelease.registry import ModelRegistry
        from kfrelease.serving.gateway import model_states
        from kfrelease.storage import store_for

        settings = Settings.from_env()
        registry = ModelRegistry(store_for("data-scientist", settings))
        states = model_states(settings)
        model = model or model_arg
        if model is None:
            rows = []
            for name in sorted(set(registry.models()) | set(states)):
                versions = registry.list(name)
                prod = next((v.version for v in reversed(versions) if v.stage == "production"), "-")
                staging = next((v.version for v in reversed(versions) if v.stage == "staging"), "-")
                # the candidate in flight, else the newest version
                latest = next(
                    (v for v in reversed(versions) if v.stage == "staging"), versions[-1] if versions else None
                )
                last = registry.history(name, latest.version)[-1:] if latest else []
                decision = f"{latest.version} {last[0]['stage']}: {last[0]['why'][:60]}" if last else "-"
                rows.append((name, prod, staging, _traffic(states.get(name)), decision))
            table("releases by model", ["model", "production", "staging", "traffic", "last decision"], rows)
            return
        versions = registry.list(model)
        table(
            f"{model}: versions",
            ["version", "stage", "commit"],
            [(v.version, v.stage or "", (v.commit or "")[:12]) for v in versions],
        )
        console.print(f"{model} traffic: " + _traffic(states.get(model)))
        latest = versions[-1] if versions else None
        if latest is not None:
            events = registry.history(model, latest.version)
            table(
                f"{model} {latest.version}: decisions",
                ["when", "stage", "who", "why"],
                [(e["when"], e["stage"], e["who"], e["why"]) for e in events],
            )


def _traffic(state) -> str:
    if state is None:
        return "not routed (run `kfrelease serve`)"
    parts = [f"primary {state.primary}"]
    if state.canary:
        parts.append(f"canary {state.canary} at {state.canary_weight}%")
    if state.shadow:
        parts.append(f"shadow {state.shadow}")
    return ", ".join(parts)
