"""Compression proxies: parameters, non-zero parameters, dense MACs and non-zero MACs, per layer and in total.

The paper's point is that these proxies are *not* runtime (Zhou & Shen 2026): an unstructured-sparse
network has far fewer non-zero MACs but runs the same dense kernels. They are computed here so the
report can set them against measured latency.

Definitions (per conv/linear layer; a "layer" is a module holding a weight matrix/kernel):

* dense MACs: multiply-accumulates of the layer for one input of `input_shape`, counted by torch's
  own ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs are 2 x MACs for convolution and
  matmul); BN, ReLU, adds and pooling are not MACs and are not counted.
* non-zero MACs: dense MACs x the layer's weight density (the fraction of non-zero weights), the
  work a perfect sparse kernel would do.
* parameters: every parameter of the model (BN affine included, buffers excluded; ResNet-18 CIFAR
  at width 1 has 11,173,962); for an INT8 model, the elements of its quantized weights and biases
  (BN is folded into them). Non-zero parameters count exact zeros as pruned.

A converted INT8 model does not run under ``FlopCounterMode`` (its kernels are not aten ops), so
its MACs are counted on an FP32 model of the same architecture (`fp32_reference`), layer names
matching (FX conversion keeps the conv's name for the fused conv-BN-ReLU), with densities from the
INT8 weights themselves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["weight_tensors", "weight_sparsity", "count_params", "layer_macs", "proxies"]


def _int8_layers(model: nn.Module) -> dict[str, Any]:
    from ..stages.quantize import int8_layers  # the one reader of INT8 weights (FX and PT2E models)

    return int8_layers(model)


def weight_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Conv/linear weights by module name: integer values (``int_repr``) for INT8 layers, float otherwise.

    Fake-quant (QAT) modules report their float weights; a weight shared by several modules is
    listed once.
    """
    out: dict[str, torch.Tensor] = {name: q.values for name, q in _int8_layers(model).items()}
    seen: set[int] = set()
    for name, m in model.named_modules():
        if name in out:
            continue
        w = getattr(m, "weight", None)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and isinstance(w, torch.Tensor):
            if id(w) not in seen:
                seen.add(id(w))
                out[name] = w.detach()
    return out


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero conv/linear weights over all of them (0.0 for a model without any)."""
    ws = weight_tensors(model).values()
    total = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    return zeros / total if total else 0.0


def count_params(model: nn.Module) -> dict[str, int]:
    """``{"params", "nonzero_params"}`` of `model` (see the module docstring for INT8 models)."""
    params = list(model.parameters())
    layers = _int8_layers(model)
    if params and not layers:
        return {"params": sum(p.numel() for p in params),
                "nonzero_params": sum(int(torch.count_nonzero(p)) for p in params)}
    total = nonzero = 0
    for q in layers.values():
        for t in (q.values, q.bias):
            if t is None:
                continue
            total += t.numel()
            nonzero += int(torch.count_nonzero(t))
    biases = {id(q.bias) for q in layers.values() if q.bias is not None}  # counted above
    for p in params:  # float parameters left in an INT8 model (none for the pqd backbones)
        if id(p) in biases:
            continue
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    return {"params": total, "nonzero_params": nonzero}


def layer_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> dict[str, int]:
    """Dense MACs of every module that does convolution/matmul work, by qualified name, for one forward pass.

    Counted with ``FlopCounterMode(depth=None)`` (FLOPs / 2) on a zero input of `input_shape`
    (batch included: MACs scale with it). Only leaf modules are returned, so the values sum to the
    model's total.

    Raises:
        ValueError: `model` is a converted INT8 model (count on its FP32 architecture instead).
    """
    if _int8_layers(model):
        raise ValueError("layer_macs: INT8 kernels are invisible to FlopCounterMode; count MACs on the "
                         "FP32 model of the same architecture (proxies(..., fp32_reference=...))")
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        model(torch.zeros(*input_shape, device=device))
    model.train(was_training)
    counts = counter.get_flop_counts()
    leaves = {name for name, m in model.named_modules() if name and not any(True for _ in m.children())}
    out: dict[str, int] = {}
    for key, ops in counts.items():
        # Keys are "<RootClass>.<qualified.name>"; "Global" and the root hold totals.
        _, _, name = key.partition(".")
        if name in leaves:
            out[name] = sum(int(v) for v in ops.values()) // 2
    return out


def proxies(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32), *,
            fp32_reference: nn.Module | None = None) -> dict[str, Any]:
    """Parameters, non-zero parameters, dense and non-zero MACs of `model`, in total and per layer.

    Args:
        model: FP32 (dense or pruned), fake-quant or INT8 model.
        input_shape: one input's shape with batch, e.g. ``(1, 3, 32, 32)`` for CIFAR.
        fp32_reference: for an INT8 `model`, an FP32 model of the same architecture whose layer names
            match (weights irrelevant), on which the MACs are counted.

    Returns:
        ``{"params", "nonzero_params", "macs", "nonzero_macs", "layers": [...]}``; each layer is
        ``{"layer", "kind", "weights", "nonzero_weights", "density", "macs", "nonzero_macs"}``.
        ResNet-18 CIFAR (width 1, 32x32): 555,422,720 dense MACs.

    Raises:
        ValueError: an INT8 `model` without `fp32_reference`.
    """
    is_int8 = bool(_int8_layers(model))
    if is_int8 and fp32_reference is None:
        raise ValueError("proxies: an INT8 model needs fp32_reference (e.g. models.build(**arch)) to count MACs")
    macs = layer_macs(fp32_reference if is_int8 else model, input_shape)
    weights = weight_tensors(model)
    kinds = {name: type(m).__name__ for name, m in model.named_modules()}
    layers = []
    for name in sorted(set(macs) | set(weights), key=lambda n: list(kinds).index(n) if n in kinds else 10**9):
        w = weights.get(name)
        n_w = w.numel() if w is not None else 0
        nz = int(torch.count_nonzero(w)) if w is not None else 0
        density = nz / n_w if n_w else 1.0
        dense = macs.get(name, 0)
        # Integer arithmetic: a layer's MACs are a multiple of its weight count, so this is exact.
        nonzero = dense * nz // n_w if n_w else dense
        layers.append({"layer": name, "kind": kinds.get(name, "?"), "weights": n_w, "nonzero_weights": nz,
                       "density": density, "macs": dense, "nonzero_macs": nonzero})
    out: dict[str, Any] = dict(count_params(model))
    out["macs"] = sum(layer["macs"] for layer in layers)
    out["nonzero_macs"] = sum(layer["nonzero_macs"] for layer in layers)
    out["layers"] = layers
    return out
