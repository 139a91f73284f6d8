"""The backbones of the paper's experiments, built by name from a registry.

``build(name, num_classes, width)`` looks ``name`` up in :data:`MODELS`. Every
model takes 32x32 RGB input, returns logits ``(N, num_classes)``, and is
quantization-ready by construction: Conv2d -> BatchNorm2d -> ReLU as separate
modules in fusable order, each ReLU module used once, residual additions through
``FloatFunctional`` (no bare ``+``), ``torch.flatten`` before the classifier. All
three export with ``torch.export.export`` for the default PT2E QAT and trace with
``torch.fx.symbolic_trace`` for the FX reference path (``prepare_qat_fx`` /
``convert_fx``, ``quantize.engine=fx``), whose residual additions need ``FloatFunctional``.

Parameter counts at width 1.0 (all parameters, BN affine included; BN running
statistics are buffers and not counted):

============  ==========================================  ============  =============
name          architecture                                10 classes    100 classes
============  ==========================================  ============  =============
resnet18      ResNet-18, 3x3 stride-1 stem, no max-pool   11,173,962    11,220,132
wrn28_10      WRN-28-10, pre-activation, dropout 0        36,479,194    36,536,884
vgg16_bn      VGG-16-BN, single Linear(512, C) head       14,728,266    14,774,436
============  ==========================================  ============  =============

``width`` multiplies every channel count (stem, stages, classifier input) and
rounds half up: ``max(1, floor(c * width + 0.5))``. Width 1.0 is the published
architecture; CPU presets use 0.125 or 0.25.

First convolution and classifier, by module name: ``resnet18`` ``conv1`` / ``fc``;
``wrn28_10`` ``conv1`` / ``fc``; ``vgg16_bn`` ``features.0`` / ``classifier``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..backbones import BACKBONES, check_width
from .resnet import resnet18
from .vgg import vgg16_bn
from .wrn import wrn28_10

__all__ = ["MODELS", "build", "rebuild"]

#: Name -> factory ``(num_classes, width) -> nn.Module``, one per name of :data:`pqd_lib.backbones.BACKBONES`.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "wrn28_10": wrn28_10,
    "vgg16_bn": vgg16_bn,
}
if tuple(MODELS) != BACKBONES:  # a backbone added in one place only would half-work
    raise ImportError(f"pqd_lib.models.MODELS {tuple(MODELS)} differs from pqd_lib.backbones.BACKBONES {BACKBONES}")


def build(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build the backbone registered as ``name``, freshly initialised.

    Args:
        name: a key of :data:`MODELS` (``resnet18``, ``wrn28_10``, ``vgg16_bn``).
        num_classes: classifier outputs, at least 2 (10 for CIFAR-10, 100 for CIFAR-100).
        width: channel multiplier, > 0; 1.0 is the paper's architecture.

    Raises:
        ValueError: unknown ``name`` (the message lists the allowed names), or
            ``num_classes``/``width`` out of range.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    bad_width = isinstance(width, bool) or not isinstance(width, numbers.Real)
    if bad_width or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0; got {width!r}")
    check_width(name, float(width))
    return MODELS[name](num_classes=int(num_classes), width=float(width))


def rebuild(arch: Mapping[str, Any], build_fn: Callable[[], nn.Module] | None = None) -> nn.Module | None:
    """A fresh module for a saved ``arch`` (``{"name", "num_classes", "width"}``) before its weights are loaded.

    ``build_fn()`` when given (any network), else :func:`build` for a registry name; None when neither
    applies, so the caller can say which file it was reading and what to pass instead.
    """
    if build_fn is not None:
        return build_fn()
    if arch.get("name") in MODELS:
        return build(**arch)
    return None
