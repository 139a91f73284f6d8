"""Images as uint8 tensors in memory, with augmentation and normalisation on whole batches.

One module per idea:

- :mod:`~pqd_lib.data.splits`: :class:`DataSplits`, the in-memory train/test images and labels
  (:meth:`DataSplits.from_tensors` for a user's own images: any channel count, any size).
- :mod:`~pqd_lib.data.datasets`: the datasets known by name (CIFAR-10/100: classes, statistics).
- :mod:`~pqd_lib.data.sources`: :func:`load` from torchvision, an image-folder tree or the
  embedded CIFAR-10 subset; :mod:`~pqd_lib.data.cache` keeps their decoded tensors.
- :mod:`~pqd_lib.data.augmentation`: random crop and flip fitted to the image shape.
- :mod:`~pqd_lib.data.batching`: :func:`batches` (order, augmentation, normalisation, device).
"""

from __future__ import annotations

from .augmentation import NO_AUGMENTATION, Augmentation, augment
from .batching import batches, normalize, num_batches
from .cache import cache_root
from .datasets import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    DatasetInfo,
)
from .sources import EMBEDDED_TAR, SOURCES, data_root, load
from .splits import SPLITS, DataError, DataSplits

__all__ = [
    "DataError",
    "DataSplits",
    "SPLITS",
    "DatasetInfo",
    "DATASETS",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "EMBEDDED_TAR",
    "SOURCES",
    "Augmentation",
    "NO_AUGMENTATION",
    "load",
    "augment",
    "normalize",
    "batches",
    "num_batches",
    "data_root",
    "cache_root",
]
