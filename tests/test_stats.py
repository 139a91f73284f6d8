"""pqd_lib.stats against oracles: TOST by hand, Holm on a worked example, error rates by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pqd_lib import stats


def test_tost_matches_the_hand_computation_and_the_90_percent_interval():
    diff = np.array([0.10, 0.30, -0.20, 0.05, 0.15])
    m, n = 0.5, len(diff)
    se = diff.std(ddof=1) / math.sqrt(n)
    # Two one-sided t statistics against the margins, each on n-1 degrees of freedom.
    p_lower = sps.t.sf((diff.mean() + m) / se, n - 1)
    p_upper = sps.t.cdf((diff.mean() - m) / se, n - 1)
    assert stats.tost(diff, m) == pytest.approx(max(p_lower, p_upper), rel=1e-12)
    test = stats.paired_test(diff, np.zeros(n), m)
    half = sps.t.ppf(0.95, n - 1) * se
    assert (test.ci_low, test.ci_high) == pytest.approx((diff.mean() - half, diff.mean() + half))
    # TOST at alpha rejects exactly when the 1 - 2 alpha interval lies inside (-m, m).
    assert test.outcome == "equivalent" and -m < test.ci_low and test.ci_high < m
    wide = stats.paired_test(diff * 6, np.zeros(n), m)
    assert wide.outcome == "unresolved" and (wide.ci_low < -m or wide.ci_high > m)


def test_direction_beats_equivalence_and_non_inferiority_reads_one_side():
    a = np.array([1.0, 1.2, 0.9, 1.1])
    assert stats.paired_test(a, np.zeros(4), 0.5).outcome == "greater"
    assert stats.paired_test(np.zeros(4), a, 0.5).outcome == "less"
    # 0.3 pp worse, tightly: not worse than 0.5, but worse than 0.1.
    worse = np.array([-0.3, -0.25, -0.35, -0.3])
    assert stats.paired_test(worse, np.zeros(4), 0.5).not_worse
    assert not stats.paired_test(worse, np.zeros(4), 0.1).not_worse


def test_deterministic_differences_decide_by_sign_and_margin():
    same = np.array([600.0, 600.0, 600.0])
    assert stats.paired_test(same, same + 10, 5.0).outcome == "less"
    assert stats.paired_test(same, same + 1, 5.0).outcome == "less"  # real, though inside the margin
    assert stats.paired_test(same, same, 5.0).outcome == "equivalent"
    assert stats.paired_test([1.0], [0.0], 0.5).outcome == "unresolved"


def test_holm_on_a_worked_example():
    # Sorted: 0.005 <= .05/4, 0.01 <= .05/3, then 0.03 > .05/2 stops (0.04 is not reached).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]).tolist() == [True, False, False, True]
    assert stats.holm([0.01, 0.02, 0.03, 0.04]).tolist() == [True, False, False, False]
    assert stats.holm([0.001, 0.2]).tolist() == [True, False]
    assert stats.holm([0.2, 0.2]).tolist() == [False, False]


def test_holm_keeps_the_family_wise_error_rate_that_uncorrected_tests_break():
    """Five orders against P → Q → D on 3 seeds, all equal in truth: how often does 'some order is better' fire?"""
    rng = np.random.default_rng(0)
    trials, seeds, others = 4000, 3, 5
    pqd = rng.normal(size=(trials, seeds))
    rest = rng.normal(size=(trials, others, seeds))
    diff = pqd[:, None, :] - rest  # shares P → Q → D: the five comparisons are correlated
    p_less = sps.ttest_1samp(diff, 0.0, axis=2, alternative="less").pvalue
    uncorrected = (p_less < 0.05).any(axis=1).mean()
    corrected = np.mean([stats.holm(row).any() for row in p_less])
    assert uncorrected > 0.12  # the issue's ~19 %
    assert corrected <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials)


def test_seeds_needed_matches_a_power_table_and_a_simulation():
    # One-sample t, effect size 1, one-sided alpha 0.05, power 0.8: n = 8 (G*Power, Cohen's tables).
    assert stats.seeds_needed(1.0, 1.0, 0.5)["direction"] == 8
    # TOST, true difference 0, sigma 0.5, margin 0.5: check by simulation that n reaches 80 % power and n-1 does not.
    n = stats.seeds_needed(0.0, 0.5, 0.5)["equivalence"]
    rng = np.random.default_rng(1)

    def power(k: int) -> float:
        d = rng.normal(0.0, 0.5, size=(20000, k))
        se = d.std(axis=1, ddof=1) / math.sqrt(k)
        crit = sps.t.ppf(0.95, k - 1)
        return float(np.mean(((d.mean(axis=1) + 0.5) / se > crit) & ((d.mean(axis=1) - 0.5) / se < -crit)))

    assert power(n) >= 0.79 and power(n - 1) < 0.8
    assert stats.seeds_needed(0.6, 0.2, 0.5)["equivalence"] is None  # outside the margin: never equivalent
    holm5 = stats.seeds_needed(1.0, 1.0, 0.5, comparisons=5)["direction"]
    assert holm5 > 8


def test_packed_correctness_round_trips_and_bootstrap_covers_the_difference():
    rng = np.random.default_rng(0)
    hits = rng.random(10_000) < 0.8
    text = stats.pack_correct(hits)
    assert len(text) == 1668 and np.array_equal(stats.unpack_correct(text, 10_000), hits)
    a = rng.random((3, 10_000)) < 0.60
    b = rng.random((3, 10_000)) < 0.58
    mean, low, high = stats.image_bootstrap(a, b, n_resamples=1000)
    assert low < mean < high and low < 2.0 < high + 0.5
    # The percentile interval's half-width is about 1.645 standard errors of the per-image mean.
    per_image = 100 * (a.astype(float) - b).mean(axis=0)
    se = per_image.std(ddof=1) / math.sqrt(per_image.size)
    assert (high - low) / 2 == pytest.approx(1.645 * se, rel=0.15)
    with pytest.raises(ValueError, match="same"):
        stats.image_bootstrap(a, b[:, :10])
