"""``kfrelease compile`` (pipelines and components to YAML), ``kfrelease trigger`` (on every merge to main)
and ``kfrelease runs`` (training runs and their steps)."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import click

import kfrelease.components as components_package
from kfrelease.cli.output import console, table
from kfrelease.config import Settings
from kfrelease.images.project import compile_package
from kfrelease.kfp.runner import compile_pipelines
from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for
from kfrelease.training import run_records
from kfrelease.training.results import result_lines, run_result
from kfrelease.training.steps import STEP_NAMES
from kfrelease.training.trigger import resume_interrupted, trigger, wait


def components() -> dict[str, object]:
    """Every KFP component of ``kfrelease.components`` (one module per component), by name."""
    # heavy: kfp's DSL (seconds to import); only compiling needs it, not every command of the CLI
    from kfp.dsl.base_component import BaseComponent

    found = {}
    for info in sorted(pkgutil.iter_modules(components_package.__path__), key=lambda i: i.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{components_package.__name__}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, BaseComponent) and not attr.startswith("_"):
                found.setdefault(attr, obj)
    return found


def compile_components(out_dir: Path) -> list[Path]:
    """Write each component as a KFP component YAML file (load with ``kfp.components.load_component_from_file``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, component in components().items():
        path = out_dir / f"{name}.yaml"
        compile_package(component, path)
        written.append(path)
    return written


def register(cli: click.Group) -> None:
    @cli.command("compile")
    @click.option("--out", type=click.Path(file_okay=False), default="build/pipelines", show_default=True)
    @click.option("--no-components", is_flag=True, help="Do not write the component YAML files.")
    @click.argument("names", nargs=-1)
    def compile_cmd(out: str, names: tuple[str, ...], no_components: bool) -> None:
        """Compile pipelines (default: all) to KFP YAML packages for the Kubeflow UI or `kfp.Client`, and every
        component to OUT/components/<name>.yaml for reuse in other pipelines.

        KFRELEASE_IMAGE sets the components' base image (default: the public project image).
        """
        for path in compile_pipelines(Path(out), list(names) or None):
            console.print(f"wrote {path}")
        if not no_components:
            for path in compile_components(Path(out) / "components"):
                console.print(f"wrote {path}")

    @cli.command("trigger")
    @click.option("--commit", help="The merged commit (SHA or ref) whose model spec is trained.")
    @click.option(
        "--repo",
        default=".",
        show_default=True,
        type=click.Path(file_okay=False),
        help="The model project's git repository.",
    )
    @click.option("--spec", "spec_file", default="model.yaml", show_default=True, help="Spec path in the repo.")
    @click.option("--kfp-host", help="Submit to this KFP API server with kfp.Client instead of running locally.")
    @click.option("--auto", is_flag=True, help="Retrain the production definition on the latest data.")
    @click.option("--model", help="Model name (with --auto).")
    @click.option("--reason", default=None, help="Why (recorded with the run).")
    @click.option("--wait", "wait_", is_flag=True, help="Wait until a local run has finished and show it.")
    @click.option(
        "--resume",
        is_flag=True,
        help="Start again every local run an infrastructure failure or a "
        "machine restart interrupted (no commit needed).",
    )
    def trigger_cmd(commit, repo, spec_file, kfp_host, auto, model, reason, wait_, resume) -> None:
        """Start the training pipeline for a merge to main (what CI runs). The same commit returns the same
        run, or starts it again when an infrastructure cause interrupted it; a run, once started, cannot be
        stopped (a new merge starts a new one)."""
        settings = Settings.from_env()
        if resume:
            resumed = resume_interrupted(settings)
            for r in resumed:
                console.print(f"run {r.run_id} started again: {r.state.get('retried_because')}")
            console.print(f"{len(resumed)} interrupted run(s) started again")
            return
        record = trigger(
            settings,
            commit,
            repo,
            kfp_host=kfp_host,
            auto=auto,
            model=model,
            spec_file=spec_file,
            reason=reason or ("automatic retrain" if auto else "merge to main"),
        )
        what = "started" if record.created else "started again" if record.retried else "exists already"
        if record.created and record.state.get("trained") is False:
            what = "finished without training"  # the same definition on the same data is registered already
        where = record.state.get("kfp_run_id") or record.state.get("log") or ""
        why = record.state.get("retried_because") if record.retried else record.state.get("error")
        if not why and record.state.get("outcome") not in (None, "staged"):
            why = f"{record.state['outcome']}: {record.state.get('summary', '')}"  # an earlier run that staged nothing
        # one line, never wrapped: scripts and people grep it for the run id and the reason
        console.print(
            f"run {record.run_id} {what} ({record.status}) {where}".rstrip() + (f"; {why}" if why else ""),
            soft_wrap=True,
            markup=False,
        )
        if wait_ and not kfp_host:
            with console.status(f"waiting for {record.run_id}"):
                record = wait(settings, record.run_id)
            _print_run(record)
            if record.status != "succeeded":
                raise click.exceptions.Exit(1)
            summary = record.state.get("summary") or f"{record.state.get('version')} ({record.state.get('verdict')})"
            # one line, never wrapped; non-zero when the merge left no staging candidate (it says what to change)
            console.print(
                f"run {record.run_id}: {record.state.get('outcome', 'done')}: {summary}", soft_wrap=True, markup=False
            )
            if not record.state.get("staging_candidate", True):
                raise click.exceptions.Exit(1)

    @cli.command("runs")
    @click.argument("run_id", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
    def runs_cmd(run_id: str | None, as_json: bool) -> None:
        """List training runs with their step states (or show one run)."""
        store = store_for("data-scientist")
        records = [run_records.get_run(store, run_id)] if run_id else run_records.list_runs(store)
        registry = ModelRegistry(store)
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            **{k: v for k, v in r.as_dict().items() if k != "spec_json"},
                            "result": run_result(r, registry),
                        }
                        for r in records
                    ],
                    indent=2,
                    default=str,
                )
            )
            return
        if run_id:
            _print_run(records[0])
            return
        console.print(
            "steps: train evaluate validate register containerize stage (✓ ok, ✗ failed, ▶ running, "
            "· skipped, - pending)"
        )
        results = {r.run_id: run_result(r, registry) for r in records}
        table(
            "training runs",
            ["run", "model", "commit", "state", "version", "verdict", "rmse", "r2", "steps", "created", "why"],
            [
                (
                    r.run_id,
                    r.record.get("model"),
                    (r.record.get("commit") or "")[:12],
                    r.status,
                    r.state.get("version", ""),
                    results[r.run_id].get("verdict", ""),
                    _metric(results[r.run_id], "rmse"),
                    _metric(results[r.run_id], "r2"),
                    _steps(r),
                    r.record.get("created_at"),
                    _why(r),
                )
                for r in records
            ],
        )
        console.print("metrics, verdict and reports of one run: kfrelease runs RUN_ID")


