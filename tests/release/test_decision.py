"""The paired sequential decision (``kfrelease.release.decision``): error rates under continuous monitoring
by simulation (bounded: a few hundred simulated releases), decisions on clear cases, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from kfrelease.release.decision import (
    PairSequence,
    clipped_losses,
    decide,
    first_decisions,
    lower_bounds,
    mixture_bounds,
    upper_bounds,
)
from kfrelease.rollout.spec import GateError, GateRule

LOOKS = np.arange(30, 1501, 5)  # the gate looks every 5 labels, from 30 to 1,500


def paired_errors(rng, releases: int, n: int, mse_ratio: float, heavy: bool):
    """Production and candidate errors of one shape (Gaussian or Student-t 3 d.f.), correlation 0.9,
    candidate MSE = mse_ratio x production's."""

    def noise():
        return rng.standard_t(3, (releases, n)) / np.sqrt(3) if heavy else rng.normal(size=(releases, n))

    common = noise()
    production = np.sqrt(0.9) * common + np.sqrt(0.1) * noise()
    candidate = np.sqrt(mse_ratio) * (np.sqrt(0.9) * common + np.sqrt(0.1) * noise())
    return candidate, production


@pytest.mark.parametrize("boundary", ["asymptotic", "bernstein"])
@pytest.mark.parametrize("heavy", [False, True], ids=["gaussian", "student-t3"])
def test_a_candidate_worse_than_the_margin_passes_at_most_at_the_declared_rate(boundary, heavy):
    rng = np.random.default_rng(7)
    rule = GateRule(margin=0.02, error_rate=0.05, boundary=boundary)
    ec, ep = paired_errors(rng, 400, int(LOOKS[-1]), 1.02, heavy)  # exactly at the margin: the hardest worse case
    outcome, _ = first_decisions(
        clipped_losses(ec, 4.0, "squared"), clipped_losses(ep, 4.0, "squared"), 16.0, rule, LOOKS
    )
    # 400 releases: 5 % + 2.5 standard errors
    assert (outcome == 1).mean() <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 400)


@pytest.mark.parametrize("heavy", [False, True], ids=["gaussian", "student-t3"])
def test_an_equal_candidate_is_failed_at_most_at_the_declared_rate(heavy):
    rng = np.random.default_rng(11)
    rule = GateRule(margin=0.02, error_rate=0.05)
    ec, ep = paired_errors(rng, 400, int(LOOKS[-1]), 1.0, heavy)
    outcome, _ = first_decisions(
        clipped_losses(ec, 4.0, "squared"), clipped_losses(ep, 4.0, "squared"), 16.0, rule, LOOKS
    )
    assert (outcome == -1).mean() <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 400)


@pytest.mark.parametrize("boundary", ["asymptotic", "bernstein"])
def test_the_confidence_sequence_covers_the_mean_at_every_look_at_once(boundary):
    """Time-uniform coverage: the share of sequences whose bound misses the true mean at ANY look."""
    rng = np.random.default_rng(3)
    x = rng.beta(2, 5, (400, 1500))  # in [0, 1], mean 2/7
    if boundary == "asymptotic":
        upper = mixture_bounds(x, 0.05, "upper")[:, 29:]
        lower = mixture_bounds(x, 0.05, "lower")[:, 29:]
    else:
        upper, lower = upper_bounds(x, 0.05)[:, 29:], lower_bounds(x, 0.05)[:, 29:]
    miss_upper = (upper < 2 / 7).any(axis=1).mean()
    miss_lower = (lower > 2 / 7).any(axis=1).mean()
    assert miss_upper <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 400)
    assert miss_lower <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 400)


def errors_of(rng, n, cand_sd, prod_sd):
    truth = rng.normal(150, 50, n)
    common = rng.normal(0, 1, n)
    prod = truth + prod_sd * (0.95 * common + 0.31 * rng.normal(0, 1, n))
    cand = truth + cand_sd * (0.95 * common + 0.31 * rng.normal(0, 1, n))
    return truth, cand, prod


def test_a_clearly_better_candidate_passes_with_its_interval_and_sample_count():
    t, c, p = errors_of(np.random.default_rng(0), 1500, 40.0, 50.0)  # MSE ratio 0.64
    d = decide(t, c, p, GateRule(), scale=50.0)
    assert d.decision == "pass" and d.n == 1500
    lo, hi = d.ratio_interval
    assert lo < d.ratio < hi < 1.02 and 0.5 < d.ratio < 0.8
    assert "n=1500" in d.describe() and "[" in d.describe()


