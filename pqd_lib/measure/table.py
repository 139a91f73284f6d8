"""Measure a set of models the same way and return one table: accuracy, sizes, proxies, latency.

The "measure these models -> table" step every notebook of one question ends with; the records
are then written by :func:`pqd_lib.results.record_measurements`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from torch import nn

from ..config import MeasureConfig, RunConfig
from ..data import DataSplits
from .accuracy import accuracy
from .latency import measure_latency
from .proxies import proxies, weight_sparsity
from .runtimes import default_runtime
from .size import mib, model_sizes
from .timing import resolve_threads

__all__ = ["ModelRun", "measure_models", "deferred_latency", "protocol_point", "COST_COLUMNS"]

#: The columns a notebook shows of the table (the rest are in the records).
COST_COLUMNS = ["model", "form", "top1", "sparsity", "size_MiB", "size_sparse_MiB", "nonzero_params",
                "nonzero_macs", "threads", "batch_size", "latency_ms_p50", "latency_ms_p90"]


@dataclass(frozen=True)
class ModelRun:
    """A model with the config and the order that made it (``"baseline"`` for the FP32 baseline)."""

    config: RunConfig
    model: nn.Module
    order: str


def deferred_latency(measure: MeasureConfig, model: nn.Module | None) -> dict[str, Any]:
    """The latency fields of a model whose timing is deferred to a later latency phase: the protocol
    point of `measure` (fewest threads, smallest batch) on the runtime `model` deploys on
    (``runtimes.default_runtime``: torch-compile for a PT2E INT8 graph), so the record keeps its id
    and runtime when the phase times it; latencies empty, ``latency_deferred`` True."""
    return {"runtime": default_runtime(model), "threads": min(resolve_threads(measure.threads)),
            "batch_size": min(measure.batch_sizes), "latency_ms_p50": None, "latency_ms_p90": None,
            "latency_deferred": True}


def measure_models(runs: Mapping[str, ModelRun], data: DataSplits, *, reference: nn.Module,
                   arch: dict | None = None, latency: bool = True) -> pd.DataFrame:
    """One row per model x runtime x threads x batch size: test accuracy, sizes, proxies, latency.

    Args:
        runs: model name (a :mod:`pqd_lib.labels` name) -> what to measure.
        data: the test split is evaluated.
        reference: the FP32 architecture whose MACs an INT8 model is counted on.
        arch: the architecture spec that lets the latency child rebuild the model (a registry
            model's ``train.arch_spec(cfg)``); None for a user's own module.

    The latency protocol is each run's ``config.measure``. Columns: ``model``, ``order``,
    ``sparsity``, the accuracy, size, proxy and latency fields, and ``size_MiB`` /
    ``size_sparse_MiB``. ``latency=False`` times nothing (a training grid defers latency to a quiet
    phase): one row per model at the protocol point (fewest threads, smallest batch, the model's
    deploy runtime: ``runtimes.default_runtime``) with empty latency fields and ``latency_deferred`` = True.
    """
    shape = tuple(data.x_test.shape[1:])
    rows = []
    for name, run in runs.items():
        facts = {"model": name, "order": run.order, "sparsity": weight_sparsity(run.model),
                 **accuracy(run.model, data), **model_sizes(run.model),
                 **proxies(run.model, (1, *shape), fp32_reference=reference)}
        if not latency:
            rows.append({**facts, **deferred_latency(run.config.measure, run.model)})
            continue
        rows += [{**facts, **lat} for lat in measure_latency(run.model, run.config.measure, arch=arch,
                                                              input_shape=shape)]
    table = pd.DataFrame(rows).drop(columns="layers", errors="ignore")
    return table.assign(size_MiB=table["size_bytes"].map(mib), size_sparse_MiB=table["size_sparse_bytes"].map(mib))


def protocol_point(df: pd.DataFrame) -> pd.DataFrame:
    """The rows at the protocol's fewest threads and smallest batch (the point every figure plots)."""
    timed = df.dropna(subset=["threads", "batch_size"])
    if timed.empty:
        return timed
    return timed[timed["threads"].eq(timed["threads"].min()) & timed["batch_size"].eq(timed["batch_size"].min())]
