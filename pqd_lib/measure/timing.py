"""Timing statistics: pure functions with an injectable clock, shared by every latency protocol of pqd.

* :func:`time_runs` / :func:`summarize` / :func:`measure_callable`: the runs of one model in one
  window -- warm-up, then timed runs until both a run count and a time are reached, percentiles.
* :func:`calibrate_block`: how many calls make one short block (pyperf's calibration: enough calls
  that one block lasts at least a given time, so the timer's resolution and the per-block overhead
  do not matter).
* :func:`median_ratio` / :func:`bootstrap_ci` / :func:`spread`: the statistics of the rounds
  protocol (:mod:`pqd_lib.measure.rounds`): each model relative to the reference of the same round,
  the median over rounds, a percentile-bootstrap confidence interval over rounds, and the spread of
  models that should be equal.

Nothing here starts a process or reads the machine's state; tests drive it with a fake clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["time_runs", "summarize", "measure_callable", "resolve_threads", "check_positive",
           "calibrate_block", "median_ratio", "bootstrap_ci", "spread"]


def time_runs(fn: Callable[[], Any], *, warmup: int, min_runs: int, min_seconds: float,
              timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """`warmup` untimed calls of `fn`, then timed calls until both bounds are met.

    Each call is timed alone (``timer()`` before and after); timing stops after the first call at
    which at least `min_runs` calls were timed *and* at least `min_seconds` have passed since the
    first timed call began. Returns the durations in seconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = timer()
    while True:
        t0 = timer()
        fn()
        t1 = timer()
        times.append(t1 - t0)
        if len(times) >= min_runs and t1 - start >= min_seconds:
            return times


def summarize(times_s: Sequence[float], batch_size: int = 1) -> dict[str, Any]:
    """p50/p90/p99/mean/std (ms, numpy linear percentiles; std with ddof=1), runs, images/s.

    Returns ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_p99``, ``latency_ms_mean``,
    ``latency_ms_std``, ``runs``, ``timed_seconds`` (sum of the timed runs) and ``images_per_s``
    (``batch_size`` / p50).
    """
    if len(times_s) == 0:
        raise ValueError("summarize: no timed runs")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p99": p99,
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "runs": int(len(ms)),
        "timed_seconds": float(ms.sum() / 1e3),
        "images_per_s": float(batch_size * 1e3 / p50) if p50 > 0 else float("inf"),
    }


def measure_callable(fn: Callable[[], Any], *, warmup: int, min_runs: int, min_seconds: float,
                     batch_size: int = 1, timer: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """:func:`time_runs` then :func:`summarize`: the statistics of any callable."""
    times = time_runs(fn, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, timer=timer)
    return summarize(times, batch_size)


def check_positive(name: str, values: Sequence[Any], minimum: int = 1) -> list[int]:
    """`values` as ints, each >= `minimum`; a ``ValueError`` naming `name` otherwise (or when empty)."""
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{name}: {v!r} is not allowed; must be an integer >= {minimum}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name}: empty")
    return out


def resolve_threads(threads: Sequence[int] | int | None) -> list[int]:
    """The thread counts to time: None -> ``[1, os.cpu_count()]`` (one entry when that is 1).

    Raises:
        ValueError: a count that is not an integer >= 1 (the message names ``threads``).
    """
    if threads is None:
        cores = os.cpu_count() or 1
        return [1] if cores == 1 else [1, cores]
    values = [threads] if isinstance(threads, int) else list(threads)
    if not values:
        raise ValueError("threads: empty; give thread counts >= 1 (or None for [1, all cores])")
    for n in values:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"threads: {n!r} is not allowed; thread counts must be integers >= 1")
    return [int(n) for n in values]


def calibrate_block(fn: Callable[[], Any], block_seconds: float, *, max_calls: int = 10_000,
                    timer: Callable[[], float] = time.perf_counter) -> int:
    """How many calls of `fn` make one block of at least `block_seconds` (at least 1 call).

    Times one call, then doubles the count until the calls together last `block_seconds` (pyperf's
    loop calibration); `max_calls` bounds it for functions faster than the timer.
    """
    calls = 1
    while True:
        t0 = timer()
        for _ in range(calls):
            fn()
        elapsed = timer() - t0
        if elapsed >= block_seconds or calls >= max_calls:
            return calls
        # Aim straight at the target from the measured rate, at most 10x per step.
        per_call = elapsed / calls if elapsed > 0 else 0.0
        wanted = int(np.ceil(block_seconds / per_call)) if per_call > 0 else calls * 10
        calls = int(min(max_calls, max(calls + 1, min(wanted, calls * 10))))


def median_ratio(model_ms: Sequence[float], reference_ms: Sequence[float]) -> float:
    """The median over rounds of (model / reference of the same round)."""
    a, b = np.asarray(model_ms, dtype=np.float64), np.asarray(reference_ms, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("median_ratio: one value of the model and one of the reference per round, >= 1 round")
    return float(np.median(a / b))


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of `values` (seeded: reproducible).

    Rounds are the resampled unit: each round's ratio is one observation of the machine's state.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(medians, [tail, 1.0 - tail])
    return float(low), float(high)


def spread(values: Sequence[float]) -> float:
    """max / min - 1 of values that should be equal (identical models): 0 when they agree exactly."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0 or not np.all(x > 0):
        raise ValueError("spread: needs positive values")
    return float(x.max() / x.min() - 1.0)
