"""compress() on a user's own CNN and images of any channel count and size (issue 17).

Synthetic images (a class-dependent bright patch plus noise): the point is the shapes, not accuracy.
The oracle for "zeros kept": every weight that pruning alone (order "P") sets to zero is still
exactly zero in the INT8 model of "PQD" from the same start and seed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pqd_lib import config as C
from pqd_lib import pipeline, train
from pqd_lib.data import NO_AUGMENTATION, Augmentation, DataSplits, augment, batches
from pqd_lib.stages import prune as P
from pqd_lib.stages import quantize as Q


class TinyCNN(nn.Module):
    """A user's network with `in_channels` inputs: conv-BN-ReLU blocks, global pooling, a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def patches(channels: int, height: int, width: int, n_train: int = 192, n_test: int = 96,
            classes: int = 4, seed: int = 0) -> DataSplits:
    """Class k lights a patch in the k-th quarter of the image (and channel k mod C) above uniform noise."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        x = torch.randint(0, 90, (n, channels, height, width), generator=g, dtype=torch.uint8)
        for i, k in enumerate(y.tolist()):
            r, c = (k // 2) * height // 2, (k % 2) * width // 2
            x[i, k % channels, r:r + height // 2, c:c + width // 2] += 150
        return x, y

    (xa, ya), (xb, yb) = split(n_train), split(n_test)
    return DataSplits.from_tensors(xa, ya, xb, yb, source=f"patches {channels}ch")


@pytest.fixture
def user_cfg(tmp_path):
    # reduce_range: this project's CPUs lack VNNI, where full-range uint8 activations can saturate.
    return C.preset("smoke", cache_dir=str(tmp_path / "cache"), quantize={"reduce_range": True},
                    train={"epochs": 2})


@pytest.mark.parametrize("channels, height, width", [(1, 28, 28), (4, 20, 24)])
def test_compress_any_channels_and_size_to_int8_keeps_pruned_zeros(channels, height, width, user_cfg):
    data = patches(channels, height, width)
    assert data.mean != data.std and len(data.mean) == channels  # statistics of the training split
    torch.manual_seed(0)
    model = TinyCNN(channels, data.num_classes)
    train.fit(model, data, user_cfg, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)

    pruned, _ = pipeline.compress(model, data, order="P", config=user_cfg)
    int8, records = pipeline.compress(model, data, order="PQD", config=user_cfg)

    assert Q.is_int8(int8) and records[-1]["deploy_form"] == "int8"
    assert records[-1]["deploy_sparsity"] == pytest.approx(0.5, abs=0.01)
    zeros = {name: w == 0 for name, w in P.float_weights(pruned).items()}
    int8_w = Q.int8_weights(int8)
    assert set(zeros) <= set(int8_w) and any(z.any() for z in zeros.values())
    for name, z in zeros.items():
        assert (int8_w[name][z] == 0).all(), f"{name}: a pruned weight is non-zero in the INT8 model"
    # The INT8 model computes what its fake-quant twin computes (reduce_range: no saturation).
    assert records[-1]["int8_agreement"] >= 95.0
    x = next(batches(data, "test", 8, shuffle=False, augment=False))[0]
    assert int8(x).shape == (8, data.num_classes)
    # The records name the user's architecture and data, not the default config's.
    for r in records:
        assert r["run_id"].startswith(f"TinyCNN-patches-{channels}ch-{channels}x{height}x{width}-PQD-s0-")
        assert "resnet18" not in r["run_id"] and "cifar10" not in r["run_id"]
        assert r["backbone"] == "TinyCNN" and r["dataset"] == data.name


def test_another_shape_gives_another_run_id(user_cfg):
    a, b = patches(1, 28, 28), patches(1, 24, 24)
    model = TinyCNN(1, 4)
    ids = [pipeline.compress(model, d, order="P", config=user_cfg)[1][0]["run_id"] for d in (a, b)]
    assert ids[0] != ids[1]


def test_augmentation_fits_the_shape_and_can_be_turned_off():
    assert Augmentation.for_shape(32, 32) == Augmentation(padding=4, flip=True)  # CIFAR's
    assert Augmentation.for_shape(28, 28).padding == 4 and Augmentation.for_shape(8, 12).padding == 1
    x = torch.randint(0, 256, (16, 4, 20, 24), dtype=torch.uint8)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), NO_AUGMENTATION), x)
    # Crop only (no flip): every image is a shifted copy, never a mirrored one.
    crop = augment(x, torch.Generator().manual_seed(0), Augmentation(padding=2, flip=False))
    for o, i in zip(crop, x):
        shifts = [(dy, dx) for dy in range(5) for dx in range(5)
                  if torch.equal(o, torch.nn.functional.pad(i, (2, 2, 2, 2))[:, dy:dy + 20, dx:dx + 24])]
        assert shifts
    data = patches(1, 28, 28)
    assert data.augmentation == Augmentation(4, True)
    off = DataSplits.from_tensors(data.x_train, data.y_train, data.x_test, data.y_test, augmentation=NO_AUGMENTATION)
    b1 = next(batches(off, "train", 8, shuffle=False, augment=True, generator=torch.Generator().manual_seed(0)))[0]
    b2 = next(batches(off, "train", 8, shuffle=False, augment=False))[0]
    assert torch.equal(b1, b2)


@pytest.mark.parametrize("shape, fragment", [
    ((4, 28, 28), "x.unsqueeze(1)"),
    ((4, 28, 28, 1), "channels-last"),
    ((4, 0, 28, 28), "at least 1"),
])
def test_bad_image_shapes_are_one_line_errors(shape, fragment):
    x = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError) as err:
        DataSplits.from_tensors(x, torch.zeros(shape[0], dtype=torch.int64), x, torch.zeros(shape[0], dtype=torch.int64))
    assert fragment in str(err.value) and "\n" not in str(err.value)
