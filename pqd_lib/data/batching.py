"""Mini-batches of a :class:`~pqd_lib.data.DataSplits`: order, augmentation, normalisation, device."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from .augmentation import augment as augment_batch
from .splits import SPLITS, DataSplits

__all__ = ["normalize", "batches", "num_batches"]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, same memory format."""
    if x.dtype != torch.uint8:
        raise ValueError(f"normalize: expected uint8 images, got {x.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    # One fused multiply-add instead of three passes over the batch.
    scale = 1.0 / (255.0 * std_t)
    return torch.addcmul(-mean_t / std_t, x.float(), scale)


def batches(
    data: DataSplits,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float32 images, int64 labels) mini-batches of one split.

    Args:
        data: the dataset; its tensors may live on the CPU or on `device` already.
        split: "train" or "test".
        batch_size: images per batch; the last batch is smaller unless `drop_last`.
        shuffle: visit the images in a random order drawn from `generator`.
        augment: apply the data's :attr:`~pqd_lib.data.DataSplits.augmentation` (random crop and/or
            flip, fitted to the image shape) to each batch.
        generator: the only source of randomness: the same generator state gives the same
            batches. When None and randomness is needed, one is seeded from torch's global
            RNG (as ``torch.utils.data.DataLoader`` does), so ``torch.manual_seed`` still rules.
        device: where batches are produced; None means where the data are. Images are moved
            as uint8 (4x less traffic than float) and normalised on `device`.
        channels_last: return images in ``torch.channels_last`` memory format.
        drop_last: skip a final batch smaller than `batch_size`.
    """
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not allowed; choose 'train' or 'test'")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} must be a positive integer")
    x, y = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    device = x.device if device is None else torch.device(device)
    if (shuffle or augment) and generator is None:
        generator = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
    n = len(x)
    order = torch.randperm(n, generator=generator, device=generator.device).to(x.device) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    async_copy = device.type == "cuda"
    for lo in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        else:
            idx = order[lo:lo + batch_size]
            xb, yb = x[idx], y[idx]
        # Asynchronous only towards a GPU: a non-blocking copy to the CPU could be read unfinished.
        xb, yb = xb.to(device, non_blocking=async_copy), yb.to(device, non_blocking=async_copy)
        if augment:
            xb = augment_batch(xb, generator, data.augmentation)
        if channels_last:
            # Converted while still uint8 (cheaper); normalize keeps the memory format.
            xb = xb.contiguous(memory_format=torch.channels_last)
        xb = normalize(xb, data.mean, data.std)
        if channels_last and not xb.is_contiguous(memory_format=torch.channels_last):
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for `n` images (for progress bars and schedules)."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)
