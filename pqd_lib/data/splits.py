"""The in-memory dataset: :class:`DataSplits` (train and test images as uint8 tensors, labels, statistics).

Built by the sources (:func:`pqd_lib.data.load`) or from a user's own tensors
(:meth:`DataSplits.from_tensors`: any channel count, any image size).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .augmentation import Augmentation

__all__ = ["DataError", "DataSplits", "SPLITS"]

#: The splits a DataSplits holds, in the order of its fields.
SPLITS = ("train", "test")


class DataError(ValueError):
    """The data cannot be found, read or validated; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class DataSplits:
    """Train and test images as uint8 NCHW tensors with int64 labels, plus what is needed to use them.

    Images stay uint8 (1 byte per value: all of CIFAR-10 train is 150 MB) and are normalised
    per batch by :func:`~pqd_lib.data.batches`; ``mean``/``std`` are the per-channel statistics in
    [0, 1] units. Any number of channels (grey scans, RGB, multispectral bands) and any image size.
    ``augmentation`` is what training batches get when ``augment`` is on; None fits the image shape
    (:meth:`~pqd_lib.data.Augmentation.for_shape`: random crop with 1/8-side padding and flip).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: Augmentation | None = None

    def __post_init__(self) -> None:
        # Cheap structural checks only (no pass over the pixels): every constructor goes through here.
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
                raise ValueError(f"x_{split}: expected a uint8 tensor of shape (N, C, H, W), got "
                                 f"{_describe(x)}; use DataSplits.from_tensors to convert")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise ValueError(f"y_{split}: expected an int64 tensor of shape ({len(x)},), got {_describe(y)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"x_train images are {tuple(self.x_train.shape[1:])} but x_test images are "
                             f"{tuple(self.x_test.shape[1:])}; both splits need the same (C, H, W)")
        channels = self.x_train.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel), got {self.mean!r}/{self.std!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if not self.classes:
            raise ValueError("classes must name at least one class")
        if self.augmentation is None:
            # Frozen dataclass: the one place the default is resolved, so every copy carries it.
            object.__setattr__(self, "augmentation", Augmentation.for_shape(*self.x_train.shape[2:]))
        elif not isinstance(self.augmentation, Augmentation):
            raise ValueError(f"augmentation: expected a pqd_lib.data.Augmentation or None, got "
                             f"{type(self.augmentation).__name__}")

    @classmethod
    def from_tensors(
        cls,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        classes: Sequence[str] | None = None,
        source: str = "user tensors",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augmentation: Augmentation | None = None,
    ) -> DataSplits:
        """Build a DataSplits from your own images and labels, validating them.

        Args:
            x_train, x_test: images as (N, C, H, W) tensors (or arrays) with any number of channels C
                and any size H x W (the same in both splits), either uint8 in 0..255 or floating
                point in [0, 1] (converted to uint8 by rounding).
            y_train, y_test: integer class labels of shape (N,), in ``0 .. len(classes) - 1``.
            classes: class names; default ``("0", "1", ...)`` up to the largest label.
            source: a description recorded with results.
            mean, std: per-channel statistics in [0, 1] units; default: computed from ``x_train``
                (never from the test split).
            augmentation: random crop/flip for training batches; None fits the image shape,
                ``pqd_lib.data.NO_AUGMENTATION`` turns it off for data where crops or flips change
                the label.

        Raises:
            ValueError: wrong rank, channel count, dtype, value range, label range or length.
        """
        xs = {"x_train": _as_uint8_images("x_train", x_train), "x_test": _as_uint8_images("x_test", x_test)}
        ys = {"y_train": _as_labels("y_train", y_train), "y_test": _as_labels("y_test", y_test)}
        for split in SPLITS:
            x, y = xs[f"x_{split}"], ys[f"y_{split}"]
            if len(x) == 0:
                raise ValueError(f"x_{split} holds no images")
            if len(y) != len(x):
                raise ValueError(f"y_{split} has {len(y)} labels but x_{split} has {len(x)} images")
        top = int(max(ys["y_train"].max(), ys["y_test"].max()))
        if classes is None:
            classes = tuple(str(i) for i in range(top + 1))
        classes = tuple(str(c) for c in classes)
        if top >= len(classes):
            raise ValueError(f"label {top} is out of range for {len(classes)} classes")
        if mean is None or std is None:
            m, s = _channel_stats(xs["x_train"])
            mean = m if mean is None else mean
            std = s if std is None else std
        return cls(xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"], classes, source,
                   tuple(float(v) for v in mean), tuple(float(v) for v in std), augmentation)

    @property
    def num_classes(self) -> int:
        """The number of classes (10 for CIFAR-10, 100 for CIFAR-100)."""
        return len(self.classes)

    @property
    def name(self) -> str:
        """A short name for run ids: the source's words and the image shape, e.g. ``mnist-1x28x28``."""
        words = re.sub(r"[^a-z0-9]+", "-", self.source.lower()).strip("-") or "data"
        return f"{words}-{'x'.join(str(v) for v in self.x_train.shape[1:])}"

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return self.x_train.device

    def to(self, device: str | torch.device) -> DataSplits:
        """A copy with every tensor on `device` (the data then stays resident there, e.g. on a GPU)."""
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    def subset(self, train: int | None, test: int | None, seed: int) -> DataSplits:
        """A class-balanced, seeded subset: `train`/`test` images in total (None keeps a split whole).

        Each class gets ``n // num_classes`` images (fewer only where a class has fewer; the
        shortfall goes to the other classes); the remainder goes one image each to classes
        drawn with `seed`. Which images a class contributes is a seeded permutation of that
        class, and the train and test draws are independent streams, so the same
        (data, sizes, seed) always give the same subset. Images keep their original order.

        Raises:
            DataError: a size larger than the split.
        """
        out = {}
        for split_id, (split, n) in enumerate(zip(SPLITS, (train, test))):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if n is None:
                out[f"x_{split}"], out[f"y_{split}"] = x, y
                continue
            if n < 1 or n > len(y):
                raise DataError(f"{split}_subset: {n} images requested but {self.source} has {len(y)} "
                                f"{split} images; choose 1..{len(y)} (or null for all)")
            idx = _balanced_indices(y.cpu(), self.num_classes, n, np.random.default_rng([seed, split_id]))
            idx = idx.to(y.device)
            out[f"x_{split}"], out[f"y_{split}"] = x[idx].contiguous(), y[idx]
        return dataclasses.replace(self, **out)

    def __repr__(self) -> str:
        # The dataclass default would print every pixel.
        return (f"DataSplits(source={self.source!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, classes={self.num_classes}, device={self.device})")


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)}"
    return type(t).__name__


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    """`value` as a tensor (arrays, lists), or a one-line ValueError naming the argument."""
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: cannot be read as a tensor ({exc})") from None


