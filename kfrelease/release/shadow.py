"""The shadow accuracy gate: the staging candidate against production on the *same* live requests.

The gateway mirrors production requests to the staging candidate with the same request id; both model
servers log their answers (``kfrelease.serving.logs``) and ground truth arrives later through the feedback
service (``kfrelease.serving.feedback``). ``join_shadow`` pairs, per (request id, instance), the
production answer, the candidate's answer and the truth; ``shadow_verdict`` computes MSE, RMSE, MAE and R²
of both on exactly those rows (``kfrelease.metrics.regression_metrics``) and decides:

- ``wait``: fewer labelled pairs than ``shadow.min_labelled_samples`` (no verdict on too little evidence);
- ``pass``: candidate RMSE <= production RMSE x ``shadow.max_rmse_ratio``;
- ``fail``: otherwise.

``evaluate_shadow`` reads the logs and labels of a window from the object store and, when asked, renders
Evidently's regression report of both models on the joined rows (``kfrelease.evaluation.regression_report``).
"""

from __future__ import annotations

import html as html_lib
import logging
from dataclasses import dataclass, field

import pandas as pd

from kfrelease.metrics import regression_metrics
from kfrelease.serving.logs import BASE_COLUMNS

log = logging.getLogger(__name__)

PAIR_COLUMNS = ["request_id", "instance", "truth", "candidate", "production"]


@dataclass
class ShadowVerdict:
    decision: str  # pass | fail | wait
    reasons: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    html: str | None = (
        None  # Evidently report of both models on the joined requests (when rendered)
    )

    @property
    def passed(self) -> bool:
        return self.decision == "pass"

    def as_dict(self) -> dict:
        """Flat: the decision and reasons beside the numbers (what the registry event's evidence holds)."""
        return {"decision": self.decision, "reasons": list(self.reasons), **self.evidence}

    def summary(self) -> str:
        e = self.evidence
        if "candidate" not in e:
            return f"shadow gate {self.decision}: {'; '.join(self.reasons)}"
        return (
            f"shadow gate {self.decision}: candidate {e['candidate_version']} rmse {e['candidate']['rmse']:.3f} vs "
            f"production {e['production_version']} rmse {e['production']['rmse']:.3f} (ratio {e['rmse_ratio']:.3f}, "
            f"limit {e['max_rmse_ratio']:g}) on the same {e['n']} labelled requests; "
            f"mae {e['candidate']['mae']:.3f} vs {e['production']['mae']:.3f}"
        )


def latest_truth(feedback: pd.DataFrame) -> pd.DataFrame:
    """One truth per (request id, instance): the latest label wins."""
    if feedback.empty:
        return pd.DataFrame(columns=["request_id", "instance", "truth"])
    f = feedback.sort_values("time", kind="stable").drop_duplicates(
        ["request_id", "instance"], keep="last"
    )
    return f[["request_id", "instance", "truth"]]


def join_shadow(
    predictions: pd.DataFrame, feedback: pd.DataFrame, candidate: str, production: str
) -> pd.DataFrame:
    """Rows ``request_id, instance, truth, candidate, production``: requests answered by both versions
    (the candidate as the staging shadow, production as the primary) and labelled."""
    if predictions.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    keys = ["request_id", "instance"]
    cand = predictions[
        (predictions["model_version"] == candidate)
        & (predictions["stage"] == "staging")
    ]
    prod = predictions[
        (predictions["model_version"] == production)
        & (predictions["stage"] != "staging")
    ]
    cand = cand.drop_duplicates(keys)[[*keys, "prediction"]].rename(
        columns={"prediction": "candidate"}
    )
    prod = prod.drop_duplicates(keys)
    features = [c for c in prod.columns if c not in (*BASE_COLUMNS, "prediction")]
    prod = prod[[*keys, *features, "prediction"]].rename(
        columns={"prediction": "production"}
    )
    pairs = cand.merge(prod, on=keys).merge(latest_truth(feedback), on=keys)
    pairs = pairs.dropna(subset=["truth", "candidate", "production"])
    return pairs[[*PAIR_COLUMNS, *features]].reset_index(drop=True)


def shadow_verdict(
    pairs: pd.DataFrame,
    candidate: str,
    production: str,
    min_samples: int,
    max_rmse_ratio: float,
    window: dict | None = None,
) -> ShadowVerdict:
    """The gate's decision on joined rows (see the module docstring)."""
    n = len(pairs)
    evidence = {
        "candidate_version": candidate,
        "production_version": production,
        "n": n,
        "min_labelled_samples": min_samples,
        "max_rmse_ratio": max_rmse_ratio,
        "window": window or {},
    }
    if n < min_samples:
        return ShadowVerdict(
            "wait",
            [f"{n} labelled shadow requests so far; {min_samples} are needed"],
            evidence,
        )
    cand = regression_metrics(
        pairs["truth"], pairs["candidate"], min_samples=min_samples
    )
    prod = regression_metrics(
        pairs["truth"], pairs["production"], min_samples=min_samples
    )
    ratio = (
        cand["rmse"] / prod["rmse"]
        if prod["rmse"] > 0
        else (1.0 if cand["rmse"] == 0 else float("inf"))
    )
    evidence.update(candidate=cand, production=prod, rmse_ratio=ratio)
    if ratio <= max_rmse_ratio:
        return ShadowVerdict("pass", [], evidence)
    reason = (
        f"candidate {candidate} rmse {cand['rmse']:.3f} > production {production} rmse {prod['rmse']:.3f} "
        f"x {max_rmse_ratio:g} on the same {n} labelled requests"
    )
    return ShadowVerdict("fail", [reason], evidence)


def shadow_report_html(pairs: pd.DataFrame, verdict: ShadowVerdict) -> str:
    """Evidently's regression report of the candidate and of production on the same requests, in one page."""
    from kfrelease.evaluation import regression_report

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
    min_samples: int,
    max_rmse_ratio: float,
    report: bool = False,
) -> ShadowVerdict:
    """Read the prediction logs and ground truth of ``[since, until)`` and decide (see ``shadow_verdict``)."""
    from kfrelease.serving.feedback import read_feedback
    from kfrelease.serving.logs import read_predictions

    predictions = read_predictions(store, model, since=since, until=until)
    feedback = read_feedback(store, model, since=since)
    pairs = join_shadow(predictions, feedback, candidate, production)
    window = {
        "since": pd.Timestamp(since).isoformat(),
        "until": pd.Timestamp(until).isoformat() if until else None,
    }
    verdict = shadow_verdict(
        pairs, candidate, production, min_samples, max_rmse_ratio, window
    )
    if report and verdict.decision != "wait":
        try:
            verdict.html = shadow_report_html(pairs, verdict)
        except Exception as exc:  # noqa: BLE001 - the report is a picture of the evidence; the verdict stands
            log.warning("Evidently report of the shadow gate failed: %s", exc)
    return verdict
