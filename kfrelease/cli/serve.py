"""``kfrelease serve``: the serving group of the embedded stack (gateway, log sink, feedback and the model
servers hosting, for every model in production, the versions the registry marks production and staging,
plus a canary a release left running)."""

from __future__ import annotations

import click

from kfrelease.cli.output import console, json_option, print_json, rows_as_records, spec_option, table
from kfrelease.config import Settings
from kfrelease.errors import NotFound
from kfrelease.registry import ModelRegistry
from kfrelease.rollout.spec import RolloutSpec, bind_model, load_rollout_spec, parse_rollout_spec
from kfrelease.rollout.traffic import TrafficState
from kfrelease.stack import supervisor
from kfrelease.stack.gateway import LocalGatewayDriver, model_states, read_gateway_record
from kfrelease.stack.hosts import hosted
from kfrelease.stack.services import declared_services
from kfrelease.stack.slots import all_slots
from kfrelease.stack.watchdog import watchdog_service
from kfrelease.storage import store_for


def registry_versions(settings: Settings, model: str) -> tuple[str | None, str | None]:
    """(production version, staging version) as the registry marks them."""
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
    return state.describe() if state is not None else "no traffic state applied"


def served_models(settings: Settings, spec_path: str | None, model: str | None) -> list[RolloutSpec]:
    """The models ``kfrelease serve`` brings up, each with its rollout spec: ``--model``, else the model a
    ``--spec`` names, else every model the registry has a production version of."""
    spec = load_rollout_spec(spec_path)  # a bad spec fails here, before anything starts
    registry = ModelRegistry(store_for("serving", settings))
    if model or spec.model:
        return [_spec_of(registry, model or spec.model, spec, spec_path)]
    names = [m for m in registry.models() if registry.current(m, "production") is not None]
    if not names:
        raise NotFound(
            "no model has a version in production in the model registry; train one on a merge to main "
            "(`kfrelease trigger`), release it, then run `kfrelease serve` again"
        )
    return [_spec_of(registry, m, spec, spec_path) for m in names]


def _spec_of(registry, model: str, spec: RolloutSpec, spec_path: str | None) -> RolloutSpec:
    """``--spec`` when given; else the rollout.yaml recorded with the model's production version (its
    merge's, ``kfrelease.training.rollout_file``); else the packaged default; bound to ``model``."""
    if spec_path is None:
        prod = registry.current(model, "production")
        recorded = prod.entry.get("rollout") if prod else None
        if recorded:
            origin = f"the rollout spec recorded with {model} {prod.version}"
            return bind_model(parse_rollout_spec(recorded, origin), model, origin)
    return bind_model(spec, model, spec_path or "default rollout spec")


