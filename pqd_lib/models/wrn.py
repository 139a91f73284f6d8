"""Wide ResNet WRN-28-10 (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Depth 28 = 6n + 4 with n = 4 wide basic blocks per group, widening factor k = 10
(group widths 160, 320, 640 after a 16-channel stem), pre-activation blocks
(He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016) and dropout 0
by default. 36,479,194 parameters at 10 classes and width 1.0, the count of the
reference implementation.

Pre-activation order (BN -> ReLU -> Conv) is only partly conv-bn fusable, which is
accepted: inside each block ``conv1 -> bn2 -> relu2`` fuses (as does the stem conv
with the first block's ``bn1 -> relu1``), but a block's ``conv2`` and shortcut
feed the residual addition, so the next BN stands alone. Under FX graph-mode
quantization those become quantized ``BNReLU2d`` modules (one extra
requantisation each) next to quantized ``ConvReLU2d``/``Conv2d``; the INT8 model
is correct, just less fused than ResNet-18 or VGG-16-BN.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

from ._common import init_weights, scale_channels

__all__ = ["WideBasicBlock", "WideResNet", "wrn28_10"]


class WideBasicBlock(nn.Module):
    """The pre-activation wide basic block B(3,3) of Zagoruyko & Komodakis (2016), Fig. 1(c)/(d).

    When the shape changes, the pre-activation ``relu1(bn1(x))`` feeds both the
    residual branch and the 1x1 projection shortcut, as in the reference code;
    otherwise the shortcut is the identity on the raw input. The addition goes
    through a :class:`FloatFunctional`, never a bare ``+``, so quantization can
    observe it; dropout (between the two convs) is an ``nn.Dropout`` only when
    ``dropout > 0``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        # Identity at p=0 keeps the default graph free of a no-op dropout node.
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_channels == out_channels and stride == 1
        self.shortcut: nn.Module = (
            nn.Identity()
            if self.equal_in_out
            else nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        )
        self.skip_add = FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``conv2(dropout(relu(bn2(conv1(relu(bn1(x))))))) + shortcut``."""
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        # The projection reads the pre-activated input, the identity the raw one (reference code).
        skip = self.shortcut(x if self.equal_in_out else pre)
        return self.skip_add.add(out, skip)


class WideResNet(nn.Module):
    """WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016), pre-activation.

    Module names: ``conv1`` (stem), ``block1``..``block3`` (groups of
    :class:`WideBasicBlock`), ``bn``/``relu`` (the final pre-activation),
    ``avgpool``, ``fc`` (the classifier).

    Args:
        depth: total depth, ``6n + 4``; 28 gives n = 4 blocks per group.
        widen_factor: the paper's k; group widths are 16k, 32k, 64k.
        num_classes: size of the classifier output.
        width: channel multiplier applied to every channel count, stem included
            (see :func:`~pqd_lib.models._common.scale_channels`).
        dropout: dropout probability inside each block; the paper's CIFAR runs
            without it are the default here.
    """

    def __init__(
        self, depth: int, widen_factor: int, num_classes: int, width: float = 1.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 (e.g. 16, 22, 28, 40); got {depth}")
        blocks_per_group = (depth - 4) // 6
        base = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        channels = [scale_channels(c, width) for c in base]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        in_channels = channels[0]
        for index, (out_channels, first_stride) in enumerate(zip(channels[1:], (1, 2, 2))):
            blocks = []
            for block in range(blocks_per_group):
                stride = first_stride if block == 0 else 1
                blocks.append(WideBasicBlock(in_channels, out_channels, stride, dropout))
                in_channels = out_channels
            self.add_module(f"block{index + 1}", nn.Sequential(*blocks))
        # Pre-activation blocks end on a conv, so the head needs its own BN-ReLU.
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, 3, H, W)`` to logits ``(N, num_classes)``."""
        x = self.conv1(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        x = self.relu(self.bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def wrn28_10(num_classes: int, width: float = 1.0, dropout: float = 0.0) -> WideResNet:
    """Build WRN-28-10 (Zagoruyko & Komodakis 2016): 36,479,194 parameters at 10 classes, width 1.0."""
    return WideResNet(28, 10, num_classes, width, dropout)
