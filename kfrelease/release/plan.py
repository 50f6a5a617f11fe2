"""How much labelled traffic a release will need: ``kfrelease release plan MODEL VERSION``.

Both versions are scored on the candidate's held-out split (the seeded split of its training run,
rebuilt from the registry entry: its spec, dataset version and split). Those pairs stand in for live
traffic: ``estimate_plan`` resamples them (bootstrap) into many simulated shadows and runs the shadow
gate's own checks on each (``kfrelease.release.decision.simulate_gate``: accuracy and tail, looking after every
label; slices need the requests' features and are left out), so the
estimate uses the spec's margin, error rate, clip and boundary exactly as the gate will. It reports the
probability that the gate passes, fails or stays undecided within ``max_pairs``, and the labelled requests
by which it has passed with the wanted ``power`` (the power-quantile of the pairs to a pass); at the
current rate of labelled traffic that becomes the expected shadow time. The held-out split is small
(a few dozen rows in the demo), so the estimate is as rough as that sample: it says so in ``caveat``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import numpy as np

from kfrelease.errors import KfreleaseError
from kfrelease.registry import ModelRegistry
from kfrelease.release.decision import simulate_gate
from kfrelease.rollout.spec import GateRule
from kfrelease.storage import store_for


@dataclass
class ReleasePlan:
    model: str
    candidate: str
    production: str | None
    holdout_rows: int
    holdout_mse_ratio: float | None
    pass_probability: float
    fail_probability: float
    undecided_probability: float
    power: float
    labelled_needed: int | None  # pairs by which the gate has passed with probability >= power (None: never)
    max_pairs: int
    labelled_per_hour: float | None
    hours_needed: float | None
    margin: float
    error_rate: float
    caveat: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        need = (
            f"{self.labelled_needed} labelled requests for {self.power:.0%} power"
            if self.labelled_needed is not None
            else f"no pass with {self.power:.0%} power within {self.max_pairs} labelled requests"
        )
        when = (
            f", about {self.hours_needed:.2g} h at {self.labelled_per_hour:.0f} labelled requests/h"
            if self.hours_needed is not None
            else ", no labelled traffic in the last hour to time it"
            if self.labelled_per_hour == 0
            else ""
        )
        return (
            f"{self.model} {self.candidate} vs {self.production}: held-out MSE ratio "
            f"{self.holdout_mse_ratio:.3f} on {self.holdout_rows} rows; the shadow gate (margin {self.margin:g}, "
            f"error rate {self.error_rate:g}) passes with probability {self.pass_probability:.2f}, fails "
            f"{self.fail_probability:.2f}, undecided {self.undecided_probability:.2f} by {self.max_pairs}; "
            f"{need}{when}"
        )


def estimate_plan(
    truth,
    candidate,
    production,
    rule: GateRule,
    reference_rmse: float,
    *,
    power: float = 0.8,
    max_pairs: int = 20_000,
    simulations: int = 400,
    seed: int = 0,
) -> dict:
    """Resample the held-out pairs into ``simulations`` shadows of ``max_pairs`` labels and run the gate."""
    t = np.asarray(truth, dtype="float64")
    c = np.asarray(candidate, dtype="float64")
    p = np.asarray(production, dtype="float64")
    rng = np.random.default_rng(seed)
    ec, ep = t - c, t - p
    outcome = np.empty(simulations, dtype=int)
    pairs = np.empty(simulations, dtype=int)
    for start in range(0, simulations, 50):  # bounded memory: 50 x max_pairs at a time
        rows = min(50, simulations - start)
        idx = rng.integers(0, len(t), (rows, max_pairs))
        o, n, _, _ = simulate_gate(ec[idx], ep[idx], np.full(rows, reference_rmse), rule)
        outcome[start : start + rows], pairs[start : start + rows] = o, n
    passed = outcome == 1
    share = float(passed.mean())
    needed = None
    if share >= power:  # the power-quantile of pairs to a pass, counting non-passes as never
        needed = int(np.quantile(np.where(passed, pairs, np.iinfo(np.int64).max), power, method="higher"))
    mp = float(np.mean((t - p) ** 2))
    return {
        "pass_probability": share,
        "fail_probability": float((outcome == -1).mean()),
        "undecided_probability": float((outcome == 0).mean()),
        "labelled_needed": needed,
        "holdout_mse_ratio": float(np.mean((t - c) ** 2)) / mp if mp > 0 else None,
    }


def holdout_pairs(registry, store, model: str, version: str, production: str):
    """(truth, candidate, production) on the rows both versions held out (neither trained on), from the
    predictions each kept at registration (``kfrelease.training.evidence.common_rows``): no model is loaded."""
    from kfrelease.training.evidence import common_rows  # heavy: pandas

    cand, prod = registry.get(model, version), registry.get(model, production)
    rows = common_rows(store, registry, prod, registry, cand)
    if not len(rows):
        raise KfreleaseError(f"{model} {version} and {production} share no held-out rows to plan on: {rows.why}")
    return rows.truth, rows.b, rows.a


def labelled_per_hour(store, model: str, now: dt.datetime | None = None) -> float:
    """Labels received in the last hour (the feedback service's records)."""
    from kfrelease.lake import read_labels  # heavy: pandas

    now = now or dt.datetime.now(dt.UTC)
    fb = read_labels(store, model, since=now - dt.timedelta(hours=1))
    return float(len(fb))


def plan_release(
    settings, spec, version: str, *, power: float = 0.8, max_pairs: int = 20_000, record: bool = True
) -> ReleasePlan:
    """The plan of releasing ``version`` of ``spec.model`` against its production model; recorded in the
    candidate's registry history (``phase: plan``) when ``record``."""
    store = store_for("pipeline", settings)
    registry = ModelRegistry(store)
    model = spec.model
    mv = registry.get(model, version)
    prod = registry.current(model, "production")
    from kfrelease.release.controller import release_path  # heavy: pandas

    if release_path(mv, prod) != "shadow":
        raise KfreleaseError(
            f"{model} {version}: no production model with its inputs to compare against (its release is "
            f"{'promoted on its offline verdict' if prod is None else 'canary steps with its thresholds checked live'}"
            ", no shadow gate), so there is nothing to plan"
        )
    truth, cand, prodp = holdout_pairs(registry, store_for("data-scientist", settings), model, version, prod.version)
    rule = spec.shadow.rule()
    reference = float((prod.metrics or {}).get("rmse") or np.sqrt(np.mean((truth - prodp) ** 2)))
    est = estimate_plan(truth, cand, prodp, rule, reference, power=power, max_pairs=max_pairs)
    rate = labelled_per_hour(store_for("monitoring", settings), model)
    needed = est["labelled_needed"]
    hours = needed / rate if needed is not None and rate > 0 else None
    plan = ReleasePlan(
        model,
        version,
        prod.version,
        len(truth),
        est["holdout_mse_ratio"],
        est["pass_probability"],
        est["fail_probability"],
        est["undecided_probability"],
        power,
        needed,
        max_pairs,
        rate,
        hours,
        rule.margin,
        rule.error_rate,
        caveat=f"bootstrap of {len(truth)} held-out rows: live traffic may differ" if len(truth) < 500 else "",
    )
    if record:
        registry.set_stage(
            model,
            version,
            mv.stage or "staging",
            "release-plan",
            "release plan: " + plan.describe(),
            {"phase": "plan", **plan.as_dict()},
        )
    return plan