#: One character per step in `kfrelease runs` (train, evaluate, validate, register, containerize, stage).
_MARK = {"succeeded": "✓", "failed": "✗", "running": "▶", "skipped": "·"}


def _metric(result: dict, name: str) -> str:
    value = (result.get("metrics") or {}).get(name)
    return "" if value is None else f"{value:.4g}"


def _why(record) -> str:
    """One line: why a run waits, is being retried or failed; its attempt and peak memory otherwise."""
    st = record.state
    if record.status == "queued":
        return st.get("waiting") or "queued: its runner is starting"
    if record.status in ("retrying", "failed"):
        return st.get("error") or ""
    if record.status == "succeeded" and st.get("outcome") and st["outcome"] != "staged":
        return f"{st['outcome']}: {st.get('summary', '')}"
    bits = [f"attempt {st['attempt']}"] if st.get("attempt", 1) > 1 else []
    if (st.get("peak_rss_mb") or {}).get("train"):
        bits.append(f"train peak {st['peak_rss_mb']['train']:.0f} MB")
    return ", ".join(bits)


def _steps(record) -> str:
    return "".join(_MARK.get(record.steps.get(s, {}).get("state"), "-") for s in STEP_NAMES)


def _print_run(record) -> None:
    st = record.state
    console.print(
        f"run {record.run_id}: {record.status}"
        + (f", version {st['version']} ({st.get('verdict')})" if st.get("version") else "")
        + (f", {_why(record)}" if _why(record) else "")
    )
    table(
        None,
        ["step", "state", "attempt", "started", "finished", "peak MB", "error or why skipped"],
        [
            (
                s,
                record.steps.get(s, {}).get("state", "-"),
                record.steps.get(s, {}).get("attempt"),
                record.steps.get(s, {}).get("started_at"),
                record.steps.get(s, {}).get("finished_at"),
                record.steps.get(s, {}).get("peak_rss_mb"),
                record.steps.get(s, {}).get("error") or record.steps.get(s, {}).get("skipped"),
            )
            for s in STEP_NAMES
        ],
    )
    for line in result_lines(run_result(record, ModelRegistry(store_for("data-scientist")))):
        console.print(line, soft_wrap=True, markup=False)
