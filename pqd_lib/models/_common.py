"""Helpers shared by the model families: the width rule and weight initialisation."""

from __future__ import annotations

import math

from torch import nn

__all__ = ["scale_channels", "init_weights"]


def scale_channels(channels: int, width: float) -> int:
    """Return ``max(1, floor(channels * width + 0.5))``: the channel count scaled by ``width``.

    Rounding is half-up (not Python's half-to-even ``round``) so the rule is the one
    written here, and at least one channel survives so tiny CPU widths still build.
    No rounding to a multiple of 8: width 1.0 must give the published architectures
    exactly, and small widths stay small.
    """
    return max(1, math.floor(channels * width + 0.5))


def init_weights(model: nn.Module) -> None:
    """Initialise ``model`` in place: Kaiming-normal convolutions, BN at identity.

    Convolutions use He et al. (ICCV 2015, "Delving Deep into Rectifiers") normal
    init with ``mode="fan_out"``, as torchvision's ResNets and the WRN reference code
    do; BatchNorm starts as the identity map (weight 1, bias 0). Linear layers keep
    PyTorch's default init except for a zero bias.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
