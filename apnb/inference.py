"""The tests a claim of the claims table (``apnb/claims.yml``, :mod:`apnb.claims`) is decided by, on per-seed
paired differences: superiority, non-inferiority, equivalence (two one-sided tests, TOST) and the fraction of a
drift recovered, with Holm's correction over a family and the minimum detectable effect at a number of seeds.

Every test is one-sided at ``ALPHA`` = 0.025, so that its decision agrees with the 95 % two-sided t-interval the
book prints: a superiority claim is supported when that interval excludes 0 on the paper's side, a
non-inferiority claim when its lower end lies above ``-margin``, an equivalence claim when the whole interval lies
inside ``(-margin, margin)`` (stricter than the common 90 % TOST interval, on purpose: one interval, one alpha).
Each test returns the one-sided p-value of the hypothesis the claim asserts, so that one Holm correction covers
a family of mixed tests. References: Schuirmann (1987) for TOST; Holm (1979); the ratio's interval is the
delta method (linearised ratio estimator).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.025  # one-sided; the two-sided 95 % interval shown beside each decision
TESTS = ("superiority", "noninferiority", "equivalence", "restores", "estimate")


@dataclass
class Result:
    """One claim's numbers: the mean paired difference ``estimate`` with its two-sided 95 % interval
    (``lo``, ``hi``) over ``n`` seeds, the one-sided ``p`` of what the claim asserts (NaN where it cannot be
    computed), ``against`` (the data contradict the claim: the interval lies wholly on the other side of its
    boundary), and test-specific ``extra`` values (the fraction recovered and its interval for ``restores``)."""

    test: str
    n: int
    estimate: float
    lo: float
    hi: float
    p: float = float("nan")
    against: bool = False
    margin: float | None = None
    sign: int = 1
    extra: dict = field(default_factory=dict)


def clean(values) -> np.ndarray:
    """The values as a flat float array, NaN (and None) dropped."""
    v = np.ravel(np.asarray(values, float))
    return v[~np.isnan(v)]


def interval(d, level: float = 0.95) -> tuple[float, float, float, int, float]:
    """Mean, two-sided t-interval (lo, hi), n and standard error of the values ``d`` (NaN ends for n < 2)."""
    d = clean(d)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0, float("nan")
    mu = float(d.mean())
    if n == 1:
        return mu, float("nan"), float("nan"), 1, float("nan")
    sd = float(d.std(ddof=1))
    half = half_width(n, sd, level)
    return mu, mu - half, mu + half, n, sd / math.sqrt(n)


def half_width(n: int, sd: float, level: float = 0.95) -> float:
    """The half-width of the two-sided t-interval at ``level`` for the mean of ``n`` values of standard deviation
    ``sd`` (NaN for n < 2)."""
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n >= 2 else float("nan")


def _p_above(mu: float, bound: float, se: float, n: int) -> float:
    """One-sided p of H0: mean <= bound (small when the mean is clearly above ``bound``)."""
    if n < 2:
        return float("nan")
    if se == 0:
        return 0.0 if mu > bound else 1.0
    return float(stats.t.sf((mu - bound) / se, n - 1))


def superiority(d, sign: int = 1) -> Result:
    """The mean of ``d`` differs from 0 on the side ``sign`` (+1 an increase, -1 a decrease)."""
    mu, lo, hi, n, se = interval(d)
    p = _p_above(sign * mu, 0.0, se, n)
    against = n >= 2 and (hi < 0 if sign > 0 else lo > 0)
    return Result("superiority", n, mu, lo, hi, p, bool(against), None, sign)


def noninferiority(d, margin: float, sign: int = 1) -> Result:
    """The mean of ``d`` is not worse than ``-margin`` on the side ``sign`` (``sign`` +1: higher is better)."""
    if not margin > 0:
        raise ValueError(f"a non-inferiority margin must be positive, not {margin}")
    mu, lo, hi, n, se = interval(d)
    p = _p_above(sign * mu, -margin, se, n)
    against = n >= 2 and max(sign * lo, sign * hi) < -margin  # the whole interval worse than the margin
    return Result("noninferiority", n, mu, lo, hi, p, bool(against), margin, sign)


def equivalence(d, margin: float) -> Result:
    """TOST: the mean of ``d`` lies inside ``(-margin, margin)``; ``against`` when the interval lies wholly
    outside it."""
    if not margin > 0:
        raise ValueError(f"an equivalence margin must be positive, not {margin}")
    mu, lo, hi, n, se = interval(d)
    p = max(_p_above(mu, -margin, se, n), _p_above(-mu, -margin, se, n)) if n >= 2 else float("nan")
    against = n >= 2 and (lo > margin or hi < -margin)
    return Result("equivalence", n, mu, lo, hi, p, bool(against), margin, 0)


def _aligned(teacher, naive, matched):
    """Per-seed arrays of equal length (a single teacher value broadcast), the seeds with a NaN dropped."""
    n_, m_ = np.asarray(naive, float).ravel(), np.asarray(matched, float).ravel()
    if n_.shape != m_.shape:
        raise ValueError(f"one naive and one matched value per seed are needed, got {n_.size} and {m_.size}")
    t_ = np.broadcast_to(np.asarray(teacher, float).ravel(), n_.shape) if np.size(teacher) == 1 else \
        np.asarray(teacher, float).ravel()
    keep = np.isfinite(t_) & np.isfinite(n_) & np.isfinite(m_)
    return t_[keep], n_[keep], m_[keep]


def drift_recovered(teacher, naive, matched) -> dict:
    """The fraction of the teacher-to-naive drift that the matched network recovers,
    ``mean(matched - naive) / mean(teacher - naive)`` over seeds (``teacher`` may be one number), with its 95 %
    delta-method interval: 1 is full recovery, 0 none. NaN where the mean drift is 0 or there is one seed."""
    t_, n_, m_ = _aligned(teacher, naive, matched)
    a, b = m_ - n_, t_ - n_
    n = len(a)
    if n == 0 or b.mean() == 0:
        return {"fraction": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": n}
    f = float(a.mean() / b.mean())
    if n < 2:
        return {"fraction": f, "lo": float("nan"), "hi": float("nan"), "n": n}
    resid = a - f * b
    se = float(resid.std(ddof=1) / (math.sqrt(n) * abs(b.mean())))
    half = float(stats.t.ppf(0.975, n - 1) * se)
    return {"fraction": f, "lo": f - half, "hi": f + half, "n": n}


def restores(teacher, naive, matched, margin: float) -> Result:
    """"Restores the teacher": the matched network is equivalent to the teacher within ``margin`` (TOST on
    ``matched - teacher``), with the fraction of the drift recovered (:func:`drift_recovered`) in ``extra``."""
    t_, n_, m_ = _aligned(teacher, naive, matched)
    r = equivalence(m_ - t_, margin)
    r.test = "restores"
    r.extra = drift_recovered(t_, n_, m_)
    return r


def estimate(d) -> Result:
    """The mean and interval only: a description or a manipulation check, not a test."""
    mu, lo, hi, n, _ = interval(d)
    return Result("estimate", n, mu, lo, hi)


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni adjusted p-values; NaN entries stay NaN and do not count in the family."""
    p = [float(v) for v in pvalues]
    order = sorted(range(len(p)), key=lambda i: (math.isnan(p[i]), p[i]))
    out, running = [float("nan")] * len(p), 0.0
    m = sum(not math.isnan(v) for v in p)
    for rank, i in enumerate(order):
        if math.isnan(p[i]):
            continue
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def decide(r: Result, p_adjusted: float | None = None, alpha: float = ALPHA) -> str:
    """The finding a :class:`Result` reads as, with ``p_adjusted`` (Holm) in place of its own p where given:
    ``supports`` / ``contradicts`` / ``not resolved at n = k`` in the words of its test."""
    p = r.p if p_adjusted is None else p_adjusted
    if r.n == 0 or math.isnan(r.estimate):
        return "no data"
    if r.n < 2:
        return "one seed: not settled"
    if r.test == "estimate":
        return "estimate only"
    if not math.isnan(p) and p < alpha:
        return {"superiority": "supports the paper's direction", "noninferiority": "non-inferior within the margin",
                "equivalence": "equivalent within the margin", "restores": "restores the teacher within the margin"}[r.test]
    if r.against:
        return {"superiority": "contradicts the paper's direction", "noninferiority": "inferior beyond the margin",
                "equivalence": "differs beyond the margin", "restores": "differs from the teacher beyond the margin"}[r.test]
    return f"not resolved at n = {r.n}"


def mde(sd_diff: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true mean paired difference that a one-sided t-test at ``alpha`` detects with probability
    ``power`` over ``n`` seeds when the differences have standard deviation ``sd_diff`` (the usual
    (t_{1-alpha} + t_{power}) sd / sqrt(n) approximation). NaN for n < 2."""
    if n < 2 or not sd_diff >= 0:
        return float("nan")
    return float((stats.t.ppf(1 - alpha, n - 1) + stats.t.ppf(power, n - 1)) * sd_diff / math.sqrt(n))


def headroom_share(x, teacher: float, floor: float) -> float:
    """A localization score as a share of the teacher's headroom over a floor: (x - floor) / (teacher - floor)."""
    return float((np.mean(clean(x)) - floor) / (teacher - floor)) if teacher != floor else float("nan")
