"""Release decisions with error guarantees: paired, anytime-valid sequential tests that are exact at every
sample count, a tail check for gross errors and per-slice checks (issues 15 and 23).

Input: joined pairs (``truth, candidate, production`` per labelled request, both models answering the
*same* request, and that request's features), in the order they arrived. Output: ``pass``, ``fail`` or
``continue`` (``insufficient`` once ``max_samples`` or the caller's deadline is reached), the check and the
slice that decided it, and every check's estimate with its confidence interval and sample count. Pure
numpy; the shadow gate, every canary step, the release pipeline, the cluster path, the release plan and
``bench/bench_gates.py`` call these functions.

The checks (each a one-sided test on the stream of pairs):

- ``accuracy`` (all requests): per request the clipped losses ``l_c = min(loss(e_c), L)``,
  ``l_p = min(loss(e_p), L)``, ``L = clip x`` production's reference RMSE (squared or absolute error); for a
  ratio ``r`` let ``g_r = l_c - r l_p``. It *passes* when ``E[g_(1+margin)] < 0`` is shown (the candidate's
  loss is at most ``1 + margin`` times production's) and *fails* when ``E[g_1] > 0`` is shown
  (``fail_above: margin``: ``E[g_(1+margin)] > 0``).
- ``tail`` (all requests): the clip caps what one gross error adds to the loss, so gross errors are judged
  on their own: ``T = 1{|e| > tail x reference RMSE}`` (``tail`` defaults to ``clip``, so it counts exactly
  what the clip hides). It *passes* when the candidate's rate of gross errors is shown to be below
  production's plus ``min_exposure`` (``E[T_c - T_p] < min_exposure``) and *fails* when it is shown to be
  above production's (``E[T_c - T_p] > 0``).
- ``slice`` (declared ``slices``: each declared category of a categorical feature, from the model's input
  schema, known before the first pair, so every pair is tested and a value outside them goes to
  ``<feature> other``; or ``slice_bins`` quantile bins of a numeric one, edges fixed on the first
  ``min_samples`` pairs, which are then left out of the slice tests; a categorical feature without declared
  values takes its first values in arrival order, fixed the same way) and ``worst slice``
  (``worst_slice``: the same over every feature's slices, the automatic search; the decision names the
  slice with the most evidence of harm): the accuracy test within the slice's pairs, failing when the
  candidate's loss in the slice is shown to exceed ``1 + slice_margin`` times production's there (like
  TFMA's ``PerSliceMetricThreshold``). A slice only ever fails a candidate.

How they combine. ``pass`` needs ``accuracy`` and ``tail`` to have passed and no check to have failed
first; ``fail`` comes from the first check that fails. A pass is an intersection-union test (Berger,
"Multiparameter hypothesis testing and acceptance sampling", Technometrics 24(4), 1982): each check passes
at the declared ``error_rate``, so a candidate worse in either estimand is promoted with probability at
most ``error_rate``. A fail is a union of tests: the declared ``error_rate`` is split among the checks that
can fail (Bonferroni: accuracy 2 parts, tail, declared slices and the worst-slice search 1 part each, a
slice family's share split evenly over its slices), so a candidate at least as good as production in every
check and within ``slice_margin`` in every slice is failed with probability at most ``error_rate``.

The boundary (``boundary``), for the accuracy check; the tail and slice checks always use ``betting``:

- ``betting`` (default): testing by betting. For a null ``E[z] <= 0`` on observations ``z >= -1`` the
  wealth ``W_t = prod_{i<=t} (1 + lambda_i z_i)`` with ``lambda_i in [0, cap]`` chosen from the pairs
  before ``i`` (the aGRAPA bet ``mean / second moment`` of the past, truncated) is a nonnegative
  supermartingale under the null, so by Ville's inequality ``P(sup_t W_t >= 1/alpha) <= alpha``: the check
  crosses when the wealth reaches ``1/alpha``, and the crossing stays. Waudby-Smith & Ramdas, "Estimating
  means of bounded random variables by betting", JRSS-B 86(1), 2024 (Sections 4-5, aGRAPA in Appendix);
  Shafer, "Testing by betting", JRSS-A 184(2), 2021. Exact at every sample count for bounded losses, no
  asymptotics and no variance estimate: before a rare failure mode has been seen the bet is at most
  ``cap`` of the range, so passing needs at least ``log(1/alpha) / (cap x margin / clip^2)`` pairs even
  when the two models agree everywhere (about 3,000 at the defaults), and each gross error seen costs a
  share ``cap`` of the wealth. The tail check's bet is at most ``TAIL_CAP``: it cannot pass before
  ``log(1/alpha) / (TAIL_CAP x min_exposure)`` pairs (about 1,900 at ``min_exposure`` 0.002, error rate
  0.05), a little over the ``log(1/alpha) / min_exposure`` that any procedure needs to have seen, with
  probability ``1 - alpha``, a failure mode that occurs on a share ``min_exposure`` of requests.
- ``asymptotic`` (the gate before issue 23): the Gaussian-mixture asymptotic confidence sequence of
  Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", Annals of Statistics 2024, with the normal-mixture boundary of Howard, Ramdas,
  McAuliffe & Sekhon, Annals of Statistics 49(2), 2021, eq. (14), ``rho = s_t^2 x 100``. Valid as n grows;
  at small n it plugs in the sample variance, which is near zero before a rare failure has been seen, so a
  candidate that is grossly wrong on 1 % of requests passes within a few dozen pairs
  (``bench/results/gates.md``). Kept for comparison; with the tail check on, a pass still waits for the
  exact tail check (a hybrid), but failures below the clip are then judged asymptotically.
- ``bernstein``: the predictable plug-in empirical-Bernstein confidence sequence (PrPl-EB), Waudby-Smith &
  Ramdas 2024, Theorem 2: exact, but slower than ``betting``.

``confseq`` (Howard & Waudby-Smith's package on PyPI) implements these boundaries one series at a time
(``betting_mart``, with matplotlib and multiprocess imports); the gate's checks and the benchmark need them
vectorised over slices and thousands of simulated releases with every pair a look, so the few lines of
each are here, tested against their definitions (``tests/release/test_decision.py``).

What is guaranteed, and under which assumptions. Pairs are exchangeable draws from the traffic the gate
sees, consumed in arrival order (``PairSequence``), and the reference RMSE (hence ``L``) is fixed before
the first pair (production's held-out RMSE in the registry, or the first ``burn_in`` pairs, which are then
left out). Then, whatever the polling schedule (the gate may look after every label): a candidate whose
clipped loss exceeds ``1 + margin`` times production's, or whose rate of errors above ``tail`` reference
RMSEs exceeds production's by ``min_exposure`` or more, is promoted with probability at most
``error_rate``. The estimand is the winsorised loss plus the gross-error rate, not the raw MSE: a
candidate whose extra MSE comes only from errors rarer than ``min_exposure`` (or from gross errors larger
than production's at the same rate) is outside what any finite sample can guarantee; ``min_exposure``
declares that frequency, and the pairs a pass needs grow as ``1 / min_exposure``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from kfrelease.rollout.spec import GateError, GateRule

DECISIONS = ("pass", "fail", "continue", "insufficient")
CHECKS = ("accuracy", "tail", "slice", "worst slice")
#: Intrinsic time of the normal mixture (in pairs): the boundary is tightest near a few hundred pairs.
MIXTURE_PAIRS = 100.0
#: Largest bet, as a share of the range (the truncation of the betting strategy).
CAP = 0.8
TAIL_CAP = 0.8
#: The betting strategy's prior: one pseudo-observation with mean 0 and this second moment (in range units).
PRIOR_SECOND_MOMENT = 0.25
#: Bonferroni weights of the fail side (see the module docstring).
FAIL_WEIGHTS = {"accuracy": 2.0, "tail": 1.0, "slice": 1.0, "worst slice": 1.0}
#: A categorical feature without declared values: its first values in arrival order are its slices (at most
#: this many, the last one shared by every later value).
MAX_VALUES = 20
ALL = "all requests"


@dataclass
class CheckOutcome:
    """One check on one slice at the last look: its status, estimate and interval (JSON-serialisable)."""

    check: str  # accuracy | tail | slice | worst slice
    slice: str  # "all requests", "sex=2", "bmi in [0.01, 0.05)"
    status: str  # pass | fail | continue
    n: int
    estimate: float | None = None  # accuracy, slices: loss ratio; tail: rate difference (candidate - production)
    interval: tuple[float, float] | None = None
    at: int | None = None  # pairs at which it crossed (pass or fail)
    detail: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["interval"] = list(self.interval) if self.interval is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CheckOutcome:
        return cls(**{**d, "interval": tuple(d["interval"]) if d.get("interval") else None})

    def describe(self) -> str:
        what = "rate difference" if self.check == "tail" else "loss ratio"
        num = f"{what} {_num(self.estimate)}"
        if self.interval is not None:
            num += f" {interval_text(*self.interval)}"
        where = "" if self.slice == ALL else f" {self.slice}"
        return f"{self.check}{where}: {self.status}, {num}, n={self.n}" + (f" ({self.detail})" if self.detail else "")


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
    check: str | None = None  # the check that decided (accuracy | tail | slice | worst slice)
    slice: str | None = None  # the slice it decided on ("all requests" for accuracy and tail)
    decided_at: int | None = None  # pairs at the deciding crossing
    checks: list[dict] = field(default_factory=list)  # every check's CheckOutcome.as_dict()
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("difference_interval", "ratio_interval"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    def describe(self) -> str:
        """One line a person reads: the decision, what decided it, the ratio and its interval, n, the rule,
        then every other check with its interval."""
        if self.ratio_interval is None:
            return f"{self.decision}: {self.reason}"
        lo, hi = self.ratio_interval
        what = "MSE" if self.loss == "squared" else "MAE"
        conf = 100 * (1 - 2 * self.error_rate)
        by = f" (decided by {self.check}" + (f" on {self.slice}" if self.slice and self.slice != ALL else "") + ")"
        head = (
            f"{self.decision}{by if self.check else ''}: candidate/production {what} {_num(self.ratio)} "
            f"{interval_text(lo, hi)} ({conf:g}% confidence sequence) on n={self.n} paired requests; "
            f"margin {self.margin:g}, error rate {self.error_rate:g}"
        )
        rest = "; ".join(CheckOutcome.from_dict(c).describe() for c in self.checks if c["check"] != "accuracy")
        return head + (f"; {rest}" if rest else "")


def interval_text(lo: float, hi: float) -> str:
    """A confidence sequence's interval as a person reads it. The sequence keeps only the values no look has
    excluded (the running intersection), so it is empty (lo > hi) when the looks disagree with each other: the
    requests' mix changed while the pairs came (they were not exchangeable, which the sequence assumes), and no
    single value fits all of them. Said so, rather than printed as an interval whose ends are swapped."""
    if lo > hi:
        return (
            f"[empty: no single value fits every look ({_num(hi)} < {_num(lo)}); the requests' mix changed over time]"
        )
    return f"[{_num(lo)}, {_num(hi)}]"


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}" if abs(x) < 0.01 and x != 0 else f"{x:.3f}"


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


def betting_log_wealth(z: np.ndarray, cap: float = CAP, mask: np.ndarray | None = None) -> np.ndarray:
    """Log-wealth of the aGRAPA bettor against the null ``E[z] <= 0`` (observations ``z >= -1``), for every
    prefix along the last axis: ``sum_i log(1 + lambda_i z_i)`` with ``lambda_i = clip(mean / second moment
    of z_1..z_(i-1), 0, cap)`` (one pseudo-observation of mean 0, second moment ``PRIOR_SECOND_MOMENT``).
    ``mask``: the observations that count (a slice); the others leave the wealth unchanged."""
    z = np.asarray(z, dtype="float64")
    if mask is not None:
        z = np.where(mask, z, 0.0)
        count = np.cumsum(mask, axis=-1, dtype="float64")
    else:
        count = np.broadcast_to(np.arange(1, z.shape[-1] + 1, dtype="float64"), z.shape)
    lead = [(0, 0)] * (z.ndim - 1) + [(1, 0)]

    def before(a):  # the value after the previous pair: predictable
        return np.pad(a[..., :-1], lead)

    s1, s2 = before(np.cumsum(z, axis=-1)), before(np.cumsum(z * z, axis=-1))
    k = 1.0 + before(count)
    lam = np.clip((s1 / k) / ((PRIOR_SECOND_MOMENT + s2) / k), 0.0, cap)
    return np.cumsum(np.log1p(lam * z), axis=-1)


def _crossed(hit: np.ndarray, start: int = 0) -> np.ndarray:
    """Sticky crossings: True from the first prefix (at or after index ``start``) where ``hit`` holds."""
    hit = hit.copy()
    hit[..., :start] = False
    return np.logical_or.accumulate(hit, axis=-1)


def _bound_of_mean_g(lc, lp, r: float, top, alpha: float, side: str, boundary: str = "asymptotic") -> np.ndarray:
    """Confidence bound on E[lc - r lp] for every prefix; lc, lp in [0, top] (asymptotic, bernstein)."""
    if boundary == "asymptotic":
        return mixture_bounds(lc - r * lp, alpha, side)
    x = (lc - r * lp + r * top) / ((1 + r) * top)  # in [0, 1]
    b = upper_bounds(x, alpha) if side == "upper" else lower_bounds(x, alpha)
    return b * (1 + r) * top - r * top


def _loss_hits(lc, lp, top, r: float, alpha: float, side: str, boundary: str, mask=None) -> np.ndarray:
    """Per prefix: does the evidence show E[lc - r lp] < 0 (side "below") or > 0 ("above")?"""
    if boundary == "betting" or mask is not None:
        if side == "below":
            z = -(lc - r * lp) / top  # >= -1 since lc <= top
        else:
            z = (lc - r * lp) / (r * top)  # >= -1 since lp <= top
        return betting_log_wealth(z, CAP, mask) >= math.log(1.0 / alpha)
    if side == "below":
        return _bound_of_mean_g(lc, lp, r, top, alpha, "upper", boundary) < 0
    return _bound_of_mean_g(lc, lp, r, top, alpha, "lower", boundary) > 0


def _tail_hits(dt, delta: float, alpha: float, side: str) -> np.ndarray:
    """Per prefix: does the evidence show E[dt] < delta ("below") or E[dt] > delta ("above")? dt in {-1, 0, 1}."""
    if side == "below":
        z = (delta - dt) / (1.0 - delta)  # >= -1
    else:
        z = (dt - delta) / (1.0 + delta)  # >= -1
    return betting_log_wealth(z, TAIL_CAP) >= math.log(1.0 / alpha)


def decision_bounds(lc, lp, top, rule: GateRule) -> tuple[np.ndarray, np.ndarray]:
    """(pass bound, fail bound) of the accuracy check for every prefix (``asymptotic``/``bernstein``): pass
    where the first is < 0, fail where the second is > 0."""
    r_fail = 1.0 + (rule.margin if rule.fail_above == "margin" else 0.0)
    upper = _bound_of_mean_g(lc, lp, 1.0 + rule.margin, top, rule.error_rate, "upper", rule.boundary)
    lower = _bound_of_mean_g(lc, lp, r_fail, top, rule.error_rate, "lower", rule.boundary)
    return upper, lower


# --- slices ---------------------------------------------------------------------------------------------


@dataclass
class SliceFamily:
    """The slices of one feature: codes per pair (-1: left out, the pairs that fixed the slices)."""

    feature: str
    labels: list[str]
    codes: np.ndarray


def slice_family(
    feature: str, values, fixed_on: int, bins: int, categories: Sequence[str] | None = None
) -> SliceFamily:
    """The slices of one feature. ``categories``: its declared values (the model's input schema), known before
    any pair: each is a slice, in their declared order, and ``<feature> other`` holds any other value (a
    feature whose unknown values are passed to the model); every pair is tested. Otherwise quantile bins of
    a numeric feature or the first values of a categorical one, fixed on the first ``fixed_on`` values
    (those pairs are left out of the slice tests: code -1)."""
    v = np.asarray(values)
    if categories is not None:
        index = {x: j for j, x in enumerate(categories)}
        codes = np.fromiter((index.get(x, len(index)) for x in v.tolist()), dtype=int, count=v.size)
        return SliceFamily(feature, [f"{feature}={x}" for x in categories] + [f"{feature} other"], codes)
    head = v[:fixed_on]
    codes = np.full(v.shape, -1, dtype=int)
    if v.dtype.kind in "iuf" and len(np.unique(head)) > bins:
        x = v.astype("float64")
        edges = np.unique(np.quantile(x[:fixed_on], np.arange(1, bins) / bins))
        codes[fixed_on:] = np.searchsorted(edges, x[fixed_on:], side="right")
        bounds = [-math.inf, *edges.tolist(), math.inf]
        labels = [f"{feature} in [{_edge(bounds[j])}, {_edge(bounds[j + 1])})" for j in range(len(bounds) - 1)]
        return SliceFamily(feature, labels, codes)
    seen: list = []
    for x in head.tolist():
        if x not in seen and len(seen) < MAX_VALUES - 1:
            seen.append(x)
    index = {x: j for j, x in enumerate(seen)}
    other = len(seen)
    codes[fixed_on:] = [index.get(x, other) for x in v[fixed_on:].tolist()]
    shown = [f"{x:.4g}" if isinstance(x, float) else str(x) for x in seen]
    return SliceFamily(feature, [f"{feature}={x}" for x in shown] + [f"{feature} other"], codes)


def _edge(x: float) -> str:
    return "-inf" if x == -math.inf else "inf" if x == math.inf else f"{x:.4g}"


def fail_alphas(rule: GateRule, families: dict[str, int]) -> dict[str, float]:
    """The fail side's error rate of each check (``families``: slices per check, e.g. {"slice": 8})."""
    present = {"accuracy": FAIL_WEIGHTS["accuracy"]}
    if rule.min_exposure > 0:
        present["tail"] = FAIL_WEIGHTS["tail"]
    for name, count in families.items():
        if count:
            present[name] = FAIL_WEIGHTS[name]
    total = sum(present.values())
    return {name: rule.error_rate * w / total for name, w in present.items()}


# --- the checks over every prefix ------------------------------------------------------------------------


@dataclass
class Traces:
    """Sticky crossings per check for every prefix (rows: releases; columns: pairs)."""

    pass_checks: dict[str, np.ndarray]  # check -> pass crossed
    fail_checks: dict[tuple[str, str], np.ndarray]  # (check, slice) -> fail crossed
    lc: np.ndarray
    lp: np.ndarray
    top: np.ndarray
    dt: np.ndarray | None
    families: dict[str, list[SliceFamily]]
    alphas: dict[str, float]


def check_traces(
    ec, ep, scale, rule: GateRule, features: dict | None = None, categories: Mapping[str, Sequence[str]] | None = None
) -> Traces:
    """Every check of ``rule`` on the errors ``ec``, ``ep`` (rows: releases, columns: pairs in arrival order),
    ``scale`` the reference RMSE (per row), ``features`` name -> values (rows x pairs) for the slices,
    ``categories`` name -> declared values of the categorical ones (their slices, see ``slice_family``)."""
    ec, ep = np.atleast_2d(np.asarray(ec, "float64")), np.atleast_2d(np.asarray(ep, "float64"))
    scale = np.asarray(scale, "float64").reshape(-1, 1)
    clip_at = rule.clip * scale
    lc, lp = clipped_losses(ec, clip_at, rule.loss), clipped_losses(ep, clip_at, rule.loss)
    top = np.broadcast_to(clip_at**2 if rule.loss == "squared" else clip_at, lc.shape)
    start = rule.min_labelled_samples - 1
    families: dict[str, list[SliceFamily]] = {"slice": [], "worst slice": []}
    features = features or {}
    for name, values in features.items():
        rows = np.atleast_2d(np.asarray(values))
        declared = (categories or {}).get(name)
        fams = [slice_family(name, row, rule.min_labelled_samples, rule.slice_bins, declared) for row in rows]
        if name in rule.slices:
            families["slice"].append(fams)
        if rule.worst_slice:
            families["worst slice"].append(fams)
    missing = [s for s in rule.slices if s not in features]
    if missing:
        raise GateError(f"declared slices {missing} are not features of the pairs ({', '.join(features) or 'none'})")
    alphas = fail_alphas(rule, {k: len(v) for k, v in families.items()})
    r_fail = 1.0 + (rule.margin if rule.fail_above == "margin" else 0.0)
    passes = {
        "accuracy": _crossed(_loss_hits(lc, lp, top, 1.0 + rule.margin, rule.error_rate, "below", rule.boundary), start)
    }
    fails = {
        ("accuracy", ALL): _crossed(_loss_hits(lc, lp, top, r_fail, alphas["accuracy"], "above", rule.boundary), start)
    }
    dt = None
    if rule.min_exposure > 0:
        at = rule.tail_at * scale
        dt = (np.abs(ec) > at).astype("float64") - (np.abs(ep) > at)
        passes["tail"] = _crossed(_tail_hits(dt, rule.min_exposure, rule.error_rate, "below"), start)
        fails[("tail", ALL)] = _crossed(_tail_hits(dt, 0.0, alphas["tail"], "above"), start)
    rs = 1.0 + rule.slice_margin
    out_families: dict[str, list[SliceFamily]] = {}
    for check, fams_by_feature in families.items():
        if not fams_by_feature:
            continue
        per_feature = alphas[check] / len(fams_by_feature)
        out_families[check] = [f[0] for f in fams_by_feature]
        for fams in fams_by_feature:
            codes = np.stack([f.codes for f in fams])
            k = max(len(f.labels) for f in fams)
            a = per_feature / k
            for j in range(k):
                mask = codes == j
                hit = _loss_hits(lc, lp, top, rs, a, "above", "betting", mask)
                enough = np.cumsum(mask, axis=-1) >= rule.min_labelled_samples
                fails[(check, fams[0].labels[j] if j < len(fams[0].labels) else f"{fams[0].feature} #{j}")] = _crossed(
                    hit & enough
                )
    return Traces(passes, fails, lc, lp, top, dt, out_families, alphas)


def first_events(tr: Traces) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Per row: (+1 pass, -1 fail, 0 none; index of the deciding pair, -1 for none; the deciding check
    names; index into them). A pass is when the last pass check crossed; a fail the first fail crossing; a
    fail at the same pair as the pass wins."""
    n = tr.lc.shape[-1]
    never = n

    def first(crossed):
        return np.where(crossed[..., -1], crossed.argmax(axis=-1), never)

    pass_names = list(tr.pass_checks)
    pass_times = np.stack([first(c) for c in tr.pass_checks.values()])
    pass_at = pass_times.max(axis=0)
    pass_by = pass_times.argmax(axis=0)
    fail_keys = list(tr.fail_checks)
    fail_times = np.stack([first(c) for c in tr.fail_checks.values()])
    fail_at = fail_times.min(axis=0)
    fail_by = fail_times.argmin(axis=0)
    outcome = np.where(fail_at <= pass_at, np.where(fail_at < never, -1, 0), np.where(pass_at < never, 1, 0))
    at = np.where(outcome == -1, fail_at, np.where(outcome == 1, pass_at, -1))
    names = [f"pass:{p}" for p in pass_names] + [f"fail:{c}:{s}" for c, s in fail_keys]
    by = np.where(outcome == -1, len(pass_names) + fail_by, np.where(outcome == 1, pass_by, -1))
    return outcome, at, names, by


def simulate_gate(
    ec, ep, scale, rule: GateRule, features: dict | None = None, looks=None, categories: Mapping | None = None
):
    """For many releases at once (rows of ``ec``/``ep``: both models' errors on the same requests), the
    gate looking at ``looks`` (pair counts, increasing; None: after every pair): (decision per row: +1 pass,
    -1 fail, 0 none by the last pair; pairs at the look that saw it, or all pairs; the deciding check per
    row as an index into the returned names). What the benchmark and the release plan use; ``decide`` is
    the same test on one release; ``categories`` as there."""
    tr = check_traces(ec, ep, scale, rule, features, categories)
    outcome, at, names, by = first_events(tr)
    n = tr.lc.shape[-1]
    if looks is None:
        seen = np.where(outcome != 0, at + 1, n)
    else:
        looks = np.asarray(looks, dtype=int)
        idx = np.searchsorted(looks, at + 1, side="left")
        late = (outcome != 0) & (idx >= len(looks))
        outcome = np.where(late, 0, outcome)
        seen = np.where(outcome != 0, looks[np.minimum(idx, len(looks) - 1)], min(int(looks[-1]), n))
    return outcome, seen, names, by


# --- intervals (reports) ---------------------------------------------------------------------------------


def _smallest(pred, lo: float, hi: float, iterations: int = 30) -> float:
    """Smallest x in [lo, hi] where ``pred`` holds (it holds for every larger x); inf when not even at hi."""
    if not pred(hi):
        return math.inf
    if pred(lo):
        return lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def _ratio_interval(lc, lp, top, alpha_pass, alpha_fail, boundary, start, mask=None) -> tuple[float, float]:
    """The ratios r not excluded at any prefix (the running intersection of the confidence sequence)."""

    def passed(r):
        return bool(_crossed(_loss_hits(lc, lp, top, r, alpha_pass, "below", boundary, mask), start)[..., -1].all())

    def not_failed(r):
        return not bool(_crossed(_loss_hits(lc, lp, top, r, alpha_fail, "above", boundary, mask), start)[..., -1].all())

    return _smallest(not_failed, 1e-3, 64.0), _smallest(passed, 0.0, 64.0)


def _rate_interval(dt, alpha_pass, alpha_fail, start) -> tuple[float, float]:
    def passed(d):
        return bool(_crossed(_tail_hits(dt, d, alpha_pass, "below"), start)[..., -1].all())

    def not_failed(d):
        return not bool(_crossed(_tail_hits(dt, d, alpha_fail, "above"), start)[..., -1].all())

    return _smallest(not_failed, -0.999, 0.999), _smallest(passed, -0.999, 0.999)


# --- the decision ---------------------------------------------------------------------------------------


def _feature_columns(features, n: int) -> dict:
    if features is None:
        return {}
    cols = {
        name: np.asarray(features[name]) for name in (features.columns if hasattr(features, "columns") else features)
    }
    for name, values in cols.items():
        if values.shape[-1] != n:
            raise GateError(f"feature {name!r} has {values.shape[-1]} values for {n} pairs; they pair up row by row")
    return cols


def decide(
    truth,
    candidate,
    production,
    rule: GateRule,
    scale: float | None = None,
    *,
    features=None,
    categories: Mapping[str, Sequence[str]] | None = None,
    at_limit: bool = False,
) -> Decision:
    """The decision on pairs in arrival order (see the module docstring).

    ``scale``: production's reference RMSE fixed before the first pair (its held-out RMSE); None uses the
    first ``rule.burn_in`` pairs. ``features``: the requests' features (a DataFrame or name -> values, row
    by row with the pairs) for the slice checks. ``categories``: the declared values of the categorical
    features (``kfrelease.registry.artifact.declared_categories`` of the candidate's input schema): each one
    is a slice of its feature from the first pair. ``at_limit``: the caller's deadline
    (``max_wait_seconds``) has passed, so an undecided test ends ``insufficient``."""
    t = np.asarray(truth, dtype="float64").ravel()
    c = np.asarray(candidate, dtype="float64").ravel()
    p = np.asarray(production, dtype="float64").ravel()
    if not (t.size == c.size == p.size):
        raise GateError(
            f"truth, candidate and production have {t.size}, {c.size}, {p.size} values; they pair up row by row"
        )
    if not (np.isfinite(t).all() and np.isfinite(c).all() and np.isfinite(p).all()):
        raise GateError("pairs contain NaN or infinity; the join must drop unlabelled or failed requests")
    cols = _feature_columns(features, t.size)
    usable = {k: v for k, v in cols.items() if k in rule.slices or rule.worst_slice}
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
        usable = {k: v[rule.burn_in :] for k, v in usable.items()}
        if not scale > 0:
            return undecided(0, "production's errors on the burn-in pairs are all zero; there is no scale to clip at")
    n = int(t.size)
    clip_at = rule.clip * scale
    if n < rule.min_labelled_samples:
        return undecided(
            n, f"{n} labelled pairs so far; the gate looks from {rule.min_labelled_samples}", clip_at=clip_at
        )
    ec, ep = t - c, t - p
    tr = check_traces(ec, ep, scale, rule, usable, categories)
    outcome, at, names, by = first_events(tr)
    lc, lp, top = tr.lc[0], tr.lp[0], tr.top[0]
    start = rule.min_labelled_samples - 1
    mc, mp = float(lc.mean()), float(lp.mean())
    ratio_interval = _ratio_interval(lc, lp, top, rule.error_rate, tr.alphas["accuracy"], rule.boundary, start)
    d = lc - lp
    d_interval = (
        float(
            _smallest(
                lambda x: not _shifted_fail(lc, lp, top, x, tr.alphas["accuracy"], start),
                -0.999 * top[0],
                0.999 * top[0],
            )
        ),
        float(
            _smallest(lambda x: _shifted_pass(lc, lp, top, x, rule.error_rate, start), -0.999 * top[0], 0.999 * top[0])
        ),
    )
    checks = [_accuracy_outcome(tr, rule, mc, mp, ratio_interval)]
    if tr.dt is not None:
        checks.append(_tail_outcome(tr, rule, ec, ep, scale))
    checks += _slice_outcomes(tr, rule, start)
    numbers = {
        "mean_difference": float(d.mean()),
        "difference_interval": d_interval,
        "candidate_loss": mc,
        "production_loss": mp,
        "ratio": (mc / mp) if mp > 0 else (1.0 if mc == 0 else math.inf),
        "ratio_interval": ratio_interval,
        "clip_at": clip_at,
        "clipped_share": float(np.mean((np.abs(ec) > clip_at) | (np.abs(ep) > clip_at))),
        "checks": [o.as_dict() for o in checks],
    }
    if outcome[0] == 0:
        waiting = [o for o in checks if o.check in ("accuracy", "tail") and o.status != "pass"]
        return undecided(
            n,
            f"neither pass nor fail after {n} pairs; waiting for "
            + ", ".join(f"{o.check} ({o.describe()})" for o in waiting),
            **numbers,
        )
    kind, check, where = _named(names[int(by[0])])
    deciding = next((o for o in checks if o.check == check and o.slice == where), None)
    found = {"check": check, "slice": where, "decided_at": int(at[0]) + 1}
    if kind == "fail":
        what = (
            "more gross errors than production"
            if check == "tail"
            else (
                "worse than production" + (f" by more than {rule.margin:g}" if rule.fail_above == "margin" else "")
                if check == "accuracy"
                else f"worse than production by more than {rule.slice_margin:g}"
            )
        )
        return Decision(
            "fail",
            n,
            f"candidate is {what} on {where} ({check} check, shown at pair {int(at[0]) + 1}): "
            + (deciding.describe() if deciding else ""),
            **base,
            **numbers,
            **found,
        )
    return Decision(
        "pass",
        n,
        f"accuracy and tail passed by pair {int(at[0]) + 1} (last: {check}); candidate loss <= "
        f"{1 + rule.margin:g} x production's",
        **base,
        **numbers,
        **found,
    )


def _named(name: str) -> tuple[str, str, str]:
    kind, _, rest = name.partition(":")
    if kind == "pass":
        return kind, rest, ALL
    check, _, where = rest.partition(":")
    return kind, check, where


def _shifted_pass(lc, lp, top, x, alpha, start) -> bool:
    """E[lc - lp] < x shown (lc - lp <= top, so the bet is on (x - (lc - lp)) / (top - x) >= -1)."""
    z = (x - (lc - lp)) / (top - x)
    return bool(_crossed(betting_log_wealth(z) >= math.log(1 / alpha), start)[-1])


def _shifted_fail(lc, lp, top, x, alpha, start) -> bool:
    """E[lc - lp] > x shown (lc - lp >= -top)."""
    z = ((lc - lp) - x) / (top + x)
    return bool(_crossed(betting_log_wealth(z) >= math.log(1 / alpha), start)[-1])


def _status(tr: Traces, pass_key: str | None, fail_key) -> tuple[str, int | None]:
    fail = tr.fail_checks.get(fail_key)
    p = tr.pass_checks.get(pass_key) if pass_key else None
    f_at = int(fail[0].argmax()) if fail is not None and fail[0, -1] else None
    p_at = int(p[0].argmax()) if p is not None and p[0, -1] else None
    if f_at is not None and (p_at is None or f_at <= p_at):
        return "fail", f_at + 1
    if p_at is not None:
        return "pass", p_at + 1
    return "continue", None


def _accuracy_outcome(tr, rule, mc, mp, interval) -> CheckOutcome:
    status, at = _status(tr, "accuracy", ("accuracy", ALL))
    ratio = (mc / mp) if mp > 0 else (1.0 if mc == 0 else math.inf)
    return CheckOutcome(
        "accuracy", ALL, status, int(tr.lc.shape[-1]), ratio, interval, at, f"pass below {1 + rule.margin:g}"
    )


def _tail_outcome(tr, rule, ec, ep, scale) -> CheckOutcome:
    status, at = _status(tr, "tail", ("tail", ALL))
    at_err = rule.tail_at * scale
    rc, rp = float(np.mean(np.abs(ec) > at_err)), float(np.mean(np.abs(ep) > at_err))
    interval = _rate_interval(tr.dt[0], rule.error_rate, tr.alphas["tail"], rule.min_labelled_samples - 1)
    return CheckOutcome(
        "tail",
        ALL,
        status,
        int(tr.dt.shape[-1]),
        rc - rp,
        interval,
        at,
        f"errors above {rule.tail_at:g} x {scale:.4g}: candidate {rc:.4f}, production {rp:.4f}; pass below "
        f"+{rule.min_exposure:g}",
    )


def _slice_outcomes(tr: Traces, rule: GateRule, start: int) -> list[CheckOutcome]:
    """Every declared slice, and the worst slice of the search (the one with the most evidence of harm)."""
    out = []
    rs = 1.0 + rule.slice_margin
    for check, fams in tr.families.items():
        k_all = {f.feature: len(f.labels) for f in fams}
        candidates = []
        for fam in fams:
            a = tr.alphas[check] / len(fams) / k_all[fam.feature]
            for j, label in enumerate(fam.labels):
                mask = fam.codes == j
                if not mask.any():
                    continue
                lc, lp = tr.lc[0][mask], tr.lp[0][mask]
                ratio = float(lc.mean() / lp.mean()) if lp.mean() > 0 else (1.0 if lc.mean() == 0 else math.inf)
                z = (tr.lc[0] - rs * tr.lp[0]) / (rs * tr.top[0])
                wealth = float(betting_log_wealth(z, CAP, mask).max())
                candidates.append((check, label, mask, a, ratio, wealth))
        if check == "worst slice" and candidates:
            candidates = [max(candidates, key=lambda x: (tr.fail_checks[(x[0], x[1])][0, -1], x[5], x[4]))]
        for check_, label, mask, a, ratio, _ in candidates:
            status, at = _status(tr, None, (check_, label))
            lo, hi = _ratio_interval(tr.lc[0], tr.lp[0], tr.top[0], a, a, "betting", 0, mask)
            out.append(
                CheckOutcome(
                    check_,
                    label,
                    status,
                    int(mask.sum()),
                    ratio,
                    (lo, hi),
                    at,
                    f"fail above {rs:g}, error rate {a:.2g}",
                )
            )
    return out


class PairSequence:
    """Pairs in arrival order across polls: rows seen before keep their places, new rows go to the end
    (sorted by request id and instance within one poll). The confidence sequence is valid for one fixed
    order of the data stream; re-sorting the whole frame at every poll would not be."""

    KEYS = ("request_id", "instance")

    def __init__(self):
        self._order: dict[tuple, int] = {}

    def extend(self, pairs):
        import pandas as pd  # heavy: pandas

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


# --- one sample: the candidate against the spec's absolute thresholds ---------------------------------------

#: The model spec's absolute thresholds and the loss each is a limit of (``min_r2`` becomes an MSE limit).
THRESHOLD_LOSS = {"max_mse": "squared", "max_rmse": "squared", "max_mae": "absolute", "min_r2": "squared"}


def threshold_limit(key: str, value: float, target_variance: float | None = None) -> float:
    """The mean-loss limit of one threshold: MSE for ``max_mse``/``max_rmse``/``min_r2`` (``(1 - min_r2) x``
    the target's variance, fixed before the first pair), MAE for ``max_mae``."""
    if key == "max_rmse":
        return value**2
    if key == "min_r2":
        if not target_variance or target_variance <= 0:
            raise GateError("min_r2 needs the target's variance (from the held-out split) to become an MSE limit")
        return (1.0 - value) * target_variance
    if key in ("max_mse", "max_mae"):
        return value
    raise GateError(f"threshold {key!r} is unknown; use one of {', '.join(THRESHOLD_LOSS)}")


def threshold_decide(truth, prediction, key: str, limit: float, rule: GateRule, *, at_limit: bool = False) -> Decision:
    """One-sample sequential test of the candidate's own labelled answers against an absolute limit of its
    mean loss (``threshold_limit``): for a first model of a tag or a tag bump, where production's answers are
    not comparable. The loss is clipped at ``clip x`` the limit's RMSE (MAE); ``pass`` when the clipped mean
    loss is shown below the limit and the rate of errors above ``tail x`` that scale is shown below
    ``min_exposure``; ``fail`` when either is shown above (a clipped mean above the limit means the true
    mean is above it too). The same betting e-processes and guarantees as the paired checks."""
    t = np.asarray(truth, dtype="float64").ravel()
    y = np.asarray(prediction, dtype="float64").ravel()
    if t.size != y.size:
        raise GateError(f"truth and prediction have {t.size} and {y.size} values; they pair up row by row")
    if not (np.isfinite(t).all() and np.isfinite(y).all()):
        raise GateError("pairs contain NaN or infinity; the join must drop unlabelled or failed requests")
    if not limit > 0:
        raise GateError(f"threshold {key} gives a loss limit of {limit}; it must be above 0")
    loss = THRESHOLD_LOSS[key]
    scale = math.sqrt(limit) if loss == "squared" else limit
    clip_at = rule.clip * scale
    top = clip_at**2 if loss == "squared" else clip_at
    n = int(t.size)
    base = {"loss": loss, "error_rate": rule.error_rate, "margin": 0.0, "pairs_seen": n, "clip_at": clip_at}
    limited = at_limit or (rule.max_samples is not None and n >= rule.max_samples)
    name = f"threshold:{key}"
    if n < rule.min_labelled_samples:
        reason = f"{n} labelled requests so far; the threshold check looks from {rule.min_labelled_samples}"
        return Decision("insufficient" if limited else "continue", n, reason, **base)
    e = t - y
    x = clipped_losses(e, clip_at, loss) / top
    theta = limit / top
    start = rule.min_labelled_samples - 1
    weights = {"threshold": 2.0, "tail": 1.0} if rule.min_exposure > 0 else {"threshold": 1.0}
    a_fail = {k: rule.error_rate * w / sum(weights.values()) for k, w in weights.items()}

    def below(th, alpha):  # E[x] < th shown
        return _crossed(betting_log_wealth((th - x) / (1 - th)) >= math.log(1 / alpha), start)[-1]

    def above(th, alpha):  # E[x] > th shown
        return _crossed(betting_log_wealth((x - th) / th) >= math.log(1 / alpha), start)[-1]

    passed = {"threshold": bool(below(theta, rule.error_rate))}
    failed = {"threshold": bool(above(theta, a_fail["threshold"]))}
    lo = _smallest(lambda th: not above(th, a_fail["threshold"]), 1e-6, 1 - 1e-6) * top / limit
    hi = _smallest(lambda th: below(th, rule.error_rate), 1e-6, 1 - 1e-6) * top / limit
    estimate = float(x.mean()) * top / limit
    checks = [CheckOutcome(name, ALL, _one(passed["threshold"], failed["threshold"]), n, estimate, (lo, hi))]
    if rule.min_exposure > 0:
        d = rule.min_exposure
        g = (np.abs(e) > rule.tail_at * scale).astype("float64")
        passed["tail"] = bool(
            _crossed(betting_log_wealth((d - g) / (1 - d), TAIL_CAP) >= math.log(1 / rule.error_rate), start)[-1]
        )
        failed["tail"] = bool(
            _crossed(betting_log_wealth((g - d) / d, TAIL_CAP) >= math.log(1 / a_fail["tail"]), start)[-1]
        )
        checks.append(
            CheckOutcome(
                "tail",
                ALL,
                _one(passed["tail"], failed["tail"]),
                n,
                float(g.mean()),
                None,
                detail=f"errors above {rule.tail_at:g} x {scale:.4g}: {float(g.mean()):.4f}; pass below {d:g}",
            )
        )
    numbers = {
        "candidate_loss": float(x.mean() * top),
        "production_loss": limit,
        "ratio": estimate,
        "ratio_interval": (lo, hi),
        "clipped_share": float(np.mean(np.abs(e) > clip_at)),
        "checks": [o.as_dict() for o in checks],
        "extra": {"threshold": key, "limit": limit},
    }
    what = f"{'MSE' if loss == 'squared' else 'MAE'} / limit"
    head = f"{what} {estimate:.3f} [{_num(lo)}, {_num(hi)}] on n={n} labelled requests ({key})"
    if any(failed.values()):
        by = "tail" if failed.get("tail") and not failed["threshold"] else name
        return Decision("fail", n, f"{by} failed: {head}", **base, **numbers, check=by, slice=ALL)
    if all(passed.values()):
        return Decision("pass", n, f"{name} passed: {head}", **base, **numbers, check=name, slice=ALL)
    reason = f"no decision yet: {head}"
    if limited:
        return Decision(
            "insufficient", n, reason + "; no decision by the limit (insufficient evidence)", **base, **numbers
        )
    return Decision("continue", n, reason, **base, **numbers)


def _one(passed: bool, failed: bool) -> str:
    return "fail" if failed else "pass" if passed else "continue"
