"""The shadow accuracy gate: the staging candidate against production on the *same* live requests.

The gateway mirrors production requests to the staging candidate with the same request id; both model
servers log their answers (read back by ``kfrelease.lake``) and ground truth arrives later through the feedback
service (``kfrelease.collectors.feedback``). ``join_shadow`` pairs, per (request id, instance), the
production answer, the candidate's answer, the truth and the request's features; ``shadow_verdict`` decides
on exactly those rows with the checks of ``kfrelease.release.decision`` (the spec's ``shadow`` section:
margin, error rate, loss, clip, the tail check's ``min_exposure``, declared ``slices`` and the worst-slice
search, ``min_labelled_samples``, ``max_samples``):

- ``continue``: the evidence does not decide yet (or fewer than ``min_labelled_samples`` pairs: the gate
  does not even look);
- ``pass``: the candidate's loss is shown to be at most ``1 + margin`` times production's and its rate of
  gross errors below production's plus ``min_exposure``, with no check failed first;
- ``fail``: the candidate is shown to be worse (accuracy), to make more gross errors (tail), or to be worse
  by more than ``slice_margin`` in a slice; the decision names the check and the slice;
- ``insufficient``: still undecided at ``max_samples`` or ``max_wait_seconds`` (production unchanged).

MSE, RMSE, MAE and R² of both (``kfrelease.quality.metrics.regression_metrics``) and their RMSE ratio are reported
beside the decision, never decided on. ``evaluate_shadow`` reads the logs and labels of a window from the
object store and, when asked, renders Evidently's regression report of both models on the joined rows
(``kfrelease.quality.evaluation.regression_report``).
"""

from __future__ import annotations

import html as html_lib
import logging
from dataclasses import dataclass, field

import pandas as pd

from kfrelease import lake
from kfrelease.lake import PAIR_COLUMNS
from kfrelease.quality.evaluation import regression_report
from kfrelease.quality.metrics import regression_metrics
from kfrelease.release.decision import CheckOutcome, PairSequence, decide, interval_text
from kfrelease.rollout.spec import GateRule

log = logging.getLogger(__name__)


@dataclass
class ShadowVerdict:
    decision: str  # pass | fail | continue | insufficient
    reasons: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    html: str | None = None  # Evidently report of both models on the joined requests (when rendered)

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    @property
    def decided(self) -> bool:
        """No more polling: pass, fail or insufficient evidence."""
        return self.decision != "continue"

    def as_dict(self) -> dict:
        """Flat: the decision and reasons beside the numbers (what the registry event's evidence holds)."""
        return {"decision": self.decision, "reasons": list(self.reasons), **self.evidence}

    def summary(self) -> str:
        e = self.evidence
        test = e.get("test") or {}
        if "candidate" not in e or not test.get("ratio_interval"):
            return f"shadow gate {self.decision}: {'; '.join(self.reasons)}"
        lo, hi = test["ratio_interval"]
        what = "MSE" if test["loss"] == "squared" else "MAE"
        by = f" (decided by {test['check']} on {test['slice']})" if test.get("check") else ""
        others = "".join(
            f"; {CheckOutcome.from_dict(c).describe()}" for c in test.get("checks") or [] if c["check"] != "accuracy"
        )
        return (
            f"shadow gate {self.decision}{by}: candidate {e['candidate_version']} vs production "
            f"{e['production_version']} on the same n={test['n']} labelled requests: {what} ratio "
            f"{test['ratio']:.3f} {interval_text(lo, hi)} ({100 * (1 - 2 * test['error_rate']):g}% "
            f"confidence sequence; pass below {1 + test['margin']:g}, fail above "
            f"{1 + (test['margin'] if e.get('fail_above') == 'margin' else 0):g}); rmse "
            f"{e['candidate']['rmse']:.3f} vs {e['production']['rmse']:.3f} (ratio {e['rmse_ratio']:.3f}, "
            f"reported only), mae {e['candidate']['mae']:.3f} vs {e['production']['mae']:.3f}{others}"
        )


def latest_truth(feedback: pd.DataFrame) -> pd.DataFrame:
    """One truth per (request id, instance): the lake's one "latest label wins" rule."""
    return lake.latest_truth(feedback)[["request_id", "instance", "truth"]]


def join_shadow(predictions: pd.DataFrame, feedback: pd.DataFrame, candidate: str, production: str) -> pd.DataFrame:
    """Rows ``request_id, instance, truth, candidate, production``: requests answered by both versions
    (the candidate as the staging shadow, production as the primary) and labelled (``kfrelease.lake``)."""
    return lake.shadow_pairs(predictions, feedback, candidate, production)


