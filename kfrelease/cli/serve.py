"""``kfrelease serve``: the serving group of the embedded stack (gateway, log sink, feedback and one model
server per version the registry marks production and staging, plus a canary the release left running)."""

from __future__ import annotations

import click

from kfrelease.cli.output import console, table
from kfrelease.config import Settings
from kfrelease.errors import NotFound
from kfrelease.rollout.spec import RolloutSpec, load_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor

spec_option = click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Rollout spec YAML (default: the packaged kfrelease/rollout/default.yaml).",
)


def registry_versions(settings: Settings, model: str) -> tuple[str | None, str | None]:
    """(production version, staging version) as the registry marks them."""
    from kfrelease.registry import ModelRegistry
    from kfrelease.storage import store_for

    registry = ModelRegistry(store_for("serving", settings))
    prod = registry.current(model, "production")
    staging = registry.current(model, "staging")
    return (prod.version if prod else None), (staging.version if staging else None)


def serving_state(
    spec: RolloutSpec, production: str | None, staging: str | None, previous: TrafficState | None
) -> TrafficState:
    """The traffic state ``kfrelease serve`` brings up: production answers; the staging candidate is a
    shadow, unless a release left it running as a canary (then that canary and its weight are kept)."""
    if not production:
        raise NotFound(
            f"no version of {spec.model} is in production in the model registry; register one and promote it "
            "(training pipeline, then `kfrelease release`), then run `kfrelease serve` again"
        )
    if staging == production:
        staging = None
    if previous and previous.primary == production and previous.canary and previous.canary == staging:
        return TrafficState(primary=production, canary=staging, canary_weight=previous.canary_weight)
    if staging:
        return TrafficState(primary=production, shadow=staging, mirror_percent=spec.shadow.mirror_percent)
    return TrafficState(primary=production)


def describe(state: TrafficState | None) -> str:
    if state is None:
        return "no traffic state applied"
    parts = [f"primary {state.primary}"]
    if state.canary:
        parts.append(f"canary {state.canary} at {state.canary_weight}%")
    if state.shadow:
        parts.append(f"shadow {state.shadow} ({state.mirror_percent:g}% mirrored)")
    return ", ".join(parts)


def start_serving(settings: Settings, spec: RolloutSpec) -> TrafficState:
    from kfrelease.serving.gateway import LocalGatewayDriver
    from kfrelease.stack.services import declared_services

    production, staging = registry_versions(settings, spec.model)
    driver = LocalGatewayDriver(settings, spec)
    state = serving_state(spec, production, staging, driver.current())
    # the sink and the feedback service first: model servers log to the sink from their first request
    others = [s for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    for st in supervisor.up(settings, others):
        console.print(f"  {st.name:<22} [green]ready[/]  {st.url:<28} ({st.note})")
    driver.apply(state)
    return state


def status_rows(settings: Settings) -> list[tuple]:
    from kfrelease.serving.gateway import read_gateway_record
    from kfrelease.stack.services import declared_services

    rec = read_gateway_record(settings) or {}
    slots = rec.get("slots", {})
    names = ["gateway"] + [s.name for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    names += [f"predictor-{stage}" for stage in ("production", "staging", "canary")]
    rows = []
    for name in dict.fromkeys(names):
        st = supervisor.service_status(settings, name)
        version = slots.get(name.removeprefix("predictor-"), "") if name.startswith("predictor-") else ""
        if st.note == "not started" and name.startswith("predictor-"):
            continue
        rows.append((name, version, st.url, "yes" if st.healthy else "no", st.pid or "-", st.note))
    return rows


def register(cli: click.Group) -> None:
    @cli.group(invoke_without_command=True)
    @spec_option
    @click.pass_context
    def serve(ctx: click.Context, spec_path: str | None) -> None:
        """Start serving: gateway, log sink, feedback and the model servers of the registry's production and
        staging (shadow) versions. Safe to run twice; `kfrelease serve status` shows it, `kfrelease down`
        (or `kfrelease serve stop`) stops it."""
        if ctx.invoked_subcommand is not None:
            return
        settings = Settings.from_env()
        spec = load_rollout_spec(spec_path)
        console.print(f"[bold]kfrelease serve[/] {spec.model} in {settings.home}")
        state = start_serving(settings, spec)
        console.print(f"gateway {settings.url('gateway')}: {describe(state)}")
        console.print(f"predict: POST {settings.url('gateway', f'/v1/models/{spec.model}:predict')}")

    @serve.command("status")
    def serve_status() -> None:
        """Show the serving services, which version each model server runs, and the traffic state."""
        from kfrelease.serving.gateway import read_gateway_record

        settings = Settings.from_env()
        rec = read_gateway_record(settings) or {}
        state = TrafficState(**rec["state"]) if rec.get("state") else None
        table(
            f"kfrelease serving ({settings.home})",
            ["service", "version", "url", "healthy", "pid", "note"],
            status_rows(settings),
        )
        console.print(f"traffic: {describe(state)}")

    @serve.command("stop")
    def serve_stop() -> None:
        """Stop the gateway, the model servers and the other serving services (data stays)."""
        from kfrelease.serving.gateway import LocalGatewayDriver
        from kfrelease.stack.services import declared_services

        settings = Settings.from_env()
        stopped = LocalGatewayDriver(settings, load_rollout_spec()).stop()
        stopped += supervisor.down(settings, [s.name for s in declared_services(settings, ("serving",))])
        console.print(f"stopped {len(stopped)} service(s): {', '.join(stopped) or 'none was running'}")
