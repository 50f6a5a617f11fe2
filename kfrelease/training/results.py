"""What a data scientist looks at after a run: a version's spec, two versions side by side, a run's result
line, where its reports are, and what each release decision decided. Plain functions over registry entries,
stage events and run records, shared by the CLI (``kfrelease models show|diff|history``, ``reports``,
``runs``, ``trigger --wait``, ``release status``) and the web UI.

Reports live in the object store (each written once, by its producer):

- evaluation (Evidently regression report of the held-out split): ``models`` bucket, beside the version's
  artifacts (``<artifact prefix>evaluation.html``, written by ``register``);
- shadow gate (the paired test of candidate and production): ``models`` bucket,
  ``reports/<model>/<version>/shadow-gate.html`` (``kfrelease.release.controller``);
- drift (Evidently, one per monitoring window): ``pipeline-root`` bucket,
  ``monitoring/<model>/reports/<run id>/<version>-<stage>-<start>.html`` (``kfrelease.monitoring.passes``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from kfrelease.errors import KfreleaseError
from kfrelease.monitoring.keys import key as monitoring_key
from kfrelease.monitoring.keys import safe
from kfrelease.registry import EXPERIMENTS, ModelRegistry

METRICS = ("mse", "rmse", "mae", "r2")
EVALUATION_REPORT = "evaluation.html"
#: where the release controller writes a candidate's shadow-gate report (``REPORT_PREFIX`` there)
SHADOW_PREFIX = "reports"
DRIFT_BUCKET = "pipeline-root"


# the spec of a version ---------------------------------------------------------------------------------
def version_spec(entry: dict) -> dict:
    """The model definition a version was trained from: estimator class and parameters or build function and
    its code, features, target, split, thresholds, and the spec text as committed (``{}`` when not recorded)."""
    recorded = entry.get("spec") or {}
    text = recorded.get("text") or ""
    if not text:
        return {}
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        doc = {}
    estimator = doc.get("estimator") or {}
    build = doc.get("build")
    code = recorded.get("code") or {}
    return {
        "estimator": estimator.get("class") if isinstance(estimator, dict) else None,
        "params": (estimator.get("params") or {}) if isinstance(estimator, dict) else {},
        "build": build,
        "build_code": code.get(str(build).partition(":")[0]) if build else None,
        "features": list(doc.get("features") or []),
        "target": doc.get("target"),
        "split": doc.get("split") or {},
        "validation": doc.get("validation") or {},
        "text": text,
    }


def show_version(mv) -> dict:
    """A version for people: its entry (lineage, metrics, verdict, image) with the spec parsed out."""
    entry = {k: v for k, v in mv.entry.items() if k != "spec"}
    return {**entry, "stage": mv.stage, "spec": version_spec(mv.entry)}


# two versions side by side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    what: str
    a: object
    b: object


@dataclass(frozen=True)
class VersionDiff:
    a: str  # "<model> <version>"
    b: str
    changes: list[Change]  # spec, data and lineage fields that differ
    metrics: list[tuple[str, float | None, float | None, float | None]]  # (metric, a, b, b - a)
    code_diff: str  # unified diff of the spec text and build code ("" when identical)

    def as_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "changes": [c.__dict__ for c in self.changes],
            "metrics": [{"metric": m, "a": a, "b": b, "delta": d} for m, a, b, d in self.metrics],
            "code_diff": self.code_diff,
        }


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def _compared(mv, spec: dict) -> dict:
    """What ``diff_versions`` compares of one version: its definition (flattened), data, lineage, verdict, stage."""
    return {
        **_flat("", {k: v for k, v in spec.items() if k not in ("text", "build_code")}),
        **{k: mv.entry.get(k) for k in ("dataset", "dataset_version", "commit", "spec_fingerprint")},
        "verdict": "passed" if mv.passed else "rejected",
        "stage": mv.stage,
    }


def _code(spec: dict) -> str:
    """The spec's text and its build code, as the code diff shows them."""
    return (spec.get("text") or "") + (f"\n# {spec['build']}\n{spec['build_code']}" if spec.get("build_code") else "")


