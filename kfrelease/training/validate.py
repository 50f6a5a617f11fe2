"""Validation: the explicit, recorded verdict on a candidate model (TFX Evaluator style "blessing").

The verdict is decided on the evidence the trusted ``evaluate`` step computed (``kfrelease.training.evidence``:
the untrusted steps only predict, label-blind), never on numbers a step running model code reported:

1. absolute thresholds of the spec (``max_mse``, ``max_rmse``, ``max_mae``, ``min_r2``) on every held-out row,
   each shown with its confidence interval;
2. no worse than the production model (the champion) **beyond noise**, on the held-out rows neither model
   trained on: the release gates' paired test (``kfrelease.release.decision``) with the rollout spec's margin,
   error rate and slices; the candidate fails only when the test decides ``fail`` (worse beyond noise), and the
   check shows the interval and how many rows it rests on. The first model of a tag has no champion; a
   champion whose inputs the data lacks (another tag) is reported as not comparable;
3. TFX's rule: a spec with no absolute threshold and no comparable champion is **not blessed** (nothing says
   what good enough is);
4. input drift between the candidate's training rows and the champion's (``kfrelease.quality.drift``), reported; it
   fails the verdict only when the spec sets ``max_drift_share``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import pandas as pd

from kfrelease.data.publish import get_version, load_dataset
from kfrelease.quality.drift import data_drift
from kfrelease.training.core import text_features, typed
from kfrelease.training.evidence import champion_rule
from kfrelease.training.spec import THRESHOLD_KEYS, ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when it passed)
    checks: list[dict] = field(default_factory=list)  # every check: {name, passed, value, limit, detail}
    champion: dict | None = None  # {version, rows, excluded, metrics, candidate_metrics, test} on the same rows
    drift: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _interval(metrics: dict, metric: str) -> str:
    bounds = ((metrics.get("intervals") or {}).get(metric)) or None
    return f" [{bounds[0]:.4g}, {bounds[1]:.4g}]" if bounds else ""


def threshold_checks(spec: ModelSpec, metrics: dict) -> list[dict]:
    checks = []
    for key, limit in spec.thresholds().items():
        metric = key.split("_", 1)[1]
        value = metrics.get(metric)
        ok = value is not None and (value <= limit if key.startswith("max_") else value >= limit)
        sign = ("<=" if ok else ">") if key.startswith("max_") else (">=" if ok else "<")
        detail = (
            f"{metric} {value:.4g}{_interval(metrics, metric)} {sign} {limit:g} on {metrics.get('n')} held-out rows"
            if value is not None
            else f"{metric} undefined"
        )
        checks.append({"name": f"threshold:{key}", "passed": ok, "value": value, "limit": limit, "detail": detail})
    return checks


def champion_check(champion: dict | None) -> dict:
    if champion is None:
        return {"name": "champion", "passed": True, "comparable": False, "detail": "no production model yet"}
    if not champion.get("comparable"):
        return {"name": "champion", "passed": True, "comparable": False, "detail": champion["detail"]}
    test = champion["test"]
    return {
        "name": "champion",
        "passed": test["decision"] != "fail",
        "comparable": True,
        "decision": test["decision"],
        "value": test.get("ratio"),
        "interval": test.get("ratio_interval"),
        "n": test.get("n"),
        "detail": champion["detail"],
    }


def blessing_check(spec: ModelSpec, champ: dict) -> dict:
    """TFX's rule: with no absolute threshold and no comparable champion nothing says what is good enough."""
    ok = bool(spec.thresholds()) or champ.get("comparable", False)
    detail = (
        "absolute thresholds or a comparable production model to judge against"
        if ok
        else "not blessed: the spec sets no absolute threshold and there is no comparable production model "
        f"({champ['detail']}); set at least one of validation.{', validation.'.join(THRESHOLD_KEYS)} in model.yaml"
    )
    return {"name": "blessing", "passed": ok, "detail": detail}


def drift_check(spec: ModelSpec, drift: dict | None, champion_version: str | None) -> dict:
    if not drift or not drift.get("available"):
        detail = (drift or {}).get("detail") or "no production training data to compare with"
        return {"name": "drift", "passed": True, "detail": detail}
    limit = spec.validation.max_drift_share
    ok = limit is None or drift["share_drifted"] <= float(limit)
    detail = (
        f"{len(drift['drifted'])}/{len(drift['columns'])} input columns drifted against production "
        f"{champion_version}'s training data"
        + (f" (share {drift['share_drifted']:.2f}, limit {limit})" if limit is not None else " (reported only)")
    )
    return {"name": "drift", "passed": ok, "value": drift["share_drifted"], "limit": limit, "detail": detail}


def verdict(spec: ModelSpec, evidence: dict) -> Verdict:
    """The verdict on a candidate from the trusted evidence (``kfrelease.training.steps.evaluate_step``)."""
    if evidence.get("invalid"):
        reason = f"the candidate's held-out predictions were refused: {evidence['invalid']}"
        return Verdict(False, [reason], [{"name": "predictions", "passed": False, "detail": reason}])
    metrics = evidence.get("metrics") or {}
    champ = champion_check(evidence.get("champion"))
    checks = [*threshold_checks(spec, metrics), champ, blessing_check(spec, champ)]
    champion_version = (evidence.get("champion") or {}).get("version")
    checks.append(drift_check(spec, evidence.get("drift"), champion_version))
    reasons = [c["detail"] for c in checks if not c["passed"]]
    result = Verdict(not reasons, reasons, checks, evidence.get("champion"), evidence.get("drift"))
    log.info("verdict: %s %s", "PASS" if result.passed else "FAIL", reasons)
    return result


def drift_evidence(
    spec: ModelSpec, train: pd.DataFrame, champion_train: pd.DataFrame | None, champion_version: str
) -> dict:
    """Drift of the candidate's training rows against production's (``available: False`` with why when not)."""
    if champion_train is None:
        return {"available": False, "detail": f"production {champion_version}'s training data is unavailable"}
    columns = [c for c in spec.features if c in champion_train.columns]
    if not columns:
        return {
            "available": False,
            "detail": f"production {champion_version} shares no input column with this model: no drift check",
        }
    try:
        text = [c for c in text_features(spec, train) if c in columns]  # category values: drift on frequencies
        result = data_drift(champion_train, train, columns, categorical=text).as_dict()
    except Exception as exc:  # noqa: BLE001 - drift is a report; its failure is recorded, not fatal
        log.warning("drift check failed: %s", exc)
        return {"available": False, "detail": f"drift check failed: {exc}"}
    return {**result, "available": True}


def champion_training_rows(store, entry: dict) -> pd.DataFrame | None:
    """Production's training rows (its inputs and target), rebuilt from its dataset version and split rule."""
    rule = champion_rule(entry)
    try:
        manifest = get_version(store, entry["dataset"], entry["dataset_version"]).manifest
        id_column = rule.id_column if rule.id_column in {c["name"] for c in manifest["columns"]} else None
        columns = [*([id_column] if id_column else []), *rule.columns]
        df, _ = load_dataset(store, entry["dataset"], entry["dataset_version"], columns=columns)
        frame = typed(df, list(rule.columns))
        if id_column:
            frame.insert(0, id_column, df[id_column].to_numpy())
        return frame[rule.trained_on(frame, frame)].reset_index(drop=True)
    except Exception as exc:  # noqa: BLE001 - drift is a report; a missing dataset must not block validation
        log.warning("production %s training data unavailable for the drift report: %s", entry.get("version"), exc)
        return None
