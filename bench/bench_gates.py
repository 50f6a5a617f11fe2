"""Release-gate benchmark: simulated releases with a known truth, the sequential gate against today's ratio rule.

Per scenario 1,000 simulated releases (``BENCH_GATES_RELEASES``): production's and the candidate's errors on
the same requests are correlated 0.9 and of one shape, Gaussian or Student-t with 3 degrees of freedom
(scaled to unit variance); the candidate's MSE is truly 1.05 (5 % worse), 1.00, 0.98 or 0.90 times
production's. Labels arrive over time (Poisson, 10 labelled requests per second) and the gate is polled
every second, as the controller polls it, until it decides or ``max_wait_seconds`` (600 s) pass. The
clip's reference RMSE is production's RMSE on a simulated 88-row held-out split, as in the registry.

Rules, on the same simulated releases:

- ``sequential``: ``kfrelease.release.decision`` with the default spec (margin 0.02, error rate 0.05,
  squared loss, clip 4, the asymptotic boundary), looking from 30 pairs;
- ``sequential, bernstein``: the same with the exact empirical-Bernstein boundary;
- ``ratio, min 30`` / ``ratio, min 168``: today's rule: at the first poll with at least 30 (default spec)
  or 168 (the demo's) pairs, pass when candidate RMSE <= production RMSE x 1.0, else fail.

Reported per scenario and rule: the share promoted, rejected and undecided (insufficient evidence at the
limit, production unchanged), and the median labelled requests to a decision. The goal (issue 15): a
worse candidate is promoted at most at the declared 5 %. ``python -m bench gates``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from kfrelease.release.decision import clipped_losses, decision_bounds
from kfrelease.rollout.spec import GateRule

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RELEASES = int(os.environ.get("BENCH_GATES_RELEASES", "1000"))
RATE = 10.0  # labelled requests per second
POLL_SECONDS = 1.0
MAX_WAIT_SECONDS = 600.0
HOLDOUT_ROWS = 88
CORRELATION = 0.9
SCENARIOS = [("5% worse", 1.05), ("equal", 1.00), ("2% better", 0.98), ("10% better", 0.90)]
NOISES = ["gaussian", "student-t3"]


def _noise(rng, kind: str, shape) -> np.ndarray:
    if kind == "gaussian":
        return rng.normal(size=shape)
    return rng.standard_t(3, size=shape) / np.sqrt(3.0)  # unit variance


def simulate(rng, kind: str, mse_ratio: float, releases: int, n: int):
    """(candidate errors, production errors, reference RMSE per release, looks per release)."""
    a, b = np.sqrt(CORRELATION), np.sqrt(1 - CORRELATION)
    common = _noise(rng, kind, (releases, n))
    production = a * common + b * _noise(rng, kind, (releases, n))
    candidate = np.sqrt(mse_ratio) * (a * common + b * _noise(rng, kind, (releases, n)))
    holdout = _noise(rng, kind, (releases, HOLDOUT_ROWS))
    reference = np.sqrt(np.mean(holdout**2, axis=1))
    polls = int(MAX_WAIT_SECONDS / POLL_SECONDS)
    looks = np.cumsum(rng.poisson(RATE * POLL_SECONDS, (releases, polls)), axis=1)
    return candidate, production, reference, np.minimum(looks, n)


def _first(passed: np.ndarray, failed: np.ndarray, counts: np.ndarray):
    """(outcome +1/-1/0, pairs at the decision or at the limit) from per-look booleans."""
    decided = passed | failed
    any_ = decided.any(axis=1)
    first = np.where(any_, decided.argmax(axis=1), passed.shape[1] - 1)
    rows = np.arange(passed.shape[0])
    outcome = np.where(failed[rows, first], -1, np.where(passed[rows, first], 1, 0))
    outcome = np.where(any_, outcome, 0)
    return outcome, counts[rows, first]


def sequential(ec, ep, reference, looks, rule: GateRule):
    clip_at = rule.clip * reference[:, None]
    lc = clipped_losses(ec, clip_at, rule.loss)
    lp = clipped_losses(ep, clip_at, rule.loss)
    # the bounds are scale-free once losses are divided by the clip's square (the range of both losses)
    top = clip_at**2
    pass_bound, fail_bound = decision_bounds(lc / top, lp / top, 1.0, rule)
    idx = np.clip(looks - 1, 0, ec.shape[1] - 1)
    looked = looks >= rule.min_samples
    passed = (np.take_along_axis(pass_bound, idx, axis=1) < 0) & looked
    failed = (np.take_along_axis(fail_bound, idx, axis=1) > 0) & looked
    return _first(passed, failed, looks)


def ratio_rule(ec, ep, looks, min_samples: int, max_ratio: float = 1.0):
    sc, sp = np.cumsum(ec**2, axis=1), np.cumsum(ep**2, axis=1)
    idx = np.clip(looks - 1, 0, ec.shape[1] - 1)
    ok = looks >= min_samples
    ratio = np.sqrt(np.take_along_axis(sc, idx, axis=1) / np.take_along_axis(sp, idx, axis=1))
    return _first(ok & (ratio <= max_ratio), ok & (ratio > max_ratio), looks)


def _summary(outcome, pairs) -> dict:
    decided = outcome != 0
    return {
        "promoted": float(np.mean(outcome == 1)),
        "rejected": float(np.mean(outcome == -1)),
        "undecided": float(np.mean(~decided)),
        "median_labelled_to_decision": float(np.median(pairs[decided])) if decided.any() else None,
        "median_labelled_seen": float(np.median(pairs)),
    }


def main() -> dict:
    t0 = time.monotonic()
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(20261201)
    n = int(RATE * MAX_WAIT_SECONDS * 1.2)  # more pairs than can arrive by the limit
    rules = {
        "sequential": GateRule(),
        "sequential, bernstein": GateRule(boundary="bernstein"),
    }
    rows = []
    for kind in NOISES:
        for label, ratio in SCENARIOS:
            ec, ep, reference, looks = simulate(rng, kind, ratio, RELEASES, n)
            out = {}
            for name, rule in rules.items():
                out[name] = _summary(*sequential(ec, ep, reference, looks, rule))
            for m in (30, 168):
                out[f"ratio, min {m}"] = _summary(*ratio_rule(ec, ep, looks, m))
            rows.append({"noise": kind, "scenario": label, "mse_ratio": ratio, "rules": out})
            print(
                f"  {kind:<10} {label:<10} "
                + "  ".join(f"{k}: +{v['promoted']:.3f}/-{v['rejected']:.3f}" for k, v in out.items()),
                flush=True,
            )
    result = {
        "releases_per_scenario": RELEASES,
        "labelled_per_second": RATE,
        "poll_seconds": POLL_SECONDS,
        "max_wait_seconds": MAX_WAIT_SECONDS,
        "correlation": CORRELATION,
        "declared_error_rate": GateRule().error_rate,
        "margin": GateRule().margin,
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


def markdown(r: dict) -> str:
    names = list(r["rows"][0]["rules"])
    lines = [
        "### Release gates: sequential test vs today's ratio rule (simulated releases)",
        "",
        (
            f"{r['releases_per_scenario']} simulated releases per scenario; paired errors correlated {r['correlation']}, "
            f"labels at {r['labelled_per_second']:g}/s, gate polled every {r['poll_seconds']:g} s, limit "
            f"{r['max_wait_seconds']:g} s; sequential: margin {r['margin']:g}, declared error rate "
            f"{r['declared_error_rate']:g}. Cells: promoted / rejected / undecided (production unchanged), "
            f"median labelled requests to a decision. {r['machine']}; load {r['load_average_before_after'][0]}/"
            f"{r['load_average_before_after'][1]}; {r['seconds']:g} s."
        ),
        "",
        "| noise | candidate MSE | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for row in r["rows"]:
        cells = []
        for name in names:
            s = row["rules"][name]
            med = s["median_labelled_to_decision"]
            cells.append(
                f"{_pct(s['promoted'])} / {_pct(s['rejected'])} / {_pct(s['undecided'])}, n {med:.0f}"
                if med is not None
                else f"{_pct(s['promoted'])} / {_pct(s['rejected'])} / {_pct(s['undecided'])}"
            )
        lines.append(f"| {row['noise']} | {row['scenario']} (x{row['mse_ratio']:g}) | " + " | ".join(cells) + " |")
    worse = [row for row in r["rows"] if row["mse_ratio"] > 1]
    seq_worst = max(row["rules"]["sequential"]["promoted"] for row in worse)
    old_worst = max(max(row["rules"][k]["promoted"] for k in names if k.startswith("ratio")) for row in worse)
    lines += [
        "",
        (
            f"Worse candidates promoted: sequential at most {_pct(seq_worst)} (goal <= "
            f"{_pct(r['declared_error_rate'])}: **{'met' if seq_worst <= r['declared_error_rate'] else 'not met'}**); "
            f"today's ratio rule up to {_pct(old_worst)}."
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