def diff_versions(a, b) -> VersionDiff:
    """Compare two registry versions (``ModelVersion``): definition, data version, lineage, metrics, code."""
    sa, sb = version_spec(a.entry), version_spec(b.entry)
    fields_a, fields_b = _compared(a, sa), _compared(b, sb)
    changes = [
        Change(k, fields_a.get(k), fields_b.get(k))
        for k in sorted(set(fields_a) | set(fields_b))
        if fields_a.get(k) != fields_b.get(k)
    ]
    metrics = []
    for m in METRICS:
        va, vb = (a.entry.get("metrics") or {}).get(m), (b.entry.get("metrics") or {}).get(m)
        metrics.append((m, va, vb, vb - va if va is not None and vb is not None else None))
    name_a, name_b = f"{a.entry['name']} {a.entry['version']}", f"{b.entry['name']} {b.entry['version']}"
    code_diff = "".join(difflib.unified_diff(_code(sa).splitlines(True), _code(sb).splitlines(True), name_a, name_b))
    return VersionDiff(name_a, name_b, changes, metrics, code_diff)


# reports -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    kind: str  # evaluation | shadow-gate | drift
    bucket: str
    key: str

    @property
    def file_name(self) -> str:
        if self.kind == "drift":  # .../<run id>/<version>-<stage>-<start>.html
            run_id, name = self.key.split("/")[-2:]
            return f"drift-{run_id}-{name}"
        return Path(self.key).name


def evaluation_report_key(artifact_prefix: str) -> str:
    return artifact_prefix + EVALUATION_REPORT


def find_reports(store, registry, model: str, version: str) -> list[Report]:
    """Every report of a version that exists: evaluation, shadow gate, drift (oldest monitoring run first)."""
    registry.get(model, version)  # an unknown version: NotFound naming the known ones
    out = []
    evaluation = evaluation_report_key(registry.artifact_prefix(model, version))
    if store.stat(registry.bucket, evaluation) is not None:
        out.append(Report("evaluation", registry.bucket, evaluation))
    shadow = f"{SHADOW_PREFIX}/{model}/{version}/shadow-gate.html"
    if store.stat("models", shadow) is not None:
        out.append(Report("shadow-gate", "models", shadow))
    try:
        drift = [
            o.key
            for o in store.iter(DRIFT_BUCKET, monitoring_key(model, "reports", prefix=True))
            if o.key.rsplit("/", 1)[-1].startswith(f"{safe(version)}-")
        ]
    except KfreleaseError:  # a role without access to the monitoring results: no drift reports to show
        drift = []
    out.extend(Report("drift", DRIFT_BUCKET, k) for k in sorted(drift))
    return out


def fetch_reports(store, reports: list[Report], out_dir: str | Path) -> list[Path]:
    """Write each report into ``out_dir`` as an ``.html`` file; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in reports:
        path = out / r.file_name
        path.write_bytes(store.get_bytes(r.bucket, r.key))
        written.append(path)
    return written


# a run's result ----------------------------------------------------------------------------------------
def run_result(record, registry=None) -> dict:
    """What a finished training run produced: version, metrics, verdict and reasons, stage, report URIs.
    Reads the registry entry when the run registered a version (``{}`` before that)."""
    version = record.state.get("version")
    model = record.record.get("model")
    if not version or not model or registry is None:
        return {}
    try:
        mv = registry.get(model, version)
    except KfreleaseError:
        return {"version": version}
    reports = [
        f"{r.kind}: {registry.store.uri(r.bucket, r.key)}"
        for r in find_reports(registry.store, registry, model, version)
    ]
    return {
        "model": model,
        "version": version,
        "stage": mv.stage,
        "metrics": {m: mv.entry.get("metrics", {}).get(m) for m in METRICS},
        "n": (mv.entry.get("metrics") or {}).get("n"),
        "verdict": "passed" if mv.passed else "rejected",
        "reasons": list((mv.entry.get("verdict") or {}).get("reasons") or []),
        "reports": reports,
    }


def result_lines(result: dict) -> list[str]:
    """The run's result as a few lines for a terminal (metrics, verdict, where the reports are)."""
    if not result.get("metrics"):
        return []
    metrics = "  ".join(f"{m} {v:.4g}" for m, v in result["metrics"].items() if v is not None)
    lines = [
        f"metrics ({result.get('n') or '?'} held-out rows): {metrics}",
        f"verdict: {result['verdict']}"
        + (f" ({'; '.join(result['reasons'])})" if result["reasons"] else "")
        + (f", stage {result['stage']}" if result.get("stage") else ""),
    ]
    lines += [f"report {r}" for r in result["reports"]] or ["reports: none stored"]
    return lines


