"""Model size in bytes, six ways: as saved, gzip, xz, a sparse-aware encoding, its per-layer choice, the entropy bound.

Zhou & Shen (2026) report compression ratios; a ratio needs a stated byte count. Definitions:

* **as saved** (``size_bytes``): the bytes of ``torch.save(model.state_dict())`` -- FP32 weights at
  4 bytes, INT8 weights at 1 byte plus their packed layout -- or of the artifact file when given.
* **gzip** (level 9) and **xz** (LZMA2, preset 6, the ``xz`` tool's default) of those same bytes:
  what a generic compressor makes of the zeros left by pruning. zstd is not used (it would be a
  new dependency and adds no new kind of evidence between gzip and xz).
* **sparse encoding** (``size_sparse_bytes``), computed exactly, layer by layer, for every
  conv/linear weight: a bitmask of one bit per weight (``ceil(numel / 8)`` bytes), the non-zero
  values (1 byte each for INT8, 4 for FP32), per-channel scales (4 bytes each, float32) and zero
  points (1 byte each) for quantized weights, the bias (4 bytes per element, float32); plus every
  other tensor of the state dict (BN statistics of an FP32 model, activation scales and zero points
  of an INT8 one) at its stored element size.
* **stored** (``size_stored_bytes``): the sparse encoding with each layer stored the cheaper way,
  dense (values only, no bitmask) or bitmask + non-zeros, plus the same qparams, biases and rest:
  what a format that picks per layer would write, so an unpruned layer pays no bitmask. This is
  a bitmask encoding, not CSR (CSR stores a column index per non-zero and a row pointer array).
* **entropy bound** (``size_entropy_bytes``): the same, with the bitmask replaced by its Shannon
  bound ``numel x H(d)`` bits for a layer of density ``d`` (``H`` the binary entropy) -- no
  position coder can do better for i.i.d. positions -- and the values kept at 8 (INT8) or 32
  (FP32) bits each.

Sizes are bytes; :func:`mib` converts for display (1 MiB = 2**20 bytes).
"""

from __future__ import annotations

import gzip
import io
import lzma
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "mib",
    "saved_bytes",
    "compressed_sizes",
    "layer_encodings",
    "sparse_encoding_bytes",
    "stored_bytes",
    "entropy_bound_bytes",
    "binary_entropy",
    "model_sizes",
]

GZIP_LEVEL = 9
XZ_PRESET = 6


def mib(n_bytes: float) -> float:
    """Bytes -> MiB (2**20 bytes), for display only; records keep bytes."""
    return n_bytes / 2**20


def saved_bytes(model: nn.Module) -> bytes:
    """The bytes ``torch.save(model.state_dict())`` writes (the 'as saved' size of a model without a file)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def compressed_sizes(blob: bytes) -> dict[str, int]:
    """``{"gzip": n, "xz": n}``: the compressed length of `blob` (gzip level 9 with mtime 0, xz preset 6)."""
    return {"gzip": len(gzip.compress(blob, compresslevel=GZIP_LEVEL, mtime=0)),
            "xz": len(lzma.compress(blob, format=lzma.FORMAT_XZ, preset=XZ_PRESET))}


def binary_entropy(p: float) -> float:
    """``H(p) = -p log2 p - (1-p) log2 (1-p)`` in bits (0 at p = 0 or 1)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def layer_encodings(model: nn.Module) -> list[dict[str, Any]]:
    """Per conv/linear layer, the counts the sparse encoding is made of.

    Each entry: ``layer``, ``numel``, ``nonzero``, ``value_bytes`` (1 INT8, 4 FP32), ``scales``,
    ``zero_points`` (per-channel quantization parameters of the weight; 0 for FP32), ``bias``
    (elements), ``state_keys`` (the state-dict keys the layer accounts for).
    """
    from ..stages.quantize import int8_layers  # the one reader of INT8 weights (FX and PT2E models)

    out = []
    for name, q in int8_layers(model).items():
        # Activation scales/zero points are not the layer's: left to the 'rest'.
        out.append({"layer": name, "numel": q.values.numel(), "nonzero": int(torch.count_nonzero(q.values)),
                    "value_bytes": 1, "scales": q.qparams, "zero_points": q.qparams,
                    "bias": 0 if q.bias is None else q.bias.numel(), "state_keys": set(q.state_keys)})
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            w = m.weight.detach()
            out.append({"layer": name, "numel": w.numel(), "nonzero": int(torch.count_nonzero(w)),
                        "value_bytes": w.element_size(), "scales": 0, "zero_points": 0,
                        "bias": 0 if m.bias is None else m.bias.numel(),
                        "state_keys": {f"{prefix}weight", f"{prefix}bias"}})
    return out


def _rest_bytes(model: nn.Module, layers: list[dict[str, Any]]) -> int:
    """State-dict tensors not accounted for by the layers, at their stored element size."""
    covered = set().union(*(layer["state_keys"] for layer in layers)) if layers else set()
    total = 0
    for key, value in model.state_dict().items():
        if key in covered or not isinstance(value, torch.Tensor) or value.is_quantized:
            continue
        total += value.numel() * value.element_size()
    return total


def _qparam_and_bias_bytes(layer: dict[str, Any]) -> int:
    return 4 * layer["scales"] + 1 * layer["zero_points"] + 4 * layer["bias"]


def sparse_encoding_bytes(model: nn.Module) -> int:
    """Exact size of the sparse-aware encoding (module docstring): bitmask + non-zeros + qparams + biases + rest."""
    layers = layer_encodings(model)
    total = sum(math.ceil(layer["numel"] / 8) + layer["nonzero"] * layer["value_bytes"]
                + _qparam_and_bias_bytes(layer) for layer in layers)
    return total + _rest_bytes(model, layers)


def stored_bytes(model: nn.Module) -> int:
    """Exact size of the per-layer choice (module docstring): min(dense, bitmask + non-zeros) per layer."""
    layers = layer_encodings(model)
    total = sum(min(layer["numel"] * layer["value_bytes"],
                      math.ceil(layer["numel"] / 8) + layer["nonzero"] * layer["value_bytes"])
                + _qparam_and_bias_bytes(layer) for layer in layers)
    return total + _rest_bytes(model, layers)


def entropy_bound_bytes(model: nn.Module) -> float:
    """The entropy bound (module docstring): values at 8/32 bits + numel x H(density) bits + qparams, biases, rest."""
    layers = layer_encodings(model)
    bits = 0.0
    for layer in layers:
        density = layer["nonzero"] / layer["numel"] if layer["numel"] else 0.0
        bits += 8 * layer["value_bytes"] * layer["nonzero"] + layer["numel"] * binary_entropy(density)
        bits += 8 * _qparam_and_bias_bytes(layer)
    return bits / 8 + _rest_bytes(model, layers)


def model_sizes(model: nn.Module, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """All six sizes of `model` in bytes: ``size_bytes``, ``size_gzip_bytes``, ``size_xz_bytes``,
    ``size_sparse_bytes``, ``size_stored_bytes``, ``size_entropy_bytes``.

    `path`: the saved artifact (e.g. a deploy file); its bytes are then the 'as saved' size and what
    is compressed. Without it, ``torch.save(model.state_dict())`` in memory.
    """
    blob = Path(path).read_bytes() if path is not None else saved_bytes(model)
    packed = compressed_sizes(blob)
    return {"size_bytes": len(blob), "size_gzip_bytes": packed["gzip"], "size_xz_bytes": packed["xz"],
            "size_sparse_bytes": sparse_encoding_bytes(model), "size_stored_bytes": stored_bytes(model),
            "size_entropy_bytes": entropy_bound_bytes(model)}
