"""The labels records carry and the claims read: record kinds, notebook numbers, model names.

The library owns every format it reads: a notebook never types one of these strings, it passes
these constants to :func:`pqd_lib.results.record_measurements` / :func:`~pqd_lib.results.record_stages`,
and :mod:`pqd_lib.claims` filters on the same constants. ``StrEnum`` members are ``str``, so they
are written to JSON and compared in pandas as their plain values (``Kind.MEASURED == "measured"``).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Kind", "Notebook", "BASELINE", "QUANTIZED", "DISTILLED", "DISTILLED_WITHOUT_TEACHER", "PIPELINE",
           "pruned"]


class Kind(StrEnum):
    """What a record describes."""

    #: A model's accuracy, sizes, proxies and latency at one (runtime, threads, batch) point.
    MEASURED = "measured"
    #: The state after one stage of a pipeline run (accuracy, sparsity, form, wall time).
    STAGE = "stage"
    #: An order's deploy form and its latency (the order ablation, notebook 06).
    DEPLOY = "deploy"
    #: Full-width latency of FP32 / pruned / INT8 models (notebook 07).
    LATENCY = "latency"
    #: A latency re-timed under the rounds protocol for the runs it names, from their architecture only
    #: (``pqd retime``, :mod:`pqd_lib.measure.retime`).
    RETIMED = "retimed-latency"


class Notebook(StrEnum):
    """The numbered notebooks, one question each (the prefix of their record ids)."""

    BASELINE = "01"
    PRUNE = "02"
    QUANTIZE = "03"
    DISTILL = "04"
    PIPELINE = "05"
    ORDER_ABLATION = "06"
    LATENCY = "07"


#: The FP32 baseline (the teacher).
BASELINE = "baseline"
#: Q alone (INT8 QAT from the baseline).
QUANTIZED = "Q"
#: D alone, at the configured alpha.
DISTILLED = "D"
#: D's control: the same stage with alpha 0 (cross-entropy only, no teacher signal).
DISTILLED_WITHOUT_TEACHER = "D-alpha0"
#: The paper's full pipeline P -> Q -> D.
PIPELINE = "PQD"


def pruned(sparsity: float) -> str:
    """The name of P alone at `sparsity`, e.g. ``pruned(0.5) == "P50"``."""
    return f"P{round(100 * sparsity)}"
