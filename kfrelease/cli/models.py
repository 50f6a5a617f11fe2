"""``kfrelease models``: the model registry (list, show, history)."""

from __future__ import annotations

import json

import click

from kfrelease.cli.output import console, json_option, print_json, table
from kfrelease.quality.metrics import METRIC_NAMES, regression_metrics
from kfrelease.registry import EXPERIMENTS, ModelRegistry
from kfrelease.release.decision import decide
from kfrelease.rollout.spec import load_rollout_spec
from kfrelease.storage import store_for
from kfrelease.training.evidence import common_rows
from kfrelease.training.results import (
    decision_label,
    diff_versions,
    fetch_reports,
    find_reports,
    paired_test,
    resolve_version,
    show_version,
)


def _registry() -> ModelRegistry:
    return ModelRegistry(store_for("data-scientist"))  # read-only view


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def register(cli: click.Group) -> None:
    @cli.group()
    def models() -> None:
        """The model registry: versions V<tag>.<manual>.<auto>, lineage, verdicts, stages."""

    @models.command("list")
    @click.argument("model", required=False)
    @click.option("--experiments", is_flag=True, help="List experiments (notebook runs) instead of releases.")
    @json_option
    def list_cmd(model: str | None, experiments: bool, as_json: bool) -> None:
        """List the versions of MODEL (default: every model)."""
        reg = ModelRegistry(store_for("data-scientist"), EXPERIMENTS) if experiments else _registry()
        names = [model] if model else reg.models()
        if as_json:
            print_json({name: [_version_record(v) for v in reg.list(name)] for name in names})
            return
        for name in names:
            rows = [
                (
                    v.version,
                    v.stage or "-",
                    _fmt(v.metrics.get("rmse")),
                    _fmt(v.metrics.get("r2")),
                    (v.commit or "")[:12],
                    v.dataset_version,
                    "passed" if v.passed else "rejected",
                    (v.image or {}).get("digest", "")[:19],
                    v.created_at,
                )
                for v in reg.list(name)
            ]
            table(name, ["version", "stage", "rmse", "r2", "commit", "data", "validation", "image", "created"], rows)
        if not names:
            console.print("no models registered yet")

    @models.command()
    @click.argument("model")
    @click.argument("version")
    def show(model: str, version: str) -> None:
        """Print a version's registry entry as JSON: lineage, metrics, verdict, image and its spec (estimator
        class and parameters or build function and code). VERSION: V1.2.0, production, staging or
        experiment:V1.1.0."""
        mv = resolve_version(store_for("data-scientist"), model, version)
        click.echo(json.dumps(show_version(mv), indent=2, sort_keys=True, default=str))

    @models.command()
    @click.argument("model")
    @click.argument("a")
    @click.argument("b")
    @json_option
    def diff(model: str, a: str, b: str, as_json: bool) -> None:
        """Compare two versions of MODEL: held-out metrics on the rows both held out (or a note that their rows
        differ), definition (estimator, parameters, build code, features), data version and lineage. A and B:
        V1.2.0, production, staging or experiment:E1.1.0."""
        store = store_for("data-scientist")
        va, vb = resolve_version(store, model, a), resolve_version(store, model, b)
        d = diff_versions(va, vb)
        rows = same_rows(store, va, vb)
        if as_json:
            print_json({**d.as_dict(), "same_rows": rows})
            return

        def say(line: str) -> None:
            console.print(line, markup=False, soft_wrap=True)

        if rows["n"]:
            say(
                f"{d.a} -> {d.b}: on the same {rows['n']} held-out rows (held out by both, labels of "
                f"{rows['dataset_version']})"
            )
            table(
                "on the same rows",
                ["metric", d.a, d.b, "change"],
                [
                    (m, _fmt(x, 4), _fmt(y, 4), _fmt(y - x if None not in (x, y) else None, 4))
                    for m, x, y in rows["metrics"]
                ],
            )
            say(f"paired test of {d.b} against {d.a} on these rows: {rows['test']}")
        else:
            say(f"not compared on the same rows: {rows['why']}")
        say(f"metrics as registered, each on its own held-out rows ({rows['rows_a']} and {rows['rows_b']})")
        table(
            "as registered",
            ["metric", d.a, d.b, "change"],
            [(m, _fmt(va, 4), _fmt(vb, 4), "" if delta is None else f"{delta:+.4f}") for m, va, vb, delta in d.metrics],
        )
        if d.changes:
            table("what differs", ["field", d.a, d.b], [(c.what, _fmt(c.a), _fmt(c.b)) for c in d.changes])
        else:
            console.print("same definition, data and lineage")
        if d.code_diff:
            click.echo(d.code_diff)

    @cli.command("reports")
    @click.argument("model")
    @click.argument("version")
    @click.option(
        "--out",
        type=click.Path(file_okay=False),
        default=None,
        help="Write the reports into this folder as .html files (default: only list them).",
    )
    @json_option
    def reports_cmd(model: str, version: str, out: str | None, as_json: bool) -> None:
        """The evaluation, shadow-gate and drift reports of a version (VERSION: V1.2.0, production, staging
        or experiment:V1.1.0); with --out, fetched as .html files to open in a browser."""
        store = store_for("data-scientist")
        mv = resolve_version(store, model, version)
        reg = ModelRegistry(store, EXPERIMENTS if mv.entry.get("experiment") else "registry")
        found = find_reports(store, reg, model, mv.version)
        if as_json and out is None:
            print_json([{"kind": r.kind, "uri": store.uri(r.bucket, r.key), "file": r.file_name} for r in found])
            return
        if not found:
            console.print(f"{model} {mv.version} has no stored reports yet")
            return
        if out is None:
            for r in found:
                console.print(f"{r.kind}: {store.uri(r.bucket, r.key)}", soft_wrap=True, markup=False)
            return
        for r, path in zip(found, fetch_reports(store, found, out), strict=True):
            console.print(f"{r.kind}: {path}", soft_wrap=True, markup=False)

    @models.command()
    @click.argument("model")
    @click.argument("version")
    @json_option
    def history(model: str, version: str, as_json: bool) -> None:
        """A version's stage history (append-only): when, stage, who, what was decided, the accuracy test
        (loss ratio [interval], n) it was decided on, why."""
        events = _registry().history(model, version)
        if as_json:
            print_json([{**e, "decision": decision_label(e)} for e in events])
            return
        table(
            f"{model} {version}",
            ["when", "stage", "who", "decision", "accuracy test", "loss ratio [interval]", "n", "why"],
            [
                (e["when"], e["stage"], e["who"], decision_label(e), *_test_columns(e.get("evidence") or {}), e["why"])
                for e in events
            ],
        )