def _as_uint8_images(name: str, x: Any) -> torch.Tensor:
    """Validate images and return them as uint8 NCHW contiguous (floats in [0, 1] are scaled and rounded)."""
    x = _as_tensor(name, x)
    if x.dim() != 4:
        hint = "; single-channel images (N, H, W) need a channel axis: pass x.unsqueeze(1)" if x.dim() == 3 else ""
        raise ValueError(f"{name}: expected 4 dimensions (N, C, H, W), got shape {tuple(x.shape)}{hint}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name}: every dimension of (N, C, H, W) must be at least 1, got shape {tuple(x.shape)}")
    if x.shape[-1] <= 4 < x.shape[1]:
        # (N, H, W, C) read as (N, C, H, W) gives many "channels" and images a few pixels wide.
        raise ValueError(f"{name}: shape {tuple(x.shape)} looks channels-last (N, H, W, C): pass "
                         "x.permute(0, 3, 1, 2) to get (N, C, H, W)")
    if x.dtype == torch.uint8:
        return x.contiguous()
    if x.is_floating_point():
        if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise ValueError(f"{name}: floating-point images must lie in [0, 1]; got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]")
        return (x.float() * 255).round_().to(torch.uint8).contiguous()
    raise ValueError(f"{name}: expected uint8 (0..255) or floating-point (0..1) images, got {x.dtype}")


def _as_labels(name: str, y: Any) -> torch.Tensor:
    """Validate class labels and return them as int64 (N,) contiguous."""
    y = _as_tensor(name, y)
    if y.dim() != 1:
        raise ValueError(f"{name}: expected labels of shape (N,), got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class labels, got {y.dtype}")
    y = y.to(torch.int64).contiguous()
    if len(y) and y.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {int(y.min())}")
    return y


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std in [0, 1] units, in chunks (a float copy of CIFAR would be 600 MB)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros(c, dtype=torch.float64, device=x.device)
    for lo in range(0, len(x), 4096):
        chunk = x[lo:lo + 4096].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = x.numel() / c
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0)
    std = var.sqrt().clamp_min(1e-3)  # a constant channel would otherwise divide by zero
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def _balanced_indices(y: torch.Tensor, num_classes: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Sorted indices of `n` samples spread as evenly over the classes as their sizes allow."""
    labels = y.numpy()
    members = [np.flatnonzero(labels == k) for k in range(num_classes)]
    counts = np.array([len(m) for m in members])
    # Water filling: the largest per-class level L with sum(min(count, L)) <= n ...
    level = 0
    while level < counts.max() and np.minimum(counts, level + 1).sum() <= n:
        level += 1
    take = np.minimum(counts, level)
    # ... then one more image for randomly drawn classes that still have images left.
    left = n - int(take.sum())
    spare = np.flatnonzero(counts > level)
    take[rng.permutation(spare)[:left]] += 1
    chosen = [m[rng.permutation(len(m))[:t]] for m, t in zip(members, take)]
    return torch.from_numpy(np.sort(np.concatenate(chosen))).to(torch.int64)

