"""The tests a claim is decided by (apnb.inference): hand cases at their boundaries, agreement with scipy's
one-sample t-tests, and planted effects on simulated seed sets (no training): power near the nominal, the
family-wise error after Holm at most alpha, and the 95 % intervals' coverage within 2 points of 95 %."""
import math

import numpy as np
import pytest
from scipy import stats

from apnb import inference as I

pytestmark = pytest.mark.unit


def test_superiority_matches_scipy_one_sided_t_test():
    d = np.array([0.02, 0.05, 0.01, 0.04, 0.03])
    r = I.superiority(d, +1)
    assert r.p == pytest.approx(stats.ttest_1samp(d, 0, alternative="greater").pvalue)
    assert I.superiority(-d, -1).p == pytest.approx(r.p)
    lo, hi = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert (r.lo, r.hi) == pytest.approx((lo, hi))
    assert I.decide(r) == "supports the paper's direction"
    assert I.decide(I.superiority(-d, +1)) == "contradicts the paper's direction"
    assert I.decide(I.superiority([0.01, -0.02, 0.015], +1)) == "not resolved at n = 3"
    assert I.decide(I.superiority([0.3], +1)) == "one seed: not settled"
    assert I.decide(I.superiority([], +1)) == "no data"


def test_noninferiority_at_its_boundary():
    # three values with mean m and a known interval: shift the mean across -margin + half-width
    base = np.array([-0.01, 0.0, 0.01])
    half = stats.t.ppf(0.975, 2) * stats.sem(base)
    margin = 0.02
    just_in = base + (-margin + half + 1e-4)
    just_out = base + (-margin + half - 1e-4)
    assert I.decide(I.noninferiority(just_in, margin)) == "non-inferior within the margin"
    assert I.decide(I.noninferiority(just_out, margin)) == "not resolved at n = 3"
    assert I.decide(I.noninferiority(base - margin - half - 1e-4, margin)) == "inferior beyond the margin"
    # sign -1: lower is better (a loss), the same boundary mirrored
    assert I.decide(I.noninferiority(-just_in, margin, sign=-1)) == "non-inferior within the margin"
    r = I.noninferiority(just_in, margin)
    assert r.p == pytest.approx(stats.ttest_1samp(just_in, -margin, alternative="greater").pvalue)
    # "keeps accuracy" is not a direction: a 30-point loss is never non-inferior at a 2-point margin
    assert I.decide(I.noninferiority([-0.31, -0.29, -0.30], margin)) == "inferior beyond the margin"
    with pytest.raises(ValueError, match="positive"):
        I.noninferiority(base, 0)


def test_equivalence_tost_at_its_boundary():
    base = np.array([-0.01, 0.0, 0.01])
    half = stats.t.ppf(0.975, 2) * stats.sem(base)
    m = 0.03
    assert I.decide(I.equivalence(base + (m - half - 1e-4), m)) == "equivalent within the margin"
    assert I.decide(I.equivalence(base + (m - half + 1e-4), m)) == "not resolved at n = 3"
    assert I.decide(I.equivalence(base + m + half + 1e-4, m)) == "differs beyond the margin"
    # TOST p is the larger of the two one-sided p-values
    d = base + 0.005
    p1 = stats.ttest_1samp(d, -m, alternative="greater").pvalue
    p2 = stats.ttest_1samp(d, m, alternative="less").pvalue
    assert I.equivalence(d, m).p == pytest.approx(max(p1, p2))
    # an interval that covers 0 at n = 3 is not "no change": it must lie inside the margin
    wide = np.array([-0.05, 0.0, 0.06])
    assert I.decide(I.equivalence(wide, 0.02)) == "not resolved at n = 3"


