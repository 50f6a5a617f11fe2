"""What each page of the web UI shows, read through the core functions (registry, run records,
``kfrelease.training.results``, the monitoring history) with the read-only data-scientist identity. Plain
functions returning dicts for the templates; no HTTP here.

An unknown model or version raises ``NotFound`` (the app answers 404 with a page naming what exists).
"""

from __future__ import annotations

from dataclasses import dataclass

from kfrelease.errors import KfreleaseError, NotFound
from kfrelease.registry.registry import EXPERIMENTS, REGISTRY, ModelRegistry
from kfrelease.storage import ObjectStore
from kfrelease.training import run_records
from kfrelease.training.results import (
    METRICS,
    decision_label,
    find_reports,
    paired_test,
    run_result,
    show_version,
    standing,
)
from kfrelease.training.steps import STEP_NAMES

SPACES = (REGISTRY, EXPERIMENTS)


@dataclass(frozen=True)
class Reader:
    """The object store and the two registry spaces the pages read."""

    store: ObjectStore

    def registry(self, space: str = REGISTRY) -> ModelRegistry:
        return ModelRegistry(self.store, space)


def _versions(reg: ModelRegistry, model: str) -> list:
    found = reg.list(model)
    if not found:
        known = ", ".join(reg.models()) or "none yet"
        where = "the registry" if reg.space == REGISTRY else "the experiments"
        raise NotFound(f"no model {model!r} in {where}; models: {known}")
    return found


def version_row(mv) -> dict:
    metrics = mv.entry.get("metrics") or {}
    return {
        "version": mv.version,
        "stage": mv.stage or "-",
        "passed": mv.passed,
        "metrics": {m: metrics.get(m) for m in METRICS},
        "commit": (mv.entry.get("commit") or "")[:12],
        "dataset": mv.entry.get("dataset"),
        "dataset_version": mv.entry.get("dataset_version"),
        "run_id": mv.entry.get("run_id"),
        "created_at": mv.entry.get("created_at"),
    }


def overview(reader: Reader, recent: int = 10) -> dict:
    """The front page: every model (released and experiments) with its production and staging versions,
    the latest runs and the latest decisions."""
    models = []
    for space in SPACES:
        reg = reader.registry(space)
        for name in reg.models():
            versions = reg.list(name)
            if not versions:
                continue
            by_stage = {}
            for v in reversed(versions):  # the newest version of each stage
                by_stage.setdefault(v.stage, v.version)
            models.append(
                {
                    "name": name,
                    "space": space,
                    "versions": len(versions),
                    "production": by_stage.get("production"),
                    "staging": by_stage.get("staging"),
                    "latest": versions[-1].version,
                    "latest_created": versions[-1].entry.get("created_at"),
                }
            )
    return {"models": models, "runs": run_rows(reader)[:recent], "decisions": decisions(reader)[:recent]}


def model_page(reader: Reader, model: str, space: str = REGISTRY) -> dict:
    reg = reader.registry(space)
    versions = _versions(reg, model)
    return {"model": model, "space": space, "versions": [version_row(v) for v in versions]}


def version_page(reader: Reader, model: str, version: str, space: str = REGISTRY) -> dict:
    """A version: lineage, metrics, verdict, spec (class, parameters, build code), image, every stage
    event with its evidence, and its reports."""
    reg = reader.registry(space)
    _versions(reg, model)
    mv = reg.get(model, version)  # NotFound naming the latest known versions
    shown = show_version(mv)
    history = reg.history(model, version)
    events = [event_row(model, version, e) for e in history]
    reports = find_reports(reader.store, reg, model, version) if space == REGISTRY else []
    return {
        "model": model,
        "version": version,
        "space": space,
        "entry": shown,
        "row": version_row(mv),
        "standing": standing(mv, history),
        "events": events,
        "reports": reports,
        "reasons": list((mv.entry.get("verdict") or {}).get("reasons") or []),
    }


def report(reader: Reader, model: str, version: str, name: str) -> bytes:
    """The bytes of one of a version's reports, by its file name (as ``kfrelease reports`` names it)."""
    reg = reader.registry()
    for r in find_reports(reader.store, reg, model, version):
        if r.file_name == name:
            return reader.store.get_bytes(r.bucket, r.key)
    raise NotFound(f"{model} {version} has no report {name!r}")


# decisions (stage events) ------------------------------------------------------------------------------
def flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """Nested evidence as (dotted key, value) rows, lists of dicts numbered (``checks.0.name``)."""
    if isinstance(value, dict):
        rows = []
        for k, v in value.items():
            rows.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = []
        for i, v in enumerate(value):
            rows.extend(flatten(v, f"{prefix}.{i}"))
        return rows
    return [(prefix, value)]


def event_row(model: str, version: str, event: dict) -> dict:
    evidence = event.get("evidence") or {}
    return {
        "model": model,
        "version": version,
        "when": event.get("when"),
        "stage": event.get("stage"),
        "who": event.get("who"),
        "decision": decision_label(event),
        "why": event.get("why"),
        "test": paired_test(evidence),
        "evidence": flatten(evidence),
    }


def decisions(reader: Reader, model: str | None = None) -> list[dict]:
    """Every stage event of every released model (or of one), newest first, each with its evidence."""
    reg = reader.registry()
    names = [model] if model else reg.models()
    if model:
        _versions(reg, model)
    out = []
    for name in names:
        for v in reg.list(name):
            out.extend(event_row(name, v.version, e) for e in reg.history(name, v.version))
    return sorted(out, key=lambda e: e["when"] or "", reverse=True)


# runs -------------------------------------------------------------------------------------------------
def _run_row(record, registry: ModelRegistry) -> dict:
    try:
        result = run_result(record, registry)
    except KfreleaseError:  # the version's entry cannot be read: show the run without it
        result = {}
    return {
        "run_id": record.run_id,
        "model": record.record.get("model"),
        "state": record.status,
        "commit": (record.record.get("commit") or "")[:12],
        "created_at": record.record.get("created_at"),
        "version": record.state.get("version"),
        "error": record.state.get("error"),
        "result": result,
    }


def run_rows(reader: Reader) -> list[dict]:
    """Every training run, newest first."""
    reg = reader.registry()
    return [_run_row(r, reg) for r in reversed(run_records.list_runs(reader.store))]


def run_page(reader: Reader, run_id: str) -> dict:
    """One run: its record, state, each step (state, attempt, times, peak memory, error) and its result."""
    if reader.store.stat(run_records.BUCKET, f"runs/{run_id}/run.json") is None:
        raise NotFound(f"no training run {run_id!r}; the runs page lists them")
    record = run_records.get_run(reader.store, run_id)
    steps = [{"name": s, **record.steps.get(s, {"state": "pending"})} for s in STEP_NAMES]
    extra = [{"name": s, **v} for s, v in record.steps.items() if s not in STEP_NAMES]
    details = {k: v for k, v in record.record.items() if k not in ("spec_json",)}
    return {
        "run": _run_row(record, reader.registry()),
        "steps": steps + extra,
        "record": flatten(details),
        "state": flatten(record.state),
    }
