"""The datasets pqd knows by name: CIFAR-10 and CIFAR-100 (class order, normalisation statistics).

A user's own images need no entry here: :meth:`pqd_lib.data.DataSplits.from_tensors` takes any
channel count and image size and computes its statistics from the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetInfo", "DATASETS", "CIFAR10_CLASSES", "CIFAR100_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
           "CIFAR100_MEAN", "CIFAR100_STD"]

# torchvision's label order (the order of the official archives' meta files).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
# Per-channel mean and (population) std of the 50,000 original training images, in [0, 1] units.
# The often-copied (0.2023, 0.1994, 0.2010) for CIFAR-10 is a mean of per-image stds, not the std.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class DatasetInfo:
    """What pqd knows about one dataset: display name, class order, normalisation, torchvision class."""

    name: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("CIFAR-10", CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, "CIFAR10"),
    "cifar100": DatasetInfo("CIFAR-100", CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD, "CIFAR100"),
}