def test_drift_recovered_hand_case_and_restores():
    teacher, naive = 0.90, np.array([0.78, 0.80, 0.82])
    matched = naive + 0.5 * (teacher - naive)  # half the drift back on every seed
    f = I.drift_recovered(teacher, naive, matched)
    assert f["fraction"] == pytest.approx(0.5) and f["lo"] == pytest.approx(0.5) and f["hi"] == pytest.approx(0.5)
    noisy = I.drift_recovered(teacher, naive, matched + np.array([0.01, -0.01, 0.0]))
    assert noisy["lo"] < 0.5 < noisy["hi"]
    r = I.restores(teacher, naive, np.array([0.899, 0.90, 0.901]), margin=0.04)
    assert I.decide(r) == "restores the teacher within the margin" and r.extra["fraction"] == pytest.approx(1.0)
    r = I.restores(teacher, naive, matched, margin=0.02)  # 5 points short (-7.5 to -2.5): beyond a 2-point margin
    assert I.decide(r) == "differs from the teacher beyond the margin"
    assert I.decide(I.restores(teacher, naive, matched, margin=0.04)) == "not resolved at n = 3"
    assert math.isnan(I.drift_recovered(0.8, [0.8, 0.8], [0.85, 0.9])["fraction"])  # no drift to recover


def test_mde_against_the_exact_noncentral_t_power():
    n, sd = 5, 1.0
    eff = I.mde(sd, n)
    df, crit = n - 1, stats.t.ppf(1 - I.ALPHA, n - 1)
    exact = stats.nct.sf(crit, df, eff / (sd / math.sqrt(n)))
    assert 0.75 < exact < 0.85  # the usual approximation is within 5 points of the power it promises
    assert math.isnan(I.mde(sd, 1))


def _sim(n_sets, n, mu, sd, seed):
    return np.random.default_rng(seed).normal(mu, sd, size=(n_sets, n))


def test_planted_effect_is_supported_at_about_the_nominal_power():
    n, sd, sets = 5, 1.0, 3000
    eff = I.mde(sd, n)
    exact = stats.nct.sf(stats.t.ppf(1 - I.ALPHA, n - 1), n - 1, eff / (sd / math.sqrt(n)))
    hits = np.mean([I.decide(I.superiority(d, +1)) == "supports the paper's direction"
                    for d in _sim(sets, n, eff, sd, 0)])
    assert abs(hits - exact) < 0.03, (hits, exact)


def test_no_effect_supports_at_most_alpha_after_holm():
    n, sets, family = 3, 3000, 4
    data = _sim(sets * family, n, 0.0, 1.0, 1).reshape(sets, family, n)
    any_support = 0
    for fam in data:
        res = [I.superiority(d, +1) for d in fam]
        adj = I.holm([r.p for r in res])
        any_support += any(I.decide(r, p) == "supports the paper's direction" for r, p in zip(res, adj))
    rate = any_support / sets
    assert rate <= I.ALPHA + 0.01, rate
    # and without the correction the family-wise error would exceed alpha
    raw = np.mean([any(I.superiority(d, +1).p < I.ALPHA for d in fam) for fam in data])
    assert raw > I.ALPHA + 0.02


def test_interval_coverage_within_two_points_of_nominal():
    for n in (3, 5):
        mu = 0.3
        cov = np.mean([(lambda r: r.lo <= mu <= r.hi)(I.estimate(d)) for d in _sim(3000, n, mu, 0.7, 2 + n)])
        assert abs(cov - 0.95) <= 0.02, (n, cov)


def test_noninferiority_and_tost_error_at_the_margin():
    m, sets = 0.5, 3000
    ni = np.mean([I.decide(I.noninferiority(d, m)) == "non-inferior within the margin"
                  for d in _sim(sets, 5, -m, 1.0, 7)])
    eq = np.mean([I.decide(I.equivalence(d, m)) == "equivalent within the margin" for d in _sim(sets, 5, m, 0.3, 8)])
    assert ni <= I.ALPHA + 0.01 and eq <= I.ALPHA + 0.01, (ni, eq)


def test_a_seed_with_a_missing_score_is_dropped_not_broadcast():
    # an untrained network scores no pair (NaN): that seed leaves the comparison, and all-NaN reads "no data"
    assert I.decide(I.restores(float("nan"), [0.7, 0.72], [0.8, 0.81], 0.04)) == "no data"
    r = I.restores(0.9, [0.7, float("nan"), 0.72], [0.88, 0.89, 0.90], 0.04)
    assert r.n == 2 and r.extra["n"] == 2
