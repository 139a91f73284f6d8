"""The backbones pqd knows by name and the width rule that scales them, without importing torch.

The one home of the backbone list: :data:`pqd_lib.models.MODELS` registers one factory per name
here, the config accepts exactly these names, the batch runner expands ``--backbone all`` to them.
"""

from __future__ import annotations

import math

__all__ = ["BACKBONES", "NARROWEST_LAYER", "scale_channels", "check_width"]

#: Every backbone of the paper (Zhou & Shen 2026), by registry name.
BACKBONES: tuple[str, ...] = ("resnet18", "wrn28_10", "vgg16_bn")

#: Channels of each backbone's narrowest layer at width 1.0: ResNet-18's and VGG-16-BN's first
#: convolutions (64), WRN-28-10's 16-channel stem. The width check scales these.
NARROWEST_LAYER: dict[str, int] = {"resnet18": 64, "wrn28_10": 16, "vgg16_bn": 64}


def scale_channels(channels: int, width: float) -> int:
    """Return ``max(1, floor(channels * width + 0.5))``: the channel count scaled by ``width``.

    Rounding is half-up (not Python's half-to-even ``round``) so the rule is the one
    written here. No rounding to a multiple of 8: width 1.0 must give the published
    architectures exactly, and small widths stay small. :func:`check_width` refuses a width
    at which a layer would round to zero channels, so the ``max(1, ...)`` never hides one.
    """
    return max(1, math.floor(channels * width + 0.5))


def check_width(name: str, width: float) -> None:
    """Raise ValueError (one line) when `width` rounds a layer of backbone `name` to zero channels.

    Zero channels is the only floor: the x86 INT8 kernels have no minimum channel count. Neither
    fbgemm nor oneDNN documents one, and WRN-28-10 at the narrowest width accepted here (1/32: a
    1-channel stem conv, 1-channel BN-ReLU inputs of the first block) goes through FX QAT,
    ``convert_fx`` and an INT8 forward pass on the x86, fbgemm and onednn engines alike (torch 2.14.1;
    ``tests/test_config.py`` keeps that checked), as do ResNet-18 and VGG-16-BN at 1/128 (their
    1-channel first convolutions). So no "narrower than INT8 accepts" check exists: there is nothing
    to check against.
    """
    narrowest = NARROWEST_LAYER[name]
    if math.floor(narrowest * width + 0.5) < 1:
        smallest = 0.5 / narrowest
        raise ValueError(f"model.width: {width!r} rounds {name}'s {narrowest}-channel layer to 0 channels; "
                         f"allowed for {name}: >= {smallest:g} (1 channel at least)")
