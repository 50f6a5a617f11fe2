"""``kfrelease release plan``'s estimate: the shadow gate's own test run on resampled held-out pairs."""

from __future__ import annotations

import numpy as np

from kfrelease.release.plan import estimate_plan
from kfrelease.rollout.spec import GateRule


def holdout(mse_ratio: float, n: int = 88, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(150, 50, n)
    common, own_p, own_c = rng.normal(0, 50, (3, n))
    production = truth + 0.95 * common + 0.31 * own_p
    candidate = truth + np.sqrt(mse_ratio) * (0.95 * common + 0.31 * own_c)
    return truth, candidate, production


def test_a_clearly_better_candidate_needs_the_tail_checks_floor_of_labels():
    est = estimate_plan(*holdout(0.8), GateRule(), 50.0, simulations=100, max_pairs=5000)
    # log(1/0.05) / (0.8 x min_exposure 0.002) = 1,872: no pass can be claimed before a failure mode on
    # 0.2 % of requests could have shown
    assert est["pass_probability"] >= 0.8 and 1872 <= est["labelled_needed"] < 2500


def test_a_closer_candidate_needs_more_labels():
    rule = GateRule(min_exposure=0)  # without the tail check's floor (~1,900 pairs), which both would wait for
    clear = estimate_plan(*holdout(0.8), rule, 50.0, simulations=100, max_pairs=5000)
    close = estimate_plan(*holdout(0.9), rule, 50.0, simulations=100, max_pairs=5000)
    assert close["labelled_needed"] is None or close["labelled_needed"] > clear["labelled_needed"]


def test_a_worse_candidate_has_no_labelled_count_that_passes_it():
    est = estimate_plan(*holdout(1.3), GateRule(), 50.0, simulations=100, max_pairs=3000)
    assert est["labelled_needed"] is None and est["fail_probability"] > 0.5
