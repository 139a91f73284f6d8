"""Helpers shared by the model families: the width rule (from :mod:`pqd_lib.backbones`) and weight initialisation."""

from __future__ import annotations

from torch import nn

from ..backbones import scale_channels

__all__ = ["scale_channels", "init_weights"]


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
