"""The backbones pqd knows by name and the width rule that scales them, without importing torch.

The one home of the backbone list: :data:`pqd_lib.models.MODELS` registers one factory per name
here, the config accepts exactly these names, the batch runner expands ``--backbone all`` to them.
"""

from __future__ import annotations

import math

__all__ = ["BACKBONES", "NARROWEST_LAYER", "STRIDED_POINTWISE_INPUTS", "ONEDNN_SAFE_INPUT_CHANNELS", "NHWC_BUG_FIX",
           "scale_channels", "check_width", "check_channels_last"]

#: Every backbone of the paper (Zhou & Shen 2026), by registry name.
BACKBONES: tuple[str, ...] = ("resnet18", "wrn28_10", "vgg16_bn")

#: Channels of each backbone's narrowest layer at width 1.0: ResNet-18's and VGG-16-BN's first
#: convolutions (64), WRN-28-10's 16-channel stem. The width check scales these.
NARROWEST_LAYER: dict[str, int] = {"resnet18": 64, "wrn28_10": 16, "vgg16_bn": 64}

#: Input channels at width 1.0 of each backbone's 1x1 convolutions with stride 2 (the downsampling
#: shortcuts; VGG-16-BN has none). :func:`check_channels_last` scales these;
#: ``tests/test_config.py`` checks the table against the built models.
STRIDED_POINTWISE_INPUTS: dict[str, tuple[int, ...]] = {
    "resnet18": (64, 128, 256), "wrn28_10": (160, 320), "vgg16_bn": ()}

#: oneDNN's 1x1 weight-gradient kernel for NHWC input and stride > 1 is wrong when the input has
#: fewer channels than its channel block: 8 on AVX2, 16 on AVX-512 (oneDNN issue #6035, open). On
#: the AVX2-only EPYC of our records, torch 2.14.1 crashes for 2-7 input channels (segfault, double
#: free, or a hang at 2 threads) and matches NCHW to 1e-6 from 8 on; the report's AVX-512 machine
#: returns wrong gradients silently below 16. 16 covers both.
ONEDNN_SAFE_INPUT_CHANNELS = 16

#: The end of every refusal of such a convolution (the config's and the training loop's): why, and the fix.
NHWC_BUG_FIX = ("whose channels_last weight gradient oneDNN computes wrong or crashes on (oneDNN issue #6035); "
                "set train.channels_last=false")


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


def check_channels_last(name: str, width: float) -> None:
    """Raise ValueError (one line) when channels_last training of backbone `name` at `width` hits oneDNN #6035.

    The CPU kernel behind the weight gradient of a stride-2 1x1 convolution in NHWC layout crashes
    or returns wrong values when that convolution has fewer than
    :data:`ONEDNN_SAFE_INPUT_CHANNELS` inputs (ResNet-18 below width 0.25, WRN-28-10 below 0.1).
    NCHW layout is unaffected, so the fix offered is ``train.channels_last=false``.
    """
    narrow = [c for c in STRIDED_POINTWISE_INPUTS[name] if scale_channels(c, width) < ONEDNN_SAFE_INPUT_CHANNELS]
    if narrow:
        got = scale_channels(narrow[0], width)
        smallest = ONEDNN_SAFE_INPUT_CHANNELS / narrow[0]
        raise ValueError(f"model.width: {width!r} gives {name} a stride-2 1x1 convolution with {got} input channels, "
                         f"{NHWC_BUG_FIX}, or model.width >= {smallest:g}")