def start_serving(settings: Settings, specs: list[RolloutSpec] | RolloutSpec) -> dict[str, TrafficState]:
    """Bring up the serving services and every given model's traffic state (production as primary, staging
    as shadow); models already routed keep their servers (applying the same state changes nothing)."""
    specs = [specs] if isinstance(specs, RolloutSpec) else list(specs)
    wanted = {}
    for spec in specs:  # every model is checked before anything starts
        production, staging = registry_versions(settings, spec.model)
        driver = LocalGatewayDriver(settings, spec)
        wanted[spec.model] = (driver, serving_state(spec, production, staging, driver.current()))
    # the sink and the feedback service first: model servers log to the sink from their first request
    others = [s for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    for st in supervisor.up(settings, [watchdog_service(settings), *others]):
        console.print(f"  {st.name:<22} [green]ready[/]  {st.url:<28} ({st.note})")
    for driver, state in wanted.values():
        driver.apply(state)
    return {model: state for model, (_, state) in wanted.items()}


def status_rows(settings: Settings) -> list[tuple]:
    """One row per serving service; a model server's row lists the model versions it hosts."""
    models = hosted(settings)
    names = ["gateway"] + [s.name for s in declared_services(settings, ("serving",)) if s.name != "gateway"]
    names += [slot.name for slot in all_slots()]
    rows = []
    for name in dict.fromkeys(names):
        st = supervisor.service_status(settings, name)
        if st.note == "not started" and name.startswith("predictor-"):
            continue
        held = ", ".join(f"{m} {v}" for m, v in models.get(name, {}).items())
        rows.append((name, held, st.url, "yes" if st.healthy else "no", st.pid or "-", st.note))
    return rows


def model_rows(settings: Settings) -> list[tuple]:
    """One row per routed model: its versions by role and the model servers playing each role."""
    rows = []
    for name, m in sorted((read_gateway_record(settings) or {}).get("models", {}).items()):
        state = TrafficState(**m["state"])
        by_role: dict[str, list[str]] = {}
        for slot_name, version in sorted(m.get("slots", {}).items()):
            by_role.setdefault(version, []).append(slot_name)
        for role in ("primary", "canary", "shadow"):
            version = getattr(state, role)
            if not version:
                continue
            share = (
                f"{state.canary_weight}%"
                if role == "canary"
                else f"{100 - (state.canary_weight if state.canary else 0)}%"
                if role == "primary"
                else f"{m.get('mirror_percent', 0):g}% mirrored"
            )
            rows.append((name, role, version, share, ", ".join(by_role.get(version, []))))
    return rows


def print_traffic(settings: Settings) -> None:
    states = model_states(settings)
    if not states:
        console.print("traffic: no traffic state applied (run `kfrelease serve`)")
    for model, state in states.items():
        console.print(f"{model} traffic: {describe(state)}")


def register(cli: click.Group) -> None:
    @cli.group(invoke_without_command=True)
    @spec_option
    @click.option("--model", default=None, help="Serve only this model (default: every model in production).")
    @click.pass_context
    def serve(ctx: click.Context, spec_path: str | None, model: str | None) -> None:
        """Start serving: gateway, log sink, feedback and, for every model with a production version (or
        only --model), its production version as primary and its staging version as shadow. Safe to run
        twice; `kfrelease serve status` shows it, `kfrelease down` (or `kfrelease serve stop`) stops it."""
        if ctx.invoked_subcommand is not None:
            return
        settings = Settings.from_env()
        specs = served_models(settings, spec_path, model)
        console.print(f"[bold]kfrelease serve[/] {', '.join(s.model for s in specs)} in {settings.home}")
        states = start_serving(settings, specs)
        for name, state in states.items():
            console.print(f"{name} traffic: {describe(state)}")
            console.print(f"  predict: POST {settings.url('gateway', f'/v1/models/{name}:predict')}")

    @serve.command("status")
    @json_option
    def serve_status(as_json: bool) -> None:
        """Show every model's routes (versions by role, the servers playing each) and the serving services."""
        settings = Settings.from_env()
        if as_json:
            print_json(
                {
                    "routes": rows_as_records(
                        ["model", "role", "version", "traffic", "model servers"], model_rows(settings)
                    ),
                    "services": rows_as_records(
                        ["service", "hosts", "url", "healthy", "pid", "note"], status_rows(settings)
                    ),
                    "traffic": {m: describe(s) for m, s in model_states(settings).items()},
                }
            )
            return
        table(
            f"kfrelease models served ({settings.home})",
            ["model", "role", "version", "traffic", "model servers"],
            model_rows(settings),
        )
        table(
            "serving services",
            ["service", "hosts", "url", "healthy", "pid", "note"],
            status_rows(settings),
        )
        print_traffic(settings)

    @serve.command("stop")
    def serve_stop() -> None:
        """Stop the gateway, the model servers and the other serving services (data stays)."""
        settings = Settings.from_env()
        stopped = LocalGatewayDriver(settings, load_rollout_spec()).stop()
        stopped += supervisor.down(settings, [s.name for s in declared_services(settings, ("serving",))])
        console.print(f"stopped {len(stopped)} service(s): {', '.join(stopped) or 'none was running'}")
