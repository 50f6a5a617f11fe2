"""``kfrelease models``: the model registry (list, show, history)."""

from __future__ import annotations

import json

import click

from kfrelease.cli.output import console, table
from kfrelease.registry import ModelRegistry
from kfrelease.storage import store_for


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
    def list_cmd(model: str | None) -> None:
        """List the versions of MODEL (default: every model)."""
        reg = _registry()
        names = [model] if model else reg.models()
        for name in names:
            rows = [
                (v.version, v.stage or "-", _fmt(v.metrics.get("rmse")), _fmt(v.metrics.get("r2")),
                 (v.commit or "")[:12], v.dataset_version, "yes" if v.passed else "no",
                 (v.image or {}).get("digest", "")[:19], v.created_at)
                for v in reg.list(name)
            ]
            table(name, ["version", "stage", "rmse", "r2", "commit", "data", "passed", "image", "created"], rows)
        if not names:
            console.print("no models registered yet")

    @models.command()
    @click.argument("model")
    @click.argument("version")
    def show(model: str, version: str) -> None:
        """Print a version's registry entry (lineage, metrics, verdict, image) as JSON."""
        mv = _registry().get(model, version)
        entry = {k: v for k, v in mv.entry.items() if k != "spec"}
        click.echo(json.dumps({**entry, "stage": mv.stage}, indent=2, sort_keys=True, default=str))

    @models.command()
    @click.argument("model")
    @click.argument("version")
    def history(model: str, version: str) -> None:
        """A version's stage history (append-only): when, stage, who, why."""
        events = _registry().history(model, version)
        table(f"{model} {version}", ["when", "stage", "who", "decision", "interval", "n", "why"],
              [(e["when"], e["stage"], e["who"], *_decision_columns(e.get("evidence") or {}), e["why"])
               for e in events])


def _decision_columns(evidence: dict) -> tuple[str, str, str]:
    """(decision, interval, n) of a shadow, canary or plan event: the paired test's loss ratio with its
    confidence sequence and sample count; blank for events without one."""
    test = evidence.get("test")
    if test is None:  # a canary step: its accuracy check
        test = next((c for c in evidence.get("checks") or [] if c.get("interval") is not None), None)
        if test is not None:
            test = {"decision": test["status"], "ratio": test["value"], "ratio_interval": test["interval"],
                    "n": test["n"]}
    if not test or test.get("ratio_interval") is None:
        if evidence.get("phase") == "plan" and evidence.get("labelled_needed") is not None:
            return "plan", f"p(pass) {evidence['pass_probability']:.2f}", str(evidence["labelled_needed"])
        return "", "", ""
    lo, hi = test["ratio_interval"]
    fmt = lambda x: "inf" if x == float("inf") else f"{x:.3f}"
    return (str(test.get("decision", "")), f"{fmt(test['ratio'])} [{fmt(lo)}, {fmt(hi)}]", f"{test['n']:.0f}")
