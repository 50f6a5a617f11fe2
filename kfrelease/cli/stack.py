"""``kfrelease up | status | down``: the embedded stack."""

from __future__ import annotations

import click

from kfrelease.cli.output import console, json_option, print_json, table
from kfrelease.config import Settings
from kfrelease.registry.lineage import now_iso
from kfrelease.release.lifecycle import resume_releases, stop_releases
from kfrelease.stack import supervisor
from kfrelease.stack.services import UP_GROUPS, declared_services
from kfrelease.training.execution import recover_runs, recovered_since, stop_runners


def start_stack(settings: Settings) -> list[supervisor.ServiceStatus]:
    """Start every service of the ``up`` groups, printing each as it becomes ready."""
    services = declared_services(settings, UP_GROUPS)
    console.print(f"[bold]kfrelease stack[/] in {settings.home} ({len(services)} services, 127.0.0.1 only)")

    def progress(st: supervisor.ServiceStatus) -> None:
        mark = "[green]ready[/]" if st.healthy else "[red]failed[/]"
        console.print(f"  {st.name:<16} {mark}  {st.url:<28} pid {st.pid}  ({st.note})")

    return supervisor.up(settings, services, on_progress=progress)


def register(cli: click.Group) -> None:
    @cli.command()
    def up() -> None:
        """Start the embedded stack (SeaweedFS S3, OCI registry, monitoring) and wait until it is ready;
        then start again every release that `kfrelease down` interrupted (from the shadow gate), and every
        training run whose runner is gone (or fail it with the cause when its attempts are used).

        Safe to run twice: services already running and healthy are left as they are.
        """
        settings = Settings.from_env()
        started = now_iso()
        start_stack(settings)
        console.print(f"web UI: {settings.url('ui')} (models, runs, releases, monitoring; `kfrelease ui`)")
        for release in resume_releases(settings):
            console.print(f"  release of {release} resumed (interrupted by `kfrelease down`)")
        recover_runs(settings)  # the watchdog may have started some already: every one since `up` is shown
        for recovery in recovered_since(settings, started):
            console.print(f"  {recovery.line()}", soft_wrap=True, markup=False)

    @cli.command()
    @json_option
    def status(as_json: bool) -> None:
        """Show every service of the embedded stack: url, healthy, pid."""
        settings = Settings.from_env()
        rows = supervisor.status(settings, declared_services(settings))
        if as_json:
            print_json(
                [{"service": r.name, "url": r.url, "healthy": r.healthy, "pid": r.pid, "note": r.note} for r in rows]
            )
            return
        table(
            f"kfrelease stack ({settings.home})",
            ["service", "url", "healthy", "pid", "note"],
            [(r.name, r.url, "yes" if r.healthy else "no", r.pid or "-", r.note) for r in rows],
        )

    @cli.command()
    def down() -> None:
        """Stop every release in flight and every training run, then every process of the embedded stack
        (data stays in KFRELEASE_HOME); nothing restarts until `kfrelease up`, which resumes them."""
        settings = Settings.from_env()
        # the watchdog first: it would start again what is stopped next
        watchdog = [supervisor.WATCHDOG] if supervisor.stop_service(settings, supervisor.WATCHDOG) else []
        releases = stop_releases(settings)  # then the releases: a release must not start anything after `down`
        if releases:
            console.print(
                f"stopped {len(releases)} release(s) in flight: {', '.join(releases)} (`kfrelease up` resumes them)"
            )
        runs = stop_runners(settings)  # and the training runs, while the object store records it
        if runs:
            console.print(f"stopped {len(runs)} training run(s): {', '.join(runs)} (`kfrelease up` resumes them)")
        stopped = watchdog + supervisor.down(settings)
        console.print(f"stopped {len(stopped)} service(s): {', '.join(stopped) or 'none was running'}")
