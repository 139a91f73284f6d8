"""VGG-16 with batch normalisation for 32x32 inputs.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition" (ICLR 2015), configuration D, with BatchNorm after every convolution
(Ioffe & Szegedy, ICML 2015). The CIFAR variant keeps the 13 convolutions and the
five max-pools (32 -> 1 pixel) and replaces the three 4096-wide fully connected
layers with one ``Linear(512, num_classes)``, the head of the widely used
kuangliu/pytorch-cifar and of most CIFAR compression papers. Convolutions keep
their bias, as in torchvision's ``vgg16_bn``; it folds away on conv-bn fusion.
14,728,266 parameters at 10 classes and width 1.0.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import init_weights, scale_channels

__all__ = ["VGG16_CONFIG", "VGG", "vgg16_bn"]

#: Configuration D: output channels of each 3x3 convolution, "M" for a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class VGG(nn.Module):
    """CIFAR VGG with BatchNorm (Simonyan & Zisserman 2015) and a single linear classifier.

    ``features`` is an ``nn.Sequential`` of Conv2d -> BatchNorm2d -> ReLU triples
    (each fusable, each ReLU its own module) and MaxPool2d; then ``avgpool``,
    a flatten and ``classifier`` (one ``nn.Linear``). The first convolution is
    ``features.0``.

    Args:
        config: channel counts and "M" pools, e.g. :data:`VGG16_CONFIG`.
        num_classes: size of the classifier output.
        width: channel multiplier applied to every channel count
            (see :func:`~pqd_lib.models._common.scale_channels`).
    """

    def __init__(self, config: tuple[int | str, ...], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            out_channels = scale_channels(int(item), width)
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        # 1x1 already at 32x32 input (a no-op there); keeps other input sizes working.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, 3, H, W)`` to logits ``(N, num_classes)``."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(num_classes: int, width: float = 1.0) -> VGG:
    """Build CIFAR VGG-16-BN (Simonyan & Zisserman 2015): 14,728,266 parameters at 10 classes, width 1.0."""
    return VGG(VGG16_CONFIG, num_classes, width)