def test_a_clearly_worse_candidate_fails():
    t, c, p = errors_of(np.random.default_rng(1), 1500, 60.0, 50.0)  # MSE ratio 1.44
    d = decide(t, c, p, GateRule(), scale=50.0)
    assert d.decision == "fail" and d.ratio_interval[0] > 1.0
    assert d.difference_interval[0] > 0


def test_too_few_pairs_continue_and_at_the_limit_are_insufficient():
    t, c, p = errors_of(np.random.default_rng(2), 200, 50.0, 50.0)
    rule = GateRule(min_samples=30, max_samples=500)
    assert decide(t[:29], c[:29], p[:29], rule, scale=50.0).decision == "continue"
    assert decide(t, c, p, rule, scale=50.0).decision == "continue"  # equal: neither bound crosses in 200
    late = decide(t, c, p, rule, scale=50.0, at_limit=True)
    assert late.decision == "insufficient" and "insufficient evidence" in late.reason
    t2, c2, p2 = errors_of(np.random.default_rng(2), 500, 50.0, 50.0)
    assert decide(t2, c2, p2, rule, scale=50.0).decision == "insufficient"  # max_samples reached


def test_no_pairs_no_decision():
    d = decide([], [], [], GateRule(), scale=50.0)
    assert d.decision == "continue" and d.n == 0 and d.ratio_interval is None


def test_identical_models_never_fail_and_pass_within_the_margin():
    t, _, p = errors_of(np.random.default_rng(4), 800, 50.0, 50.0)
    d = decide(t, p, p, GateRule(margin=0.05), scale=50.0)  # ties everywhere: d == 0
    assert d.mean_difference == 0 and d.decision == "pass" and d.ratio == 1.0


def test_constant_losses_decide_without_dividing_by_zero():
    truth = np.full(100, 10.0)
    d = decide(truth, truth + 1.0, truth + 2.0, GateRule(), scale=2.0)  # candidate always 1 off, production 2
    assert d.decision == "pass" and d.ratio == pytest.approx(0.25)
    perfect = decide(truth, truth, truth, GateRule(), scale=None)
    assert perfect.decision == "continue" and "no scale" in perfect.reason


def test_one_huge_error_moves_the_decision_by_a_bounded_amount():
    """Heavy tails: one request with an error of 1e6 is clipped at clip x scale, not squared."""
    t, c, p = errors_of(np.random.default_rng(5), 1500, 40.0, 50.0)
    c = c.copy()
    c[100] += 1e6
    d = decide(t, c, p, GateRule(), scale=50.0)
    assert d.decision == "pass" and d.clipped_share > 0 and d.clip_at == 200.0


def test_without_a_reference_rmse_the_burn_in_fixes_the_clip_and_is_left_out():
    t, c, p = errors_of(np.random.default_rng(6), 1000, 40.0, 50.0)
    d = decide(t, c, p, GateRule(burn_in=50), scale=None)
    assert d.n == 950 and d.pairs_seen == 1000 and 150 < d.clip_at < 250


def test_absolute_error_is_a_loss_of_its_own():
    t, c, p = errors_of(np.random.default_rng(0), 1500, 40.0, 50.0)
    d = decide(t, c, p, GateRule(loss="absolute"), scale=50.0)
    assert d.decision == "pass" and 0.7 < d.ratio < 0.9 and "MAE" in d.describe()


def test_a_malformed_rule_is_refused():
    with pytest.raises(GateError, match="error_rate"):
        GateRule(error_rate=0.7).check()
    with pytest.raises(GateError, match="boundary 'magic' is unknown"):
        GateRule(boundary="magic").check()
    with pytest.raises(GateError, match="pair up"):
        decide([1.0, 2.0], [1.0], [1.0, 2.0], GateRule(), scale=1.0)


def test_pairs_keep_their_arrival_order_across_polls():
    import pandas as pd

    seq = PairSequence()
    first = pd.DataFrame({"request_id": ["b", "a"], "instance": [0, 0], "truth": [1.0, 2.0]})
    assert list(seq.extend(first)["request_id"]) == ["a", "b"]
    later = pd.DataFrame({"request_id": ["0", "b", "a"], "instance": [0, 0, 0], "truth": [3.0, 1.0, 2.0]})
    assert list(seq.extend(later)["request_id"]) == ["a", "b", "0"]  # "0" sorts first but arrived last
