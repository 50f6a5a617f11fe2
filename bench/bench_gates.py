"""Release-gate benchmark: simulated releases with a known truth, the gate polled after EVERY labelled pair.

Per scenario ``BENCH_GATES_RELEASES`` (500) simulated releases of up to 6,000 labelled pairs (600 s at 10
labelled requests per second, the default ``max_wait_seconds`` of 900 s less the time to the first label).
Production's errors are Gaussian (or Student-t with 3 degrees of freedom) in units of its RMSE; the clip's
reference RMSE is production's RMSE on a simulated 88-row held-out split, as in the registry. Each request
has two features: ``category`` (5 values with shares 5, 15, 20, 25, 35 %) and a numeric ``x`` (standard
normal). Scenario families:

- ``smooth``: the candidate's errors correlated 0.9 with production's, of one shape, MSE 1.05, 1.00 or 0.90
  times production's (the families of issue 15);
- ``rare gross``: the candidate is production except on a share of requests where it is off by ``size``
  reference RMSEs (a mishandled category, a broken branch in ``build``);
- ``broken slice``: the candidate is production except in one category (5 % or 20 % of requests), where
  its squared error is 2 or 4 times production's;
- ``out of range``: the candidate is production except where ``|x|`` is beyond the 99th or 95th
  percentile, where its error is 3 or 6 times production's.

Gates, on the same simulated pairs:

- ``gate``: ``kfrelease.release.decision`` with the default spec (betting boundary, margin 0.02, error rate
  0.05, clip 4, tail check with ``min_exposure`` 0.002, worst-slice search over both features);
- ``fixed n, same power``: the pairs a fixed-sample one-sided z-test (level 0.05) of the same clipped loss
  needs to reach the power the gate reached in that scenario (its share of right decisions), from the
  scenario's true mean and standard deviation of the paired difference; a lower bound for any valid
  sequential test, and not itself valid when the gate may look at every pair;
- ``today's gate``: the gate before issue 23 (asymptotic boundary, no tail check, no slices), also looking
  after every pair.

The goal (issue 23): in every scenario whose true MSE is worse than the margin, and whose failure mode is
not rarer than the declared ``min_exposure``, at most the declared 5 % of candidates are promoted.
``python -m bench gates``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from statistics import NormalDist

import numpy as np

from kfrelease.release.decision import clipped_losses, simulate_gate
from kfrelease.rollout.spec import GateRule

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RELEASES = int(os.environ.get("BENCH_GATES_RELEASES", "500"))
PAIRS = 6000  # 600 s at 10 labelled requests per second
CHUNK = 100  # releases simulated at once (bounded memory)
HOLDOUT_ROWS = 88
CORRELATION = 0.9
CATEGORY_SHARES = (0.05, 0.15, 0.20, 0.25, 0.35)
GATES = {
    "gate": GateRule(),
    "today's gate": GateRule(boundary="asymptotic", min_exposure=0, worst_slice=False),
}


def _noise(rng, kind: str, shape) -> np.ndarray:
    if kind == "student-t3":
        return rng.standard_t(3, size=shape) / np.sqrt(3.0)  # unit variance
    return rng.normal(size=shape)


def scenarios() -> list[dict]:
    out = []
    for kind in ("gaussian", "student-t3"):
        for ratio in (1.05, 1.00, 0.90):
            out.append({"family": "smooth", "name": f"{kind}, MSE x{ratio:g}", "noise": kind, "ratio": ratio})
    for share, size in ((0.002, 6), (0.002, 12), (0.005, 6), (0.01, 6), (0.02, 4), (0.001, 12)):
        name = f"{share:.1%} of requests off by {size} RMSE"
        out.append({"family": "rare gross", "name": name, "share": share, "size": size})
    for category, factor in ((0, 2.0), (0, 4.0), (2, 2.0)):
        name = f"category {category} ({CATEGORY_SHARES[category]:.0%}) with {factor:g}x the squared error"
        out.append({"family": "broken slice", "name": name, "category": category, "factor": factor})
    for quantile, factor in ((0.99, 3.0), (0.99, 6.0), (0.95, 3.0)):
        name = f"x beyond its central {quantile:.0%} range: {factor:g}x the error"
        out.append({"family": "out of range", "name": name, "quantile": quantile, "factor": factor})
    return out


def simulate(rng, s: dict, releases: int, n: int):
    """(candidate errors, production errors, reference RMSE per release, features)."""
    kind = s.get("noise", "gaussian")
    shape = (releases, n)
    production = _noise(rng, kind, shape)
    category = rng.choice(len(CATEGORY_SHARES), size=shape, p=CATEGORY_SHARES)
    x = rng.normal(size=shape)
    if s["family"] == "smooth":
        a, b = np.sqrt(CORRELATION), np.sqrt(1 - CORRELATION)
        common = production
        production = a * common + b * _noise(rng, kind, shape)
        candidate = np.sqrt(s["ratio"]) * (a * common + b * _noise(rng, kind, shape))
    elif s["family"] == "rare gross":
        hit = rng.random(shape) < s["share"]
        candidate = np.where(hit, s["size"] * rng.choice([-1.0, 1.0], shape), production)
    elif s["family"] == "broken slice":
        candidate = np.where(category == s["category"], np.sqrt(s["factor"]) * production, production)
    else:
        beyond = np.abs(x) > NormalDist().inv_cdf(0.5 + s["quantile"] / 2)
        candidate = np.where(beyond, s["factor"] * production, production)
    holdout = _noise(rng, kind, (releases, HOLDOUT_ROWS))
    reference = np.sqrt(np.mean(holdout**2, axis=1))
    return candidate, production, reference, {"category": category, "x": x}


def true_mse_ratio(s: dict) -> float:
    if s["family"] == "smooth":
        return s["ratio"]
    if s["family"] == "rare gross":
        return 1 + s["share"] * (s["size"] ** 2 - 1)
    if s["family"] == "broken slice":
        return 1 + CATEGORY_SHARES[s["category"]] * (s["factor"] - 1)
    q = NormalDist().inv_cdf(0.5 + s["quantile"] / 2)
    z = NormalDist()
    tail_share = 2 * (1 - z.cdf(q))
    return 1 + tail_share * (s["factor"] ** 2 - 1)


def fixed_n(ec, ep, reference, rule: GateRule, power: float, worse: bool) -> float | None:
    """Pairs a fixed-sample one-sided z-test of the same clipped loss needs for ``power``."""
    clip_at = rule.clip * reference[:, None]
    lc, lp = clipped_losses(ec, clip_at, rule.loss), clipped_losses(ep, clip_at, rule.loss)
    g = (lc - lp) if worse else (lc - (1 + rule.margin) * lp)
    mu, sd = float(g.mean()), float(g.std())
    if (mu <= 0) if worse else (mu >= 0):
        return None
    if not rule.error_rate < power < 1:
        power = min(max(power, rule.error_rate + 1e-3), 0.999)
    z = NormalDist().inv_cdf(1 - rule.error_rate) + NormalDist().inv_cdf(power)
    return math.ceil((z * sd / abs(mu)) ** 2)


def _summary(outcome, seen) -> dict:
    decided = outcome != 0
    return {
        "promoted": float(np.mean(outcome == 1)),
        "rejected": float(np.mean(outcome == -1)),
        "undecided": float(np.mean(~decided)),
        "median_pairs_to_decision": float(np.median(seen[decided])) if decided.any() else None,
        "decided_by": {},
    }


def run_scenario(rng, s: dict) -> dict:
    outcomes = {name: [] for name in GATES}
    seen = {name: [] for name in GATES}
    deciders: dict[str, int] = {}
    moments = []
    for start in range(0, RELEASES, CHUNK):
        rows = min(CHUNK, RELEASES - start)
        ec, ep, reference, features = simulate(rng, s, rows, PAIRS)
        for name, rule in GATES.items():
            o, n, names, by = simulate_gate(ec, ep, reference, rule, features if rule.worst_slice else None)
            outcomes[name].append(o)
            seen[name].append(n)
            if name == "gate":
                for b in by[o != 0]:
                    deciders[names[b]] = deciders.get(names[b], 0) + 1
        moments.append((ec, ep, reference))
        if len(moments) > 2:
            moments.pop(0)
    ratio = true_mse_ratio(s)
    worse = ratio > 1 + GATES["gate"].margin
    out = {name: _summary(np.concatenate(outcomes[name]), np.concatenate(seen[name])) for name in GATES}
    out["gate"]["decided_by"] = dict(sorted(deciders.items(), key=lambda kv: -kv[1]))
    right = out["gate"]["rejected"] if worse else out["gate"]["promoted"]
    ec, ep, reference = (np.concatenate(x) for x in zip(*moments, strict=True))
    n_fixed = fixed_n(ec, ep, reference, GATES["gate"], right, worse) if right > 0 else None
    guaranteed = not (s["family"] == "rare gross" and s["share"] < GATES["gate"].min_exposure)
    return {
        **s,
        "true_mse_ratio": ratio,
        "worse_than_margin": worse,
        "within_guarantee": guaranteed,
        "fixed_n_same_power": n_fixed,
        "gates": out,
    }


def main() -> dict:
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(20261223)
    rows = []
    for s in scenarios():
        row = run_scenario(rng, s)
        rows.append(row)
        g, old = row["gates"]["gate"], row["gates"]["today's gate"]
        print(
            f"  {s['family']:<13} {s['name']:<52} x{row['true_mse_ratio']:.3f}  gate +{g['promoted']:.3f}/-"
            f"{g['rejected']:.3f}  today +{old['promoted']:.3f}/-{old['rejected']:.3f}",
            flush=True,
        )
    rule = GATES["gate"]
    result = {
        "releases_per_scenario": RELEASES,
        "simulated_releases": RELEASES * len(rows),
        "pairs_per_release": PAIRS,
        "declared_error_rate": rule.error_rate,
        "margin": rule.margin,
        "min_exposure": rule.min_exposure,
        "clip": rule.clip,
        "rows": rows,
        "seconds": round(time.monotonic() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu (shared), Python {platform.python_version()}",
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gates.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "gates.md").write_text(markdown(result))
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _cell(s: dict) -> str:
    med = s["median_pairs_to_decision"]
    head = f"{_pct(s['promoted'])} / {_pct(s['rejected'])} / {_pct(s['undecided'])}"
    return f"{head}, n {med:,.0f}" if med is not None else head


def markdown(r: dict) -> str:
    lines = [
        "### Release gates: concentrated failures, the gate polled after every labelled pair (simulated releases)",
        "",
        (
            f"{r['releases_per_scenario']} simulated releases per scenario ({r['simulated_releases']:,} in all), up "
            f"to {r['pairs_per_release']:,} labelled pairs each, the gate looking after every pair; default spec: "
            f"margin {r['margin']:g}, declared error rate {r['declared_error_rate']:g}, clip {r['clip']:g}, "
            f"min_exposure {r['min_exposure']:g}. Cells: promoted / rejected / undecided (production unchanged), "
            f"median labelled pairs to a decision. {r['machine']}; load {r['load_average_before_after'][0]}/"
            f"{r['load_average_before_after'][1]}; {r['seconds']:g} s."
        ),
        "",
        "| family | candidate | true MSE ratio | gate | fixed n, same power | today's gate |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for row in r["rows"]:
        note = "" if row["within_guarantee"] else " (rarer than min_exposure: outside the guarantee)"
        fixed = f"{row['fixed_n_same_power']:,}" if row["fixed_n_same_power"] else "-"
        gate, today = _cell(row["gates"]["gate"]), _cell(row["gates"]["today's gate"])
        lines.append(
            f"| {row['family']} | {row['name']}{note} | {row['true_mse_ratio']:.3f} | {gate} | {fixed} | {today} |"
        )
    worse = [row for row in r["rows"] if row["worse_than_margin"] and row["within_guarantee"]]
    new_worst = max(row["gates"]["gate"]["promoted"] for row in worse)
    old_worst = max(row["gates"]["today's gate"]["promoted"] for row in worse)
    deciders: dict[str, int] = {}
    for row in r["rows"]:
        for k, v in row["gates"]["gate"]["decided_by"].items():
            deciders[k] = deciders.get(k, 0) + v
    lines += [
        "",
        (
            f"Worse than the margin (within the guarantee) and promoted: gate at most {_pct(new_worst)} (goal <= "
            f"{_pct(r['declared_error_rate'])}: **{'met' if new_worst <= r['declared_error_rate'] else 'not met'}**); "
            f"today's gate up to {_pct(old_worst)}."
        ),
        "",
        "What decided the gate's decisions, over all scenarios: "
        + ", ".join(f"{k.replace(':', ' ')} {v:,}" for k, v in sorted(deciders.items(), key=lambda kv: -kv[1])),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