# naming a version --------------------------------------------------------------------------------------
def resolve_version(store, model: str, ref: str):
    """The ``ModelVersion`` a person names: ``V1.2.0`` (registry), ``production``/``staging`` (its current
    version in that stage), ``E1.1.0`` or ``experiment:E1.1.0`` (a version in the experiments space; entries
    written before experiments had their own numbers are ``experiment:V1.1.0``)."""
    space, _, version = ref.strip().rpartition(":")
    if space not in ("", "experiment", "experiments"):
        raise KfreleaseError(f"{ref!r} names no version; use V1.2.0, production, staging, E1.1.0 or experiment:E1.1.0")
    experiment = bool(space) or version.startswith("E")
    reg = ModelRegistry(store, EXPERIMENTS if experiment else "registry")
    if not experiment and version in ("production", "staging"):
        mv = reg.current(model, version)
        if mv is None:
            raise KfreleaseError(f"model {model!r} has no {version} version; name one: V1.2.0")
        return mv
    return reg.get(model, version)


# what a stage event decided ------------------------------------------------------------------------------
def paired_test(evidence: dict) -> dict | None:
    """The paired accuracy test behind a shadow or canary event: ``{decision, ratio, low, high, n}`` (the
    candidate's loss ratio to production's with its confidence sequence), None when the event has none. A
    canary step's test is its accuracy check; its ``decision`` is that check's status (passed, failed, held,
    skipped), which is not what the step decided (``decision_label``)."""
    test = evidence.get("test")
    if test is None:
        check = next((c for c in evidence.get("checks") or [] if c.get("interval") is not None), None)
        if check is not None:
            test = {
                "decision": check.get("status"),
                "ratio": check.get("value"),
                "ratio_interval": check.get("interval"),
            }
            test["n"] = check.get("n")
    if not test or test.get("ratio_interval") is None:
        return None
    lo, hi = test["ratio_interval"]
    return {"decision": test.get("decision"), "ratio": test.get("ratio"), "low": lo, "high": hi, "n": test.get("n")}


def decision_label(event: dict) -> str:
    """What a stage event decided, in the words a person reads in a decisions column: ``promoted``, ``rolled
    back``, ``rejected by the shadow gate``, ``canary 25%: advance``, ``staged``... (never the status of one
    check inside it: a rollback whose accuracy check was skipped is ``rolled back``)."""
    evidence = event.get("evidence") or {}
    phase, action, stage = evidence.get("phase"), evidence.get("action"), event.get("stage")
    if phase == "rollback" or action == "rollback":
        return "rolled back"
    if phase == "promote" or action == "promote":
        return "promoted"
    if phase == "canary":
        return f"canary {evidence.get('weight', '?')}%: {action or 'measured'}"
    if phase == "provisional":  # a first model serving all traffic before its live evidence decides
        return "serving as provisional" if action == "provisional" else f"provisional: {action or 'measured'}"
    if phase == "shadow":
        decision = evidence.get("decision") or (evidence.get("test") or {}).get("decision")
        if stage == "rejected":
            return "rejected by the shadow gate"
        return {
            "pass": "passed the shadow gate",
            "fail": "failed the shadow gate",
        }.get(decision, "stopped by the shadow gate: not enough evidence")
    if phase == "plan":
        return "planned"
    if stage == "rejected":
        return "rejected by validation" if "verdict" in evidence else "rejected"
    return {"staging": "staged", "production": "promoted", "archived": "archived"}.get(stage, stage or "")


def standing(mv, events: list[dict]) -> dict:
    """Where a version stands, one statement for a page's header and its verdict cell alike:
    ``{"stage", "validation", "headline"}``, e.g. stage ``rejected``, validation ``passed``, headline
    ``passed validation; rejected by the shadow gate``."""
    validation = "passed" if mv.passed else "rejected"
    last = events[-1] if events else None
    if not mv.passed:
        reasons = (mv.entry.get("verdict") or {}).get("reasons") or []
        headline = "rejected by validation" + (f": {'; '.join(reasons)}" if reasons else "")
    elif last is None:
        headline = "passed validation; not staged"
    else:
        label = decision_label(last)
        headline = (
            "passed validation" if label in ("staged", "rejected by validation") else f"passed validation; {label}"
        )
        if label == "staged":
            headline += "; in staging"
    return {"stage": mv.stage or "-", "validation": validation, "headline": headline}
