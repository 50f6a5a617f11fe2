"""Release decisions with error guarantees: a paired, anytime-valid sequential test of non-inferiority.

Input: joined pairs (``truth, candidate, production`` per labelled request, both models answering the
*same* request), in the order they arrived. Output: ``pass``, ``fail`` or ``continue`` (``insufficient``
once ``max_samples`` or the caller's deadline is reached), with the confidence sequence and the sample
count behind it. Pure numpy; the shadow gate, every canary step, the release pipeline, the cluster path
and ``bench/bench_gates.py`` call these functions.

The test. Per request the clipped losses ``l_c = min(loss(e_c), L)``, ``l_p = min(loss(e_p), L)`` (squared
or absolute error, ``L`` fixed before the first pair, see below). For a ratio ``r`` let
``g_r = l_c - r * l_p``; ``E[g_r] < 0`` means the candidate's mean loss is below ``r`` times production's.

- ``pass`` when the upper confidence bound of ``E[g_(1+margin)]`` is below 0: the candidate's loss is at
  most ``1 + margin`` times production's (non-inferiority, margin relative to production's MSE);
- ``fail`` when the lower confidence bound of ``E[g_1]`` is above 0 (the candidate is worse;
  ``fail_above: margin`` uses ``g_(1+margin)``: worse by more than the margin);
- ``continue`` otherwise; ``insufficient`` when no decision was reached by ``max_samples`` or the deadline.

Each bound is a confidence sequence, one-sided at the declared ``error_rate``, valid simultaneously at
every sample count, so the gate may look after every label (the controller polls continuously) and stop at
the first crossing: P(a candidate worse than the margin passes) <= error_rate and P(a candidate at least
as good as production fails) <= error_rate, whatever the polling schedule. Two boundaries (``boundary``):

- ``asymptotic`` (default): the Gaussian-mixture asymptotic confidence sequence of Waudby-Smith, Arbour,
  Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences",
  Annals of Statistics 2024, with the one-sided normal-mixture boundary of Howard, Ramdas, McAuliffe &
  Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2),
  2021, eq. (14): ``mean_t +- sqrt(2 (t s_t^2 + rho) log(sqrt((t s_t^2 + rho) / rho) / (2 alpha) + 1)) / t``
  with ``rho = s_t^2 x 100`` (tightest near a few hundred pairs). Its guarantee holds as the sample count
  grows; the clip below bounds the variance it needs, and ``tests/release/test_decision.py`` and
  ``bench/bench_gates.py`` measure the error rates it reaches from ``min_samples`` on (Gaussian and
  Student-t 3 d.f. errors).
- ``bernstein``: the predictable plug-in empirical-Bernstein confidence sequence (PrPl-EB) of
  Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 86(1), 2024,
  Theorem 2, with the running intersection: exact at every n for the clipped losses, but it pays for the
  worst case of their range (clip^2 x MSE), so it needs several times more pairs.

The samples must not depend on the decision to look, which holds when pairs are consumed in arrival
order (``PairSequence``).

Heavy tails: the boundary needs bounded observations, and squared errors of Student-t noise (3 d.f.) have
no variance at all. We **clip each absolute error** at ``L = clip x scale`` (winsorisation), where
``scale`` is production's reference RMSE fixed *before* the shadow starts (its held-out RMSE in the
registry), or, when none is given, the RMSE of production on the first ``burn_in`` pairs, which are then
left out of the test. A fixed clip keeps the guarantee exact; the estimand is the clipped (winsorised)
loss, which equals the MSE when errors rarely exceed ``clip`` reference RMSEs (Gaussian, clip 4: a share of
6e-5) and, for errors of one shape and different scale, orders candidates as the MSE does. We clip the
errors, not the loss differences, so both losses stay in ``[0, L^2]`` and one bad request moves the mean
by at most ``L^2 / n``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from kfrelease.rollout.spec import GateError, GateRule

DECISIONS = ("pass", "fail", "continue", "insufficient")
#: Intrinsic time of the normal mixture (in pairs): the boundary is tightest near a few hundred pairs.
MIXTURE_PAIRS = 100.0


@dataclass
class Decision:
    """One look at the evidence: the decision and the numbers it rests on (all JSON-serialisable)."""

    decision: str  # pass | fail | continue | insufficient
    n: int  # pairs in the test (after the burn-in, if any)
    reason: str
    loss: str = "squared"
    error_rate: float = 0.05
    margin: float = 0.0
    mean_difference: float | None = None  # mean clipped loss difference, candidate - production
    difference_interval: tuple[float, float] | None = None  # its confidence sequence at n
    candidate_loss: float | None = None  # mean clipped loss of each model on the pairs
    production_loss: float | None = None
    ratio: float | None = None  # candidate_loss / production_loss
    ratio_interval: tuple[float, float] | None = None  # confidence sequence on the ratio of mean losses
    clip_at: float | None = None  # the absolute error at which errors were clipped
    clipped_share: float | None = None  # share of errors (either model) that were clipped
    pairs_seen: int = 0  # pairs received, burn-in included
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("difference_interval", "ratio_interval"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    def describe(self) -> str:
        """One line a person reads: the decision, the ratio and its interval, n, the declared rule."""
        if self.ratio_interval is None:
            return f"{self.decision}: {self.reason}"
        lo, hi = self.ratio_interval
        what = "MSE" if self.loss == "squared" else "MAE"
        conf = 100 * (1 - 2 * self.error_rate)
        return (
            f"{self.decision}: candidate/production {what} {_num(self.ratio)} "
            f"[{_num(lo)}, {_num(hi)}] ({conf:g}% confidence sequence) on n={self.n} paired requests; "
            f"margin {self.margin:g}, error rate {self.error_rate:g}"
        )


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3f}"


# --- the boundary ---------------------------------------------------------------------------------------


def upper_bounds(x: np.ndarray, alpha: float, cap: float = 0.5) -> np.ndarray:
    """PrPl-EB upper confidence sequence (one-sided, level ``alpha``) on the mean of ``x`` in [0, 1], for
    every prefix along the last axis, with the running minimum over time (Waudby-Smith & Ramdas 2024, Thm 2:
    ``(sum l_i x_i + log(1/alpha) + sum v_i psi(l_i)) / sum l_i``)."""
    x = np.asarray(x, dtype="float64")
    n = x.shape[-1]
    if n == 0:
        return np.ones(x.shape)
    t = np.arange(1, n + 1, dtype="float64")
    log_inv = math.log(1.0 / alpha)
    mu = (0.5 + np.cumsum(x, axis=-1)) / (t + 1)
    sigma2 = (0.25 + np.cumsum((x - mu) ** 2, axis=-1)) / (t + 1)
    lead = [(0, 0)] * (x.ndim - 1) + [(1, 0)]
    mu_prev = np.pad(mu[..., :-1], lead, constant_values=0.5)
    sigma2_prev = np.pad(sigma2[..., :-1], lead, constant_values=0.25)
    lam = np.minimum(np.sqrt(2 * log_inv / (sigma2_prev * t * np.log1p(t))), cap)
    v = 4 * (x - mu_prev) ** 2
    psi = (-np.log1p(-lam) - lam) / 4
    lam_sum = np.cumsum(lam, axis=-1)
    upper = (np.cumsum(lam * x, axis=-1) + log_inv + np.cumsum(v * psi, axis=-1)) / lam_sum
    return np.minimum.accumulate(np.minimum(upper, 1.0), axis=-1)


def lower_bounds(x: np.ndarray, alpha: float, cap: float = 0.5) -> np.ndarray:
    """The lower confidence sequence: ``1 - upper_bounds(1 - x)``."""
    return 1.0 - upper_bounds(1.0 - np.asarray(x, dtype="float64"), alpha, cap)


def clipped_losses(errors: np.ndarray, clip_at: float, loss: str) -> np.ndarray:
    a = np.minimum(np.abs(errors), clip_at)
    return a**2 if loss == "squared" else a


def mixture_bounds(g: np.ndarray, alpha: float, side: str) -> np.ndarray:
    """Asymptotic confidence sequence (one-sided normal mixture) on the mean of ``g``, every prefix along
    the last axis (see the module docstring)."""
    g = np.asarray(g, dtype="float64")
    n = g.shape[-1]
    t = np.arange(1, n + 1, dtype="float64")
    shift = g[..., :1] if n else 0.0  # centre for a stable variance
    c = g - shift
    s1, s2 = np.cumsum(c, axis=-1), np.cumsum(c * c, axis=-1)
    mean = s1 / t
    var = np.maximum(s2 - t * mean * mean, 0.0) / np.maximum(t - 1, 1)
    v = t * var
    rho = np.maximum(var * MIXTURE_PAIRS, 1e-300)
    width = np.sqrt(2 * (v + rho) * np.log(np.sqrt((v + rho) / rho) / (2 * alpha) + 1)) / t
    width = np.where(var > 0, width, 0.0)
    return mean + shift + (width if side == "upper" else -width)


def _bound_of_mean_g(lc, lp, r: float, top: float, alpha: float, side: str, boundary: str = "asymptotic") -> np.ndarray:
    """Confidence bound on E[lc - r lp] for every prefix; lc, lp in [0, top]."""
    if boundary == "asymptotic":
        return mixture_bounds(lc - r * lp, alpha, side)
    x = (lc - r * lp + r * top) / ((1 + r) * top)  # in [0, 1]
    b = upper_bounds(x, alpha) if side == "upper" else lower_bounds(x, alpha)
    return b * (1 + r) * top - r * top


def decision_bounds(lc, lp, top: float, rule: GateRule) -> tuple[np.ndarray, np.ndarray]:
    """(pass bound, fail bound) for every prefix: pass where the first is < 0, fail where the second is > 0."""
    r_fail = 1.0 + (rule.margin if rule.fail_above == "margin" else 0.0)
    upper = _bound_of_mean_g(lc, lp, 1.0 + rule.margin, top, rule.error_rate, "upper", rule.boundary)
    lower = _bound_of_mean_g(lc, lp, r_fail, top, rule.error_rate, "lower", rule.boundary)
    return upper, lower


def _ratio_interval(lc, lp, top: float, alpha: float, boundary: str) -> tuple[float, float]:
    """The set of ratios r not excluded at the last prefix, by bisection (a report; decisions use
    ``decision_bounds`` at the declared ratios directly)."""

    def upper_at(r):
        return _bound_of_mean_g(lc, lp, r, top, alpha, "upper", boundary)[-1]

    def lower_at(r):
        return _bound_of_mean_g(lc, lp, r, top, alpha, "lower", boundary)[-1]

    def smallest(pred):  # smallest r in [0, 64] where pred holds (pred holds for every larger r)
        lo_r, hi_r = 0.0, 64.0
        if not pred(hi_r):
            return math.inf
        if pred(lo_r):
            return 0.0
        for _ in range(40):
            mid = (lo_r + hi_r) / 2
            lo_r, hi_r = (lo_r, mid) if pred(mid) else (mid, hi_r)
        return hi_r

    hi = smallest(lambda r: upper_at(r) < 0)  # the candidate's loss is surely below r x production's
    lo = smallest(lambda r: lower_at(r) <= 0)  # below lo it is surely above r x production's
    return lo, hi


# --- the decision ---------------------------------------------------------------------------------------


def decide(
    truth,
    candidate,
    production,
    rule: GateRule,
    scale: float | None = None,
    *,
    at_limit: bool = False,
) -> Decision:
    """The decision on pairs in arrival order (see the module docstring).

    ``scale``: production's reference RMSE fixed before the first pair (its held-out RMSE); None uses the
    first ``rule.burn_in`` pairs. ``at_limit``: the caller's deadline (``max_wait_seconds``) has passed, so
    an undecided test ends ``insufficient``."""
    rule.check()
    t = np.asarray(truth, dtype="float64").ravel()
    c = np.asarray(candidate, dtype="float64").ravel()
    p = np.asarray(production, dtype="float64").ravel()
    if not (t.size == c.size == p.size):
        raise GateError(
            f"truth, candidate and production have {t.size}, {c.size}, {p.size} values; they pair up row by row"
        )
    if not (np.isfinite(t).all() and np.isfinite(c).all() and np.isfinite(p).all()):
        raise GateError("pairs contain NaN or infinity; the join must drop unlabelled or failed requests")
    seen = int(t.size)
    base = {"loss": rule.loss, "error_rate": rule.error_rate, "margin": rule.margin, "pairs_seen": seen}
    limit = at_limit or (rule.max_samples is not None and seen >= rule.max_samples)

    def undecided(n, reason, **numbers):
        if limit:
            return Decision(
                "insufficient", n, reason + "; no decision by the limit (insufficient evidence)", **base, **numbers
            )
        return Decision("continue", n, reason, **base, **numbers)

    if scale is None or not scale > 0 or not math.isfinite(scale):
        if seen < rule.burn_in:
            return undecided(0, f"{seen} labelled pairs; {rule.burn_in} fix the clip before the test starts")
        scale = float(np.sqrt(np.mean((t[: rule.burn_in] - p[: rule.burn_in]) ** 2)))
        t, c, p = t[rule.burn_in :], c[rule.burn_in :], p[rule.burn_in :]
        if not scale > 0:
            return undecided(0, "production's errors on the burn-in pairs are all zero; there is no scale to clip at")
    n = int(t.size)
    clip_at = rule.clip * scale
    top = clip_at**2 if rule.loss == "squared" else clip_at
    if n < rule.min_samples:
        return undecided(n, f"{n} labelled pairs so far; the gate looks from {rule.min_samples}", clip_at=clip_at)
    ec, ep = t - c, t - p
    lc, lp = clipped_losses(ec, clip_at, rule.loss), clipped_losses(ep, clip_at, rule.loss)
    pass_bound, fail_bound = decision_bounds(lc, lp, top, rule)
    d = lc - lp
    d_upper = _bound_of_mean_g(lc, lp, 1.0, top, rule.error_rate, "upper", rule.boundary)[-1]
    d_lower = _bound_of_mean_g(lc, lp, 1.0, top, rule.error_rate, "lower", rule.boundary)[-1]
    mc, mp = float(lc.mean()), float(lp.mean())
    numbers = {
        "mean_difference": float(d.mean()),
        "difference_interval": (float(d_lower), float(d_upper)),
        "candidate_loss": mc,
        "production_loss": mp,
        "ratio": (mc / mp) if mp > 0 else (1.0 if mc == 0 else math.inf),
        "ratio_interval": _ratio_interval(lc, lp, top, rule.error_rate, rule.boundary),
        "clip_at": clip_at,
        "clipped_share": float(np.mean((np.abs(ec) > clip_at) | (np.abs(ep) > clip_at))),
    }
    if fail_bound[-1] > 0:
        worse = (
            "worse than production"
            if rule.fail_above == "zero"
            else f"worse than production by more than {rule.margin:g}"
        )
        return Decision("fail", n, f"candidate is {worse} (lower bound {fail_bound[-1]:.4g} > 0)", **base, **numbers)
    if pass_bound[-1] < 0:
        return Decision(
            "pass",
            n,
            f"candidate loss <= {1 + rule.margin:g} x production's (upper bound {pass_bound[-1]:.4g} < 0)",
            **base,
            **numbers,
        )
    return undecided(n, f"neither bound has crossed after {n} pairs", **numbers)


def first_decisions(lc, lp, top: float, rule: GateRule, looks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For many releases at once (rows of ``lc``/``lp``, clipped losses in [0, top]), the gate polled at
    sample counts ``looks`` (increasing, each >= 1): (decision per row: +1 pass, -1 fail, 0 none by the last
    look; pairs at the decision). What the benchmark and the planner use; ``decide`` is the same test."""
    pass_bound, fail_bound = decision_bounds(lc, lp, top, rule)
    idx = np.asarray(looks, dtype=int) - 1
    idx = idx[idx >= rule.min_samples - 1]
    passed = pass_bound[..., idx] < 0
    failed = fail_bound[..., idx] > 0
    any_ = passed | failed
    first = np.where(any_.any(axis=-1), any_.argmax(axis=-1), len(idx) - 1)
    rows = np.arange(lc.shape[0])
    outcome = np.where(failed[rows, first], -1, np.where(passed[rows, first], 1, 0))
    return outcome, idx[first] + 1


class PairSequence:
    """Pairs in arrival order across polls: rows seen before keep their places, new rows go to the end
    (sorted by request id and instance within one poll). The confidence sequence is valid for one fixed
    order of the data stream; re-sorting the whole frame at every poll would not be."""

    KEYS = ("request_id", "instance")

    def __init__(self):
        self._order: dict[tuple, int] = {}

    def extend(self, pairs):
        import pandas as pd

        if pairs is None or len(pairs) == 0:
            return pairs
        keys = list(zip(pairs["request_id"].astype(str), pairs["instance"].astype(int)))
        new = sorted(k for k in set(keys) if k not in self._order)
        for k in new:
            self._order[k] = len(self._order)
        rank = pd.Series([self._order[k] for k in keys], index=pairs.index)
        return pairs.loc[rank.sort_values(kind="stable").index].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self._order)