def _version_record(v) -> dict:
    """A version as ``models list --json`` prints it."""
    return {
        "version": v.version,
        "stage": v.stage,
        "metrics": dict(v.metrics),
        "commit": v.commit,
        "dataset_version": v.dataset_version,
        "validation": "passed" if v.passed else "rejected",
        "image": v.image,
        "created_at": v.created_at,
    }


def same_rows(store, a, b) -> dict:
    """``models diff`` on the same rows: both versions' kept held-out predictions on the rows both held out,
    with the labels of ``b``'s data: each one's metrics and the paired test (the default rollout spec's shadow
    rule) of ``b`` against ``a``; ``n`` 0 and ``why`` when there are none."""

    def reg(mv):
        return ModelRegistry(store, EXPERIMENTS if mv.entry.get("experiment") else "registry")

    def held(mv):
        return (mv.entry.get("held_out") or {}).get("rows") or (mv.metrics or {}).get("n")

    rows = common_rows(store, reg(a), a, reg(b), b)
    out = {"n": len(rows), "why": rows.why, "rows_a": held(a), "rows_b": held(b)}
    if not len(rows):
        return out
    ma, mb = regression_metrics(rows.truth, rows.a), regression_metrics(rows.truth, rows.b)
    rule = load_rollout_spec().shadow.rule()
    test = decide(rows.truth, rows.b, rows.a, rule, (a.metrics or {}).get("rmse"), at_limit=True)
    return {
        **out,
        "dataset_version": rows.dataset_version,
        "metrics": [(m, ma[m], mb[m]) for m in METRIC_NAMES],
        "test": test.describe(),
        "decision": test.as_dict(),
    }


def _test_columns(evidence: dict) -> tuple[str, str, str]:
    """(accuracy test, loss ratio [interval], n) of a shadow, canary or plan event: the paired test's status,
    the loss ratio with its confidence sequence and the sample count; blank for events without one."""
    test = paired_test(evidence)
    if test is None:
        if evidence.get("phase") == "plan" and evidence.get("labelled_needed") is not None:
            return "plan", f"p(pass) {evidence['pass_probability']:.2f}", str(evidence["labelled_needed"])
        return "", "", ""
    fmt = lambda x: "inf" if x == float("inf") else f"{x:.3f}"
    n = "" if test.get("n") is None else f"{test['n']:.0f}"
    return (str(test.get("decision") or ""), f"{fmt(test['ratio'])} [{fmt(test['low'])}, {fmt(test['high'])}]", n)
