"""Paired statistics behind every verdict: tests of direction, equivalence (TOST), non-inferiority,
Holm's correction, a per-image paired bootstrap, and how many seeds a verdict needs.

Every comparison in pqd is *paired*: two methods measured on the same seeds (same data subset, same
teacher), so what is tested is the per-seed difference ``d = a - b``. With ``n`` seeds, mean ``d̄``
and standard deviation ``s``, the statistic is Student's ``t = (d̄ - μ0) / (s / √n)`` on ``n - 1``
degrees of freedom (:func:`scipy.stats.ttest_1samp`). The four answers a comparison can give:

* **greater / less**: the one-sided test of ``d > 0`` (or ``d < 0``) rejects at level ``alpha``;
* **equivalent within ±m**: Schuirmann's two one-sided tests (TOST; Schuirmann 1987, J. Pharmacokin.
  Biopharm. 15:657) reject both ``d <= -m`` and ``d >= +m`` at level ``alpha`` -- the same as the
  ``1 - 2 alpha`` (90 %) confidence interval of ``d`` lying inside ``(-m, +m)``;
* **unresolved**: none of these.

A difference that is the same on every seed (sizes are deterministic) has no spread: its sign
decides, and it is equivalent when it lies inside the margin.

**Margins** (:data:`ACCURACY_MARGIN_PP`, :data:`RELATIVE_MARGIN`): what counts as "no practical
difference" must be fixed before the data are seen. Top-1: ±0.5 pp -- one test image in 200 on
CIFAR-10's 10,000, below the seed-to-seed spread of one training run at every preset measured here
(the ``mini`` baseline's seed standard deviation is ~0.8 pp), and half the smallest accuracy
difference the paper reports between orders. Size and latency: ±5 % of the reference method's value,
the noise goal of the latency protocol (ARCHITECTURE.md: "agrees within 5 %"), so a latency tie
is one the protocol itself cannot tell apart; sizes use the same relative margin for symmetry.

**Several comparisons, one verdict.** A verdict that needs *every* comparison to reject (P → Q → D
better than each of five orders; equivalent to each) is an intersection-union test and keeps level
``alpha`` without correction (Berger 1982, Technometrics 24:295). A verdict that fires when *any*
comparison rejects ("does not hold": some order is better) is a union of tests and is corrected
with Holm's step-down method (:func:`holm`; Holm 1979, Scand. J. Statist. 6:65), which keeps the
family-wise error rate at ``alpha`` under any dependence between the comparisons.

Distributions come from :mod:`scipy.stats`; nothing here reads a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .correct_bits import pack_correct, unpack_correct  # re-exported: they moved to a scipy-free module

__all__ = ["ALPHA", "ACCURACY_MARGIN_PP", "RELATIVE_MARGIN", "POWER", "PairedTest", "paired_test", "tost",
           "holm", "pack_correct", "unpack_correct", "image_bootstrap", "seeds_needed"]

#: Level of every one-sided test (and of each half of a TOST, whose interval is then 90 %).
ALPHA = 0.05
#: Equivalence margin for top-1 accuracy, in percentage points (module docstring: why 0.5).
ACCURACY_MARGIN_PP = 0.5
#: Equivalence / non-inferiority margin for size and latency, relative to the reference method.
RELATIVE_MARGIN = 0.05
#: The power :func:`seeds_needed` plans for (the usual 80 %).
POWER = 0.8


@dataclass(frozen=True)
class PairedTest:
    """One paired comparison of ``a - b`` over seeds, with its equivalence margin.

    ``ci_low``/``ci_high`` bound the ``1 - 2 alpha`` (90 %) confidence interval of the mean difference:
    the interval whose inclusion in ``(-margin, +margin)`` is the TOST.
    """

    n: int
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    p_greater: float  # one-sided p-value for mean(a - b) > 0
    p_less: float  # one-sided p-value for mean(a - b) < 0
    p_equivalent: float  # TOST p-value for |mean(a - b)| < margin (the larger of its two one-sided p-values)
    p_not_worse: float  # non-inferiority p-value for mean(a - b) > -margin
    p_worse: float  # p-value for mean(a - b) < -margin: a is worse than b by more than the margin
    margin: float
    alpha: float = ALPHA

    @property
    def outcome(self) -> str:
        """``"greater"``, ``"less"``, ``"equivalent"`` or ``"unresolved"`` at :attr:`alpha`.

        Direction first: a difference both significant and inside the margin is reported as a
        direction (it is real, though small); the evidence text shows the interval either way.
        """
        if self.p_greater < self.alpha:
            return "greater"
        if self.p_less < self.alpha:
            return "less"
        if self.p_equivalent < self.alpha:
            return "equivalent"
        return "unresolved"

    @property
    def not_worse(self) -> bool:
        """Non-inferiority: is ``a`` worse than ``b`` by less than the margin (one-sided, level alpha)?"""
        return self.p_not_worse < self.alpha

    def describe(self, unit: str = "", digits: int = 2) -> str:
        """``"+0.12 pp, 90 % CI [-0.30, +0.54] (n=3)"``: mean difference, its interval, the seed count."""
        if self.n == 0:
            return "no paired seeds"
        if self.n == 1:
            return f"{self.mean_diff:+.{digits}f}{unit} (n=1, no interval)"
        level = round(100 * (1 - 2 * self.alpha))
        return (f"{self.mean_diff:+.{digits}f}{unit}, {level} % CI [{self.ci_low:+.{digits}f}, "
                f"{self.ci_high:+.{digits}f}] (n={self.n})")


def _differences(a: pd.Series | Sequence[float], b: pd.Series | Sequence[float]) -> np.ndarray:
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        both = pd.concat({"a": a, "b": b}, axis=1).dropna()
        return (both["a"] - both["b"]).to_numpy(dtype=float)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test: a and b must pair up, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep] - b[keep]


def tost(diff: Sequence[float], margin: float, alpha: float = ALPHA) -> float:
    """Schuirmann's TOST p-value for ``-margin < mean(diff) < +margin``: the larger of the two one-sided
    t-tests ``mean > -margin`` and ``mean < +margin`` (scipy.stats.ttest_1samp). Needs 2+ values with spread.
    """
    diff = np.asarray(diff, dtype=float)
    if margin <= 0:
        raise ValueError(f"tost: margin must be > 0, got {margin}")
    lower = stats.ttest_1samp(diff, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(diff, margin, alternative="less").pvalue
    return float(max(lower, upper))


def paired_test(a: pd.Series | Sequence[float], b: pd.Series | Sequence[float], margin: float,
                alpha: float = ALPHA) -> PairedTest:
    """Compare ``a`` and ``b`` over the seeds both have (Series: aligned by index; arrays: by position).

    `margin` (> 0, in the units of a and b) sets the equivalence and non-inferiority bounds.
    """
    diff = _differences(a, b)
    n = len(diff)
    if n == 0:
        return PairedTest(0, math.nan, math.nan, math.nan, math.nan, 1.0, 1.0, 1.0, 1.0, 1.0, margin, alpha)
    mean = float(diff.mean())
    if n > 1 and np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        # The same difference on every seed (deterministic quantities such as sizes): its sign decides.
        inside = abs(mean) < margin
        return PairedTest(n, mean, 0.0, mean, mean, 0.0 if mean > 0 else 1.0, 0.0 if mean < 0 else 1.0,
                          0.0 if inside else 1.0, 0.0 if mean > -margin else 1.0, 0.0 if mean < -margin else 1.0,
                          margin, alpha)
    if n < 2:
        return PairedTest(n, mean, math.nan, math.nan, math.nan, 1.0, 1.0, 1.0, 1.0, 1.0, margin, alpha)
    test = stats.ttest_1samp(diff, 0.0)
    ci = test.confidence_interval(confidence_level=1 - 2 * alpha)
    return PairedTest(
        n, mean, float(diff.std(ddof=1)), float(ci.low), float(ci.high),
        float(stats.ttest_1samp(diff, 0.0, alternative="greater").pvalue),
        float(stats.ttest_1samp(diff, 0.0, alternative="less").pvalue),
        tost(diff, margin), float(stats.ttest_1samp(diff, -margin, alternative="greater").pvalue),
        float(stats.ttest_1samp(diff, -margin, alternative="less").pvalue), margin, alpha)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections (bool per p-value, input order) at family-wise level `alpha`.

    Sort the m p-values ascending; reject the k-th smallest while ``p_(k) <= alpha / (m - k + 1)``
    and stop at the first that is not (Holm 1979). scipy has no Holm (only Benjamini-Hochberg,
    which controls the false discovery rate, not the family-wise error this verdict needs).
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    reject = np.zeros(len(p), dtype=bool)
    for rank, index in enumerate(order):
        if p[index] > alpha / (len(p) - rank):
            break
        reject[index] = True
    return reject


def image_bootstrap(a: np.ndarray, b: np.ndarray, *, alpha: float = ALPHA, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Per-image paired bootstrap of the top-1 difference (pp) between two methods on one test set.

    `a`, `b`: bool arrays (seeds, images) of per-image correctness, same images in the same order, one
    row per seed both methods ran. Images are resampled with replacement, jointly across seeds (the
    test set is shared): the statistic is the mean over the resampled images of the per-image
    difference averaged over seeds. This interval holds the *test set's* sampling noise and says
    nothing about training noise (the seed-level test does); both are reported side by side.

    Returns ``(mean, ci_low, ci_high)`` in pp, the ``1 - 2 alpha`` percentile interval
    (scipy.stats.bootstrap, seeded).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"image_bootstrap: a and b must be the same (seeds, images) shape, got {a.shape}, {b.shape}")
    per_image = 100.0 * (a - b).mean(axis=0)
    result = stats.bootstrap((per_image,), np.mean, confidence_level=1 - 2 * alpha, n_resamples=n_resamples,
                             method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(per_image.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def seeds_needed(mean_diff: float, std_diff: float, margin: float, *, alpha: float = ALPHA, power: float = POWER,
                 comparisons: int = 1, max_seeds: int = 1000) -> dict[str, int | None]:
    """How many seeds a paired comparison needs, planned from pilot seeds' mean and standard deviation.

    Two goals, each the smallest n (>= 2) whose power reaches `power` if the true mean difference is
    `mean_diff` and its seed standard deviation `std_diff` (power from the noncentral t,
    scipy.stats.nct):

    * ``"direction"``: the one-sided test detects the sign of `mean_diff`
      (power ``1 - F_nct(t_crit; n-1, |δ|√n/σ)``);
    * ``"equivalence"``: TOST shows ``|d| < margin`` (power ``>= 1 - F(t_crit; (m+δ)√n/σ) -
      F(t_crit; (m-δ)√n/σ)``, the usual lower bound); None when ``|mean_diff| >= margin``.

    `comparisons`: how many comparisons share the verdict under Holm; the direction is planned at
    ``alpha / comparisons`` (Holm's first, strictest step: conservative). Equivalence of every
    comparison is an intersection-union test and needs no correction. None where `max_seeds` is not enough.
    """
    if not (std_diff > 0):
        return {"direction": 2 if mean_diff != 0 else None,
                "equivalence": 2 if abs(mean_diff) < margin else None}

    def first(power_at) -> int | None:
        for n in range(2, max_seeds + 1):
            if power_at(n) >= power:
                return n
        return None

    def crit(n: int, level: float) -> float:
        return float(stats.t.ppf(1 - level, n - 1))

    def direction(n: int) -> float:
        return float(stats.nct.sf(crit(n, alpha / comparisons), n - 1, abs(mean_diff) * math.sqrt(n) / std_diff))

    def equivalence(n: int) -> float:
        lower = stats.nct.cdf(crit(n, alpha), n - 1, (margin + mean_diff) * math.sqrt(n) / std_diff)
        upper = stats.nct.cdf(crit(n, alpha), n - 1, (margin - mean_diff) * math.sqrt(n) / std_diff)
        return float(1 - lower - upper)

    return {"direction": first(direction) if mean_diff != 0 else None,
            "equivalence": first(equivalence) if abs(mean_diff) < margin else None}
