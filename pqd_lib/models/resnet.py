"""ResNet-18 for 32x32 inputs (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The CIFAR variant used throughout the compression literature (e.g. the widely
copied kuangliu/pytorch-cifar): the ImageNet 7x7 stride-2 stem and max-pool are
replaced by one 3x3 stride-1 convolution, so the four stages see 32, 16, 8 and 4
pixels. 11,173,962 parameters at 10 classes and width 1.0.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

from ._common import init_weights, scale_channels

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nn.Module):
    """The two-conv residual block of He et al. (2016), Fig. 2 left, post-activation.

    Laid out for quantization: each Conv2d is followed directly by its BatchNorm2d
    (conv-bn-relu / conv-bn fuse), every ReLU is its own module used once, and the
    skip addition goes through a :class:`FloatFunctional` so eager and FX
    quantization can give it its own output scale. A projection shortcut (1x1
    conv + BN, option B of the paper) is used when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.skip_add = FloatFunctional()
        # Applied after the addition; (add, ReLU) lowers to one quantized add_relu.
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.skip_add.add(out, self.shortcut(x))
        return self.relu2(out)


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016) with a 3x3 stride-1 stem and no max-pool.

    Module names follow torchvision: ``conv1``/``bn1``/``relu`` (stem),
    ``layer1``..``layer4``, ``avgpool``, ``fc`` (the classifier).

    Args:
        blocks_per_stage: number of :class:`BasicBlock` in each of the four stages;
            (2, 2, 2, 2) is ResNet-18.
        num_classes: size of the classifier output.
        width: channel multiplier applied to every channel count
            (see :func:`~pqd_lib.models._common.scale_channels`).
    """

    def __init__(
        self, blocks_per_stage: tuple[int, int, int, int], num_classes: int, width: float = 1.0
    ) -> None:
        super().__init__()
        stem = scale_channels(64, width)
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_channels = stem
        for index, num_blocks in enumerate(blocks_per_stage):
            out_channels = scale_channels(64 * 2**index, width)
            # The first stage keeps the 32x32 resolution; each later one halves it.
            strides = [1 if index == 0 else 2] + [1] * (num_blocks - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        # Adaptive rather than a fixed 4x4 pool: identical on 32x32, and other sizes still work.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, 3, H, W)`` to logits ``(N, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int, width: float = 1.0) -> ResNet:
    """Build CIFAR ResNet-18 (He et al. 2016): 11,173,962 parameters at 10 classes, width 1.0."""
    return ResNet((2, 2, 2, 2), num_classes, width)
