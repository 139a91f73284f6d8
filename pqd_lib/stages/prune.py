"""P: unstructured magnitude pruning with the gradual cubic schedule of Zhu & Gupta (2017).

Stage P of Zhou & Shen (2026): the smallest-magnitude weights of the convolutions and linear
layers are set to zero and kept at zero, while the network fine-tunes. Sparsity grows over the
first ``ramp_fraction`` of the stage's optimiser steps along Zhu & Gupta's cubic schedule
("To prune, or not to prune", 2017, Eq. 1)::

    s_t = s_f + (s_i - s_f) * (1 - t / T) ** 3,        0 <= t <= T,

with ``s_i = 0``, ``s_f = cfg.prune.target_sparsity`` and ``T`` the ramp length in steps, in
``ramp_updates`` equally spaced mask updates (the last at ``t = T`` reaches ``s_f``); the rest of
the stage fine-tunes at ``s_f``. ``scope="global"`` ranks all prunable weights together (one
threshold, so layers end at different sparsities); ``"layerwise"`` prunes every layer to the
same sparsity by its own magnitudes. The first convolution and the classifier (the last
``nn.Linear``) are left dense unless ``prune_first_conv``/``prune_classifier`` say otherwise.

Masks are plain ``bool`` buffers named ``weight_mask`` on the pruned modules, applied in place
under ``no_grad`` after every optimiser step of this and every later stage (the pipeline's
``after_step`` hooks). As buffers they are saved and loaded with ``state_dict``. Why not
``torch.nn.utils.prune``: its reparametrisation (parameter ``weight_orig``, buffer
``weight_mask``, and a forward pre-hook that recomputes ``weight`` as a plain tensor attribute)
does not survive the FX QAT prepare of stage Q -- measured on torch 2.14.1, ``prepare_qat_fx``
fails with "cannot assign 'torch.FloatTensor' as parameter 'weight'" when the QAT module copies
``conv.weight``, and ``copy.deepcopy`` of a module pruned that way fails ("Only Tensors created
explicitly by the user support the deepcopy protocol"). Plain masks on the module need neither
hooks nor a renamed parameter.

Across Q's prepare the conv and its BatchNorm are fused into a new QAT module that carries the
conv's qualified name (``layer1.0.conv1``), so :func:`transfer_masks` re-attaches the masks by
name. There the mask is applied to the float ``weight`` that the weight fake-quant reads; a fused
ConvBn QAT module multiplies that weight by ``gamma / sqrt(var + eps)`` per output channel before
fake-quantizing it, which maps 0 to 0, and symmetric INT8 quantization (zero point 0) maps 0 to
the integer 0 -- so the pruned weights are exactly zero in the INT8 model (tested).

Learning rate: ``cfg.prune.lr = 0.01`` (the config's default), a tenth of the baseline's 0.1: P
fine-tunes an already trained network, and the paper states no P-specific rate.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from .. import train
from . import StageContext

__all__ = [
    "MASK",
    "PRUNABLE_TYPES",
    "prunable_layers",
    "cubic_sparsity",
    "schedule",
    "update_masks",
    "apply_masks",
    "masks",
    "transfer_masks",
    "remove_masks",
    "without_masks",
    "float_weights",
    "sparsity_of",
    "prune",
]

#: Name of the mask buffer on a pruned module (True = weight kept).
MASK = "weight_mask"

# QAT modules (ConvBn2d, ConvBnReLU2d, qat.Linear, ...) subclass these, so a P after Q finds them too.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module, *, prune_first_conv: bool = False,
                    prune_classifier: bool = False) -> dict[str, nn.Module]:
    """The conv/linear modules stage P prunes, by qualified name, in ``named_modules`` order.

    The first convolution is the first conv module in ``named_modules()`` order (the stem), the
    classifier the last ``nn.Linear``; both are excluded unless asked for (Gale et al. 2019,
    "The State of Sparsity in Deep Neural Networks": they are small and sensitive). The same
    names are found on the FP32 model and on its QAT-prepared graph.
    """
    layers = _weight_layers(model)
    # A linear layer's weight is 2-D, a convolution's 3- to 5-D (also on an exported graph's containers).
    convs = [n for n, m in layers.items() if m.weight.dim() != 2]
    linears = [n for n, m in layers.items() if m.weight.dim() == 2]
    if convs and not prune_first_conv:
        layers.pop(convs[0])
    if linears and not prune_classifier:
        layers.pop(linears[-1])
    return layers


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/linear modules by qualified name; on a PT2E graph (stage Q, engine pt2e) the containers of
    their weights, which ``torch.export`` keeps under the same names but no longer as ``nn.Conv2d``."""
    if isinstance(model, torch.fx.GraphModule):
        from . import quantize_pt2e  # local: importing P never imports Q's machinery otherwise

        if quantize_pt2e.is_exported(model):
            return quantize_pt2e.weight_layers(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def cubic_sparsity(t: float, T: float, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017), Eq. 1: ``s_t = s_f + (s_i - s_f) (1 - t/T)^3``, held at ``s_f`` for ``t >= T``.

    ``T <= 0`` means no ramp: the final sparsity at once (one-shot pruning).
    """
    if T <= 0:
        return final
    frac = min(max(t / T, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def schedule(total_steps: int, *, final: float, ramp_fraction: float, ramp_updates: int,
             initial: float = 0.0) -> dict[int, float]:
    """When the masks are updated and to what sparsity: ``{optimiser step: sparsity}``.

    The ramp is the first ``T = round(ramp_fraction * total_steps)`` steps, with ``ramp_updates``
    updates at ``t_k = round(k T / n)``, ``k = 1..n`` (Zhu & Gupta's ``t0 + k Δt``), each to
    :func:`cubic_sparsity` ``(t_k)``; the last (``t = T``) reaches `final`. A step key ``0`` means
    "before the first step": a stage without a ramp (or without steps) prunes one-shot. Where two
    updates round to one step, the later (higher) sparsity wins.
    """
    ramp = round(ramp_fraction * total_steps)
    if ramp <= 0 or ramp_updates <= 0:
        return {0: final}
    plan: dict[int, float] = {}
    for k in range(1, ramp_updates + 1):
        t = round(k * ramp / ramp_updates)
        plan[t] = cubic_sparsity(t, ramp, final, initial)
    plan[ramp] = final  # exactly s_f, whatever the rounding of t_k
    return plan


def _ensure_masks(layers: dict[str, nn.Module]) -> None:
    for module in layers.values():
        if getattr(module, MASK, None) is None:
            module.register_buffer(MASK, torch.ones_like(module.weight, dtype=torch.bool))


@torch.no_grad()
def update_masks(layers: dict[str, nn.Module], sparsity: float, *, scope: str = "global") -> None:
    """Zero the smallest-magnitude weights of `layers` so that exactly ``round(sparsity * N)`` are masked.

    ``global``: one ranking over the ``N`` weights of all layers together; ``layerwise``: each
    layer ranked alone with its own ``N``. Masks only grow: a weight masked before ranks below
    every live weight (score -1), so it stays masked (Zhu & Gupta's masks are monotone). Exact
    counts come from ``topk`` (a threshold with ties could prune more). Masks are created if
    missing and applied to the weights.
    """
    # Arguments of a public function (the schedule's intermediate sparsities, or a direct caller),
    # not config keys: the config's own values are checked where PruneConfig declares them.
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"update_masks: sparsity {sparsity!r} is out of range; allowed: >= 0 and < 1")
    if scope not in ("global", "layerwise"):
        raise ValueError(f"update_masks: scope {scope!r} is not allowed; choose 'global' or 'layerwise'")
    _ensure_masks(layers)
    modules = list(layers.values())
    if not modules:
        return
    scores = [torch.where(m.weight_mask, m.weight.detach().abs().float(), -1.0).flatten() for m in modules]
    groups = [(modules, torch.cat(scores))] if scope == "global" else [([m], s) for m, s in zip(modules, scores)]
    for group, flat in groups:
        # Never fewer than already masked: masks are monotone even if asked for less.
        k = max(round(sparsity * flat.numel()), int((flat < 0).sum()))
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
        offset = 0
        for m in group:
            n = m.weight.numel()
            m.weight_mask.copy_(keep[offset:offset + n].view(m.weight.shape))
            offset += n
            m.weight.masked_fill_(~m.weight_mask, 0.0)


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Re-zero the masked weights of every module carrying a ``weight_mask`` (an ``after_step`` hook).

    An optimiser step moves masked weights (momentum, weight decay, their gradient); zeroing them
    again after every step keeps the forward pass sparse (Zhu & Gupta 2017). Works unchanged on a
    QAT-prepared model, whose fused modules keep the float ``weight`` the fake-quant reads.
    """
    for module in model.modules():
        mask = getattr(module, MASK, None)
        if isinstance(mask, torch.Tensor):
            module.weight.masked_fill_(~mask, 0.0)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of `model` by qualified module name (empty when the model was never pruned)."""
    return {name: m.weight_mask for name, m in model.named_modules()
            if isinstance(getattr(m, MASK, None), torch.Tensor)}


def transfer_masks(old: nn.Module, new: nn.Module) -> None:
    """Attach `old`'s masks to the modules of the same qualified name in `new`, and apply them.

    An ``on_new_model`` hook: Q's FX prepare replaces ``conv`` + ``bn`` by one QAT module named
    like the conv, so names carry the masks across. A mask without a counterpart (or whose
    weight changed shape) is an error rather than silently lost sparsity.
    """
    targets = dict(new.named_modules())
    for name, mask in masks(old).items():
        module = targets.get(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape != mask.shape:
            raise RuntimeError(f"prune: the mask of {name!r} {tuple(mask.shape)} has no matching weight in the "
                               f"rebuilt model (found {type(module).__name__ if module is not None else 'nothing'})")
        if getattr(module, MASK, None) is None:
            module.register_buffer(MASK, mask.detach().clone().to(weight.device))
        else:
            getattr(module, MASK).copy_(mask)
    apply_masks(new)


def remove_masks(model: nn.Module) -> nn.Module:
    """Apply and then delete every mask buffer, in place: the plain (sparse) FP32 deploy form.

    The zeros stay in the weights; the state dict then loads into a freshly built model.
    Returns `model`.
    """
    apply_masks(model)
    for module in model.modules():
        if MASK in module._buffers:
            del module._buffers[MASK]
    return model


def without_masks(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state dict with the mask buffers left out (weights are already zero where masked).

    Keeps the state dict's ``_metadata`` (per-module format versions): quantized modules need it
    to read their own entries back.
    """
    suffix = f".{MASK}"
    out = OrderedDict((k, v) for k, v in state_dict.items() if not (k == MASK or k.endswith(suffix)))
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def float_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The float ``weight`` of every conv/linear module (FP32 or QAT-prepared) by qualified name."""
    return {name: m.weight.detach() for name, m in _weight_layers(model).items()}


def sparsity_of(weights: dict[str, torch.Tensor], names: list[str] | None = None) -> dict[str, float]:
    """Fraction of exactly-zero entries: over `names` (``sparsity``) and over all `weights` (``overall``).

    `weights` may be float weights or the integer weights of an INT8 model (``int_repr``).
    """
    def frac(keys: list[str]) -> tuple[float, int, int]:
        zeros = sum(int((weights[k] == 0).sum()) for k in keys)
        total = sum(weights[k].numel() for k in keys)
        return (zeros / total if total else 0.0), zeros, total

    chosen = [n for n in (names if names is not None else list(weights)) if n in weights]
    s, zeros, total = frac(chosen)
    overall, _, _ = frac(list(weights))
    return {"sparsity": s, "overall_sparsity": overall, "zeros": zeros, "weights": total}


def prune(model: nn.Module, cfg: Any, data: Any, ctx: StageContext) -> nn.Module:
    """Stage P (Zhou & Shen 2026): gradual magnitude pruning to ``cfg.prune.target_sparsity``, in place.

    Registers all-ones masks on the prunable layers (:func:`prunable_layers`), then fine-tunes
    for ``ctx.epochs`` epochs with the one training loop while the masks follow the cubic schedule
    (:func:`schedule`, Zhu & Gupta 2017 Eq. 1), and ends at exactly the target sparsity. Registers
    :func:`apply_masks` as an ``after_step`` hook and :func:`transfer_masks` as an ``on_new_model``
    hook in `ctx`, so every later stage keeps the pruned weights at zero. Works on an FP32 model
    and on a QAT-prepared one (a P after Q). Returns the same `model` object, changed in place.

    Optimiser: ``cfg.prune.lr`` (0.01, a tenth of the baseline rate: fine-tuning),
    ``cfg.prune.momentum``, ``cfg.prune.weight_decay``; schedule and batch size from ``cfg.train``.
    """
    pc = cfg.prune  # validated where declared (PruneConfig)
    layers = prunable_layers(model, prune_first_conv=pc.prune_first_conv, prune_classifier=pc.prune_classifier)
    if not layers:
        raise ValueError("prune: the model has no conv/linear layer left to prune (first conv and classifier are "
                         "excluded by default; set prune.prune_first_conv / prune.prune_classifier)")
    _ensure_masks(layers)
    per_epoch = max(1, train.steps_per_epoch(data.y_train.numel(), cfg.train.batch_size))
    plan = schedule(ctx.epochs * per_epoch, final=pc.target_sparsity, ramp_fraction=pc.ramp_fraction,
                    ramp_updates=pc.ramp_updates)
    if 0 in plan:
        update_masks(layers, plan[0], scope=pc.scope)
    step = {"t": 0}

    def on_epoch_start(epoch: int) -> None:
        # Set, not incremented: a resumed fit restarts at an epoch boundary.
        step["t"] = epoch * per_epoch

    def after_step() -> None:
        step["t"] += 1
        target = plan.get(step["t"])
        if target is not None:
            update_masks(layers, target, scope=pc.scope)
        else:
            apply_masks(model)

    ctx.fit(model, data, cfg, lr=pc.lr, momentum=pc.momentum, weight_decay=pc.weight_decay,
            after_step=[after_step], on_epoch_start=[on_epoch_start])
    # Idempotent when the schedule completed; reaches s_f if fewer steps ran than planned.
    update_masks(layers, pc.target_sparsity, scope=pc.scope)
    ctx.after_step.append(apply_masks)
    ctx.on_new_model.append(transfer_masks)
    ctx.extra.update({"prune_scope": pc.scope, "target_sparsity": pc.target_sparsity,
                      "mask_updates": {int(k): round(float(v), 6) for k, v in sorted(plan.items())},
                      "pruned_layers": len(layers)})
    return model
