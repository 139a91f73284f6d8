"""Top-1 / top-5 test accuracy of any model form: FP32, pruned, fake-quant (QAT), INT8, or an ONNX model.

The test images are kept as uint8 (as :class:`pqd_lib.data.DataSplits` holds them) and normalised
per batch with the dataset's mean/std (``pqd_lib.data.normalize``), so the same bytes are fed to
every form. INT8 models (PyTorch's quantized kernels) and ONNX models run on the CPU; a fake-quant
model is evaluated with its observers paused, so evaluation never moves its quantization ranges.
Top-5 is reported when the model has at least 100 classes (CIFAR-100), as is usual.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import data as data_mod
from ..correct_bits import pack_correct
from ..stages.quantize import is_fake_quant, is_int8, observers_paused
from .onnx_runtime import session

__all__ = ["accuracy"]


def _paused(model: nn.Module) -> Any:
    # Either engine's fake-quant model (is_fake_quant dispatches): evaluation must not move its ranges.
    if is_fake_quant(model):
        return observers_paused(model)
    return contextlib.nullcontext()


def accuracy(model: nn.Module | Any, data: Any = None, *, x: torch.Tensor | None = None,
             y: torch.Tensor | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             batch_size: int = 500, device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Top-1 (and top-5 with >= 100 classes) in percent of `model` on a test set.

    Args:
        model: an ``nn.Module`` of any form, an ``onnxruntime.InferenceSession``, or the path of an
            ``.onnx`` file.
        data: a :class:`~pqd_lib.data.DataSplits` (its ``x_test``, ``y_test``, ``mean``, ``std``);
            or give `x` (uint8 NCHW), `y` (int64), `mean`, `std` directly.
        batch_size: images per forward pass.
        device: where the images go for a torch model; None = the device of its parameters (the
            model is not moved). INT8 and ONNX models run on the CPU.
        threads: ONNX Runtime intra-op threads (default all cores).

    Returns:
        ``{"top1": %, "top5": % or None, "n": images, "correct": top-1 hits, "correct_bits": per-image
        top-1 hits packed 8 per byte and base64-encoded (:func:`pqd_lib.correct_bits.pack_correct`; 1,668
        characters for 10,000 images), for the per-image paired bootstrap between methods}``.

    Raises:
        ValueError: no test set given, or images that are not uint8 (N, C, H, W).
    """
    if data is not None:
        x, y, mean, std = data.x_test, data.y_test, data.mean, data.std
    if x is None or y is None or mean is None or std is None:
        raise ValueError("accuracy: give data (a DataSplits) or x, y, mean and std")
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"accuracy: x must be uint8 images (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    y = y.cpu()
    onnx_model = isinstance(model, (str, os.PathLike)) or hasattr(model, "run")
    if isinstance(model, (str, os.PathLike)):
        model = session(Path(model), threads=threads or (os.cpu_count() or 1))
    if not onnx_model:
        if is_int8(model):
            device = "cpu"  # the quantized kernels are CPU-only
        elif device is None:
            device = next((t.device for t in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
    correct1 = correct5 = 0
    hits = []
    logits_dim = None
    with contextlib.ExitStack() as stack:
        if not onnx_model:
            stack.enter_context(torch.inference_mode())
            stack.enter_context(_paused(model))
        for i in range(0, len(x), batch_size):
            images = data_mod.normalize(x[i:i + batch_size].cpu(), mean, std)
            if onnx_model:
                name = model.get_inputs()[0].name
                logits = torch.from_numpy(np.asarray(model.run(None, {name: images.numpy()})[0]))
            else:
                logits = model(images.to(device)).float().cpu()
            logits_dim = logits.shape[1]
            targets = y[i:i + batch_size]
            k = min(5, logits_dim)
            top = logits.topk(k, dim=1).indices
            hits.append(top[:, 0] == targets)
            correct1 += int(hits[-1].sum())
            correct5 += int((top == targets[:, None]).any(dim=1).sum())
    if not onnx_model:
        model.train(was_training)
    n = len(y)
    top5 = 100.0 * correct5 / n if (logits_dim or 0) >= 100 and n else None
    bits = pack_correct(torch.cat(hits).numpy()) if hits else ""
    return {"top1": 100.0 * correct1 / n if n else float("nan"), "top5": top5, "n": n, "correct": correct1,
            "correct_bits": bits}
