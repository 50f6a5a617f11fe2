"""The validation verdict (like TFX's Evaluator "blessing"): explicit, recorded, with every reason.

Checks, in order:
1. absolute thresholds of the spec (``max_mse``, ``max_rmse``, ``max_mae``, ``min_r2``) on the held-out split;
2. no worse than the production model (the champion) **on the same test rows**: the champion is loaded
   from the registry and scored on the new split; the candidate fails when its RMSE exceeds the
   champion's by more than ``tolerance`` (relative). The first model of a tag has no champion; a champion
   whose inputs the new data lacks (another tag) is reported as not comparable;
3. input drift between the new training data and the champion's training data (``kfrelease.drift``),
   reported; it fails the verdict only when the spec sets ``max_drift_share``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import pandas as pd

from kfrelease.metrics import regression_metrics
from kfrelease.training.core import predict
from kfrelease.training.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed (empty when it passed)
    checks: list[dict] = field(default_factory=list)  # every check: {name, passed, value, limit, detail}
    champion: dict | None = None  # {version, metrics} on the same test rows
    drift: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Champion:
    version: str
    model: object
    features: list[str]
    train_frame: pd.DataFrame | None = None  # the champion's training data (for drift), when available


def threshold_checks(spec: ModelSpec, metrics: dict) -> list[dict]:
    checks = []
    for key, limit in spec.thresholds().items():
        metric = key.split("_", 1)[1]
        value = metrics.get(metric)
        if key.startswith("max_"):
            ok = value is not None and value <= limit
            detail = (
                f"{metric} {value:.4g} {'<=' if ok else '>'} {limit:g}" if value is not None else f"{metric} undefined"
            )
        else:
            ok = value is not None and value >= limit
            detail = (
                f"{metric} {value:.4g} {'>=' if ok else '<'} {limit:g}" if value is not None else f"{metric} undefined"
            )
        checks.append({"name": f"threshold:{key}", "passed": ok, "value": value, "limit": limit, "detail": detail})
    return checks


def champion_check(
    spec: ModelSpec, metrics: dict, test: pd.DataFrame, champion: Champion | None
) -> tuple[dict, dict | None]:
    if champion is None:
        return {"name": "champion", "passed": True, "detail": "no production model yet: nothing to compare"}, None
    missing = [c for c in champion.features if c not in test.columns]
    if missing:
        return {
            "name": "champion",
            "passed": True,
            "detail": f"production {champion.version} needs inputs {missing} the new test data lacks: not comparable",
        }, None
    champ = regression_metrics(test[spec.target], predict(champion.model, test, champion.features))
    limit = champ["rmse"] * (1.0 + spec.tolerance())
    ok = metrics["rmse"] <= limit
    detail = (
        f"rmse {metrics['rmse']:.4g} {'<=' if ok else '>'} production {champion.version} rmse "
        f"{champ['rmse']:.4g} x {1 + spec.tolerance():g} on the same {len(test)} test rows"
    )
    return (
        {"name": "champion", "passed": ok, "value": metrics["rmse"], "limit": limit, "detail": detail},
        {"version": champion.version, "metrics": champ},
    )


def drift_check(spec: ModelSpec, train: pd.DataFrame, champion: Champion | None) -> tuple[dict, dict | None]:
    if champion is None or champion.train_frame is None:
        return {"name": "drift", "passed": True, "detail": "no production training data to compare with"}, None
    columns = [c for c in spec.features if c in champion.train_frame.columns]
    try:
        from kfrelease.drift import (
            data_drift,  # monitoring part; optional at import time
        )
    except ImportError:
        return {"name": "drift", "passed": True, "detail": "drift check unavailable (kfrelease.drift missing)"}, {
            "available": False
        }
    if not columns:
        return {
            "name": "drift",
            "passed": True,
            "detail": f"production {champion.version} shares no input column with this model: no drift check",
        }, None
    try:
        result = data_drift(champion.train_frame, train, columns).as_dict()
    except Exception as exc:  # noqa: BLE001 - drift is a report; its failure is recorded, not fatal
        log.warning("drift check failed: %s", exc)
        return {"name": "drift", "passed": True, "detail": f"drift check failed: {exc}"}, {"available": False}
    result["available"] = True
    limit = spec.validation.max_drift_share
    ok = limit is None or result["share_drifted"] <= float(limit)
    detail = (
        f"{len(result['drifted'])}/{len(columns)} input columns drifted against production {champion.version}'s "
        f"training data"
        + (f" (share {result['share_drifted']:.2f}, limit {limit})" if limit is not None else " (reported only)")
    )
    return {"name": "drift", "passed": ok, "value": result["share_drifted"], "limit": limit, "detail": detail}, result


def validate(
    spec: ModelSpec, metrics: dict, test: pd.DataFrame, train: pd.DataFrame, champion: Champion | None
) -> Verdict:
    """The verdict on a candidate whose held-out ``metrics`` were computed on ``test``."""
    checks = threshold_checks(spec, metrics)
    champ_check, champ_info = champion_check(spec, metrics, test, champion)
    checks.append(champ_check)
    drift_chk, drift_info = drift_check(spec, train, champion)
    checks.append(drift_chk)
    reasons = [c["detail"] for c in checks if not c["passed"]]
    verdict = Verdict(not reasons, reasons, checks, champ_info, drift_info)
    log.info("verdict: %s %s", "PASS" if verdict.passed else "FAIL", reasons)
    return verdict


def load_champion(registry, store, spec: ModelSpec) -> Champion | None:
    """The production model of the spec's model name, with its training data when it can be read."""
    from kfrelease.data.publish import load_dataset
    from kfrelease.training.core import split

    mv = registry.current(spec.name, "production")
    if mv is None:
        return None
    model = registry.load_model(spec.name, mv.version)
    train_frame = None
    try:
        features = mv.features
        df, _ = load_dataset(store, mv.dataset, mv.dataset_version, columns=[*features, mv.target])
        if all(c in df.columns for c in (*features, mv.target)):
            champ_spec = spec.with_changes(
                tag=mv.tag, dataset=mv.dataset, features=features, target=mv.target, split=mv.entry.get("split", {})
            )
            train_frame = split(champ_spec, df)[0]
    except Exception as exc:  # noqa: BLE001 - drift is a report; a missing dataset must not block validation
        log.warning("production %s training data unavailable for the drift report: %s", mv.version, exc)
    return Champion(mv.version, model, mv.features, train_frame)