def shadow_verdict(
    pairs: pd.DataFrame,
    candidate: str,
    production: str,
    rule: GateRule,
    scale: float | None = None,
    window: dict | None = None,
    *,
    categories: dict[str, tuple[str, ...]] | None = None,
    at_limit: bool = False,
) -> ShadowVerdict:
    """The gate's decision on joined rows in arrival order (see the module docstring). ``scale``:
    production's reference (held-out) RMSE, which fixes the clip before the first pair; ``categories``: the
    declared values of the candidate's categorical features, each a slice (``decision.decide``)."""
    n = len(pairs)
    features = [col for col in pairs.columns if col not in PAIR_COLUMNS]
    test = decide(
        pairs["truth"] if n else [],
        pairs["candidate"] if n else [],
        pairs["production"] if n else [],
        rule,
        scale,
        features=pairs[features] if n and features else None,
        categories=categories,
        at_limit=at_limit,
    )
    evidence = {
        "candidate_version": candidate,
        "production_version": production,
        "n": n,
        "min_labelled_samples": rule.min_labelled_samples,
        "margin": rule.margin,
        "error_rate": rule.error_rate,
        "fail_above": rule.fail_above,
        "reference_rmse": scale,
        "test": test.as_dict(),
        "window": window or {},
    }
    if test.ratio_interval is not None:
        cand = regression_metrics(pairs["truth"], pairs["candidate"])
        prod = regression_metrics(pairs["truth"], pairs["production"])
        ratio = cand["rmse"] / prod["rmse"] if prod["rmse"] > 0 else (1.0 if cand["rmse"] == 0 else float("inf"))
        evidence.update(candidate=cand, production=prod, rmse_ratio=ratio)
    reasons = [] if test.decision == "pass" else [test.reason]
    return ShadowVerdict(test.decision, reasons, evidence)


def shadow_report_html(pairs: pd.DataFrame, verdict: ShadowVerdict) -> str:
    """Evidently's regression report of the candidate and of production on the same requests, in one page."""
    features = [c for c in pairs.columns if c not in PAIR_COLUMNS]
    parts = []
    for who in ("candidate", "production"):
        version = verdict.evidence[f"{who}_version"]
        _, page = regression_report(pairs, "truth", who, features)
        parts.append((f"{who} {version}", page))
    head = html_lib.escape(verdict.summary())
    frames = "".join(
        f"<h2>{html_lib.escape(title)}</h2><iframe style='width:100%;height:1400px;border:0' "
        f'srcdoc="{html_lib.escape(page, quote=True)}"></iframe>'
        for title, page in parts
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>kfrelease shadow gate</title></head>"
        f"<body><h1>Shadow gate: {html_lib.escape(verdict.decision)}</h1><p>{head}</p>{frames}</body></html>"
    )


def evaluate_shadow(
    store,
    model: str,
    candidate: str,
    production: str,
    since,
    until=None,
    *,
    rule: GateRule,
    declared,
    scale: float | None = None,
    order: PairSequence | None = None,
    categories: dict[str, tuple[str, ...]] | None = None,
    at_limit: bool = False,
    report: bool = False,
) -> ShadowVerdict:
    """Read the prediction logs and ground truth of ``[since, until)`` and decide (see ``shadow_verdict``);
    ``declared`` (``kfrelease.collectors.feedback.LabelSources.declares``): the label sources whose labels count,
    no other; ``order`` keeps the pairs' arrival order across the polls of one gate."""
    predictions = lake.read_predictions(store, model, since=since, until=until)
    feedback = lake.read_labels(store, model, since=since, declared=declared)
    pairs = join_shadow(predictions, feedback, candidate, production)
    if order is not None:
        pairs = order.extend(pairs)
    window = {
        "since": pd.Timestamp(since).isoformat(),
        "until": pd.Timestamp(until).isoformat() if until else None,
    }
    verdict = shadow_verdict(
        pairs, candidate, production, rule, scale, window, categories=categories, at_limit=at_limit
    )
    if report and verdict.decided and "candidate" in verdict.evidence:
        try:
            verdict.html = shadow_report_html(pairs, verdict)
        except Exception as exc:  # noqa: BLE001 - the report is a picture of the evidence; the verdict stands
            log.warning("Evidently report of the shadow gate failed: %s", exc)
    return verdict
