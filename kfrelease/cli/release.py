"""``kfrelease release``: run a release (shadow gate, canary steps, promote or roll back) and see where it is."""

from __future__ import annotations

import json

import click

from kfrelease.cli.output import console, json_option, print_json, spec_option, table
from kfrelease.config import Settings
from kfrelease.errors import KfreleaseError
from kfrelease.registry import ModelRegistry
from kfrelease.release.embedded import lock_holder, lock_path, run_release
from kfrelease.release.handover import record_path, start_release
from kfrelease.release.plan import plan_release
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.stack.gateway import model_states
from kfrelease.stack.supervisor import record_alive
from kfrelease.storage import store_for
from kfrelease.training.results import decision_label


def _print_event(event: dict) -> None:
    console.print(f"  [cyan]{event['stage']:<10}[/] {event['why']}")


def register(cli: click.Group) -> None:
    @cli.group()
    def release() -> None:
        """Release a staging candidate: shadow accuracy gate, canary steps, automatic rollback."""

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
        settings = Settings.from_env()
        spec = load_rollout_spec(spec_path, model=model)  # a bad spec fails here, before anything moves
        if background:
            console.print(_start_in_background(settings, model, version, spec_path), soft_wrap=True, markup=False)
            return

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
        spec = load_rollout_spec(spec_path, model=model)
        plan = plan_release(Settings.from_env(), spec, version, power=power, max_pairs=max_pairs)
        console.print(plan.describe())
        if plan.caveat:
            console.print(f"  note: {plan.caveat}")

    @release.command("status")
    @click.argument("model_arg", metavar="[MODEL]", required=False)
    @click.option("--model", default=None, help="Show one model in detail (default: every model, one row each).")
    @json_option
    def status_cmd(model_arg: str | None, model: str | None, as_json: bool) -> None:
        """Where each model's release stands: production and staging versions, traffic, the last decision;
        with --model, that model's versions and its latest version's decisions."""
        settings = Settings.from_env()
        registry = ModelRegistry(store_for("data-scientist", settings))
        states = model_states(settings)
        model = model or model_arg
        if model is None:
            rows, records = [], []
            for name in sorted(set(registry.models()) | set(states)):
                versions = registry.list(name)
                prod = next((v.version for v in reversed(versions) if v.stage == "production"), None)
                staging = next((v.version for v in reversed(versions) if v.stage == "staging"), None)
                # the candidate in flight, else the newest version
                latest = next(
                    (v for v in reversed(versions) if v.stage == "staging"), versions[-1] if versions else None
                )
                last = registry.history(name, latest.version)[-1] if latest else None
                decision = f"{latest.version} {decision_label(last)}: {last['why'][:60]}" if last else "-"
                rows.append((name, prod or "-", staging or "-", _traffic(states.get(name)), decision))
                records.append(
                    {
                        "model": name,
                        "production": prod,
                        "staging": staging,
                        "traffic": _traffic(states.get(name)),
                        "last_decision": {"version": latest.version, **last, "decision": decision_label(last)}
                        if last
                        else None,
                    }
                )
            if as_json:
                print_json(records)
                return
            table("releases by model", ["model", "production", "staging", "traffic", "last decision"], rows)
            return
        versions = registry.list(model)
        latest = versions[-1] if versions else None
        events = registry.history(model, latest.version) if latest is not None else []
        if as_json:
            print_json(
                {
                    "model": model,
                    "versions": [{"version": v.version, "stage": v.stage, "commit": v.commit} for v in versions],
                    "traffic": _traffic(states.get(model)),
                    "decisions": [{**e, "decision": decision_label(e)} for e in events],
                }
            )
            return
        table(
            f"{model}: versions",
            ["version", "stage", "commit"],
            [(v.version, v.stage or "", (v.commit or "")[:12]) for v in versions],
        )
        console.print(f"{model} traffic: " + _traffic(states.get(model)))
        if latest is not None:
            table(
                f"{model} {latest.version}: decisions",
                ["when", "stage", "who", "decision", "why"],
                [(e["when"], e["stage"], e["who"], decision_label(e), e["why"]) for e in events],
            )


def _start_in_background(settings: Settings, model: str, version: str, spec_path: str | None) -> str:
    """Start the release of a staging version detached, and say what actually happened: started, already
    running, started again after an earlier release of it ended, or (an error) nothing, because the
    version's release has ended."""
    registry = ModelRegistry(store_for("data-scientist", settings))
    mv = registry.get(model, version)
    events = registry.history(model, version)
    last = f"last decision: {decision_label(events[-1])}: {events[-1]['why']}" if events else "no decision recorded"
    if mv.stage != "staging":
        raise KfreleaseError(
            f"{model} {version} is {mv.stage or 'not staged'}, not in staging: its release has ended or never "
            f"began ({last}); nothing was started"
        )
    path = record_path(settings, model, version)
    earlier = json.loads(path.read_text() or "{}") if path.exists() else None
    if earlier and record_alive(earlier):
        return (
            f"the release of {model} {version} is already running (pid {earlier['pid']}, started earlier); nothing "
            f"new was started; log {earlier.get('log')}; `kfrelease release status {model}` shows where it is"
        )
    if earlier is not None:
        path.unlink(missing_ok=True)  # that release ended and left the version in staging: start it again
    record = start_release(settings, model, version, spec_path, requested=True)
    if record.get("kfp_run_id"):
        return f"release of {model} {version} submitted to {record['kfp_host']} as run {record['kfp_run_id']}"
    if record.get("existing"):
        return (
            f"the release of {model} {version} was started by someone else a moment ago (pid {record.get('pid')}); "
            f"nothing new was started; log {record.get('log')}"
        )
    what = (
        f"release of {model} {version} started again"
        if earlier is not None
        else f"release of {model} {version} started"
    )
    what += f" (pid {record['pid']}; log {record['log']})"
    if earlier is not None:
        what += f"; the earlier one ended with the version still in staging ({last})"
    holder = lock_holder(lock_path(settings, model))
    if holder and holder != version:
        what += f"; it waits for the release of {model} {holder} to end first"
    return what


def _traffic(state) -> str:
    return state.describe() if state is not None else "not routed (run `kfrelease serve`)"
