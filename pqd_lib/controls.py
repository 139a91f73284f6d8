"""Controls that isolate the mechanism behind a claim (issue 15): each a function over the pipeline.

* **C4, distillation vs plain fine-tuning** (:func:`ce_control`): P → Q → D against P → Q followed by
  the same epochs, learning rate and schedule of cross-entropy-only fine-tuning. D with
  ``alpha = 0`` is exactly that: its loss ``alpha · T² · KL + (1 - alpha) · CE`` is then CE alone
  (:func:`pqd_lib.stages.distill.kd_loss`), so the two runs differ in the loss and nothing else.
* **Pruning pre-conditions QAT** (:func:`preconditioning`), measured directly rather than read from
  orders: the accuracy QAT costs (top-1 before Q minus after Q) and the weight quantization error
  ``||W - Q(W)||²`` of the weights Q starts from, with and without pruning first.
* **Learning rates that do not depend on position**: the switch ``pipeline.qat_lr_after_q``
  (True caps P's and D's learning rate at Q's once the model is fake-quant; False keeps every
  stage's own rate wherever it runs). :func:`position_independent` gives the config; records carry
  the switch in their config, and :mod:`pqd_lib.claims` decides C3 separately for each setting.

Nothing here writes records: callers (notebooks) append what these functions return.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import config as config_mod
from . import data as data_mod
from . import pipeline
from .claims import CE_CONTROL, PRECONDITIONING
from .config import RunConfig
from .stages import prune as prune_stage

__all__ = ["CE_CONTROL", "PRECONDITIONING", "ce_control", "weight_quant_error", "preconditioning",
           "position_independent"]

def ce_control(model: nn.Module, cfg: RunConfig, data: data_mod.DataSplits, *, teacher: nn.Module,
               progress: bool | None = None, test: data_mod.DataSplits | None = None,
               extra_record: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """P → Q → D with ``distill.alpha = 0``: P → Q, then D's epochs and learning rate of plain cross-entropy.

    Same seed, allocation and learning-rate cap as ``cfg``'s P → Q → D, so its difference from that run
    is distillation's own effect; its P → Q is P → Q → D's (a stage-cache hit once that has run).
    Records carry ``control`` = :data:`CE_CONTROL`. `model` is not changed. `test` and `extra_record`
    as in :func:`pqd_lib.pipeline.run_stages` (the reported test set when `data` holds a validation split).
    """
    control = config_mod.with_section(config_mod.with_section(cfg, "pipeline", order="PQD"), "distill", alpha=0.0)
    return pipeline.run_stages(model, control, data, teacher=teacher, progress=progress, test=test,
                               extra_record={**(extra_record or {}), "control": CE_CONTROL})


def weight_quant_error(model: nn.Module, *, names: list[str] | None = None) -> dict[str, float]:
    """``||W - Q(W)||²`` summed over the prunable conv/linear weights of an FP32 model (masks applied).

    Q is the QAT recipe's weight quantizer (both engines: :func:`pqd_lib.stages.quantize_pt2e.quantization_config`,
    :func:`pqd_lib.stages.quantize.qconfig_mapping`): per-channel symmetric int8, scale from the channel's
    min/max (torchao's observer; torch.ao's gives the same scales and zero points, checked on torch
    2.14.1). Measured on the weights as they stand (before BN folding), which is what pruning changes.
    Returns ``{"quant_error": sum, "quant_error_per_weight": sum / weights}`` (the mean squared error
    per weight).
    """
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    layers = prune_stage.prunable_layers(model)
    names = list(layers) if names is None else names
    total, count = 0.0, 0
    with torch.no_grad():
        for name in names:
            w = layers[name].weight.detach().float().cpu()
            mask = getattr(layers[name], "weight_mask", None)
            if isinstance(mask, torch.Tensor):
                w = w.masked_fill(~mask.cpu().bool(), 0.0)
            observer = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                quant_min=-128, quant_max=127)
            observer(w)
            scale, zero_point = observer.calculate_qparams()
            q = torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point.int(), 0, -128, 127)
            total += float(((w - q) ** 2).sum())
            count += w.numel()
    return {"quant_error": total, "quant_error_per_weight": total / max(count, 1)}


def preconditioning(model: nn.Module, cfg: RunConfig, data: data_mod.DataSplits, *,
                    progress: bool | None = None, test: data_mod.DataSplits | None = None) -> list[dict[str, Any]]:
    """Does pruning first make QAT cheaper? Q alone against P → Q, measured at Q's start and end.

    Two rows (``path`` = ``"Q"`` and ``"P → Q"``), each with ``top1_before_q``, ``top1_after_q``,
    ``qat_drop_pp`` (before minus after), ``quant_error`` and ``quant_error_per_weight`` of the weights Q
    starts from (:func:`weight_quant_error`), and ``seed``. The weights after P come from running P
    alone with the same seed and config, which on the CPU reproduces P → Q's P stage exactly. Every
    run is a stage-cache hit once Q alone, P alone and P → Q → D have run. Accuracies are on `test`
    (None: `data`'s test split), as in :func:`pqd_lib.pipeline.run_stages`.
    """
    q_model, q_records = pipeline.run_stages(model, cfg, data, order="Q", progress=progress, test=test)
    pruned, p_records = pipeline.run_stages(model, cfg, data, order="P", progress=progress, test=test)
    _, pq_records = pipeline.run_stages(model, cfg, data, order="PQ", progress=progress, test=test)
    rows = []
    for path, start, start_top1, after_q in (
            ("Q", model, q_records[0]["start_top1"], q_records[-1]["top1"]),
            ("P → Q", pruned, pq_records[0]["top1"], pq_records[-1]["top1"])):
        rows.append({"path": path, "seed": cfg.seed, "top1_before_q": start_top1, "top1_after_q": after_q,
                     "qat_drop_pp": start_top1 - after_q, **weight_quant_error(start)})
    rows[1]["p_top1_check"] = p_records[-1]["top1"]  # P alone's top-1: equals P → Q's P stage when reproduced
    return rows


def position_independent(cfg: RunConfig) -> RunConfig:
    """``cfg`` with every stage at its own learning rate wherever it runs (``pipeline.qat_lr_after_q = False``)."""
    return config_mod.with_section(cfg, "pipeline", qat_lr_after_q=False)
