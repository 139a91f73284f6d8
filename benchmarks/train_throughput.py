"""Training throughput: the pqd loop against a reference torchvision loop, in one run.

The reference is what a typical CIFAR script does: a torchvision-style dataset holding
uint8 HWC arrays, a DataLoader, and per-sample PIL transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize). The pqd loop is ``pqd_lib.train.train_one_epoch``
on uint8 tensors held in memory with batched augmentation. Same model, batch size, threads,
optimiser and images. Variants of the pqd loop (memory layout, bf16 autocast) are timed too,
so the library's defaults are chosen by measurement.

    python benchmarks/train_throughput.py [--width 0.25] [--batch 128] [--threads 2] [--steps 30]

The last line reads ``pqd/reference = R``: the pqd loop with the library's default settings
(``TrainConfig`` defaults) over the reference, images/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pqd_lib import config as C
from pqd_lib import data as D
from pqd_lib import models, train


class PILCifar(Dataset):
    """torchvision.datasets.CIFAR10's __getitem__: uint8 HWC array -> PIL image -> transforms."""

    def __init__(self, x_uint8_nchw: torch.Tensor, y: torch.Tensor, transform):
        self.data = x_uint8_nchw.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def reference_images_per_s(model, splits, batch, steps, warmup, workers):
    """Images/s of a plain torchvision-style loop (DataLoader + per-sample PIL transforms)."""
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = DataLoader(PILCifar(splits.x_train, splits.y_train, tf), batch_size=batch, shuffle=True,
                        num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    n = 0
    it = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            start, n = time.perf_counter(), 0
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    return n / (time.perf_counter() - start)


def pqd_images_per_s(model, splits, batch, steps, warmup, channels_last, bf16):
    """Images/s of pqd_lib.train.train_one_epoch on a subset sized to `warmup + steps` batches."""
    device = torch.device("cpu")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train.make_optimizer(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss = train.cross_entropy()

    def run(n_batches: int) -> dict:
        sub = D.DataSplits.from_tensors(splits.x_train[: n_batches * batch], splits.y_train[: n_batches * batch],
                                        splits.x_test[:2], splits.y_test[:2], classes=splits.classes,
                                        mean=splits.mean, std=splits.std)
        return train.train_one_epoch(model, sub, opt, loss, batch_size=batch, generator=torch.Generator().manual_seed(0),
                                     device=device, channels_last=channels_last, bf16=bf16, progress=False)

    run(warmup)
    return run(steps)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=C.PRESETS["mini"]["model"]["width"])
    parser.add_argument("--batch", type=int, default=C.TrainConfig.batch_size)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers of the reference loop (0: the main process decodes, "
                             "as the training does; >0 competes with training for the same cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = D.load(C.DataConfig(source="embedded"))
    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {args.threads}")
    print(f"# {args.backbone} width {args.width}, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
          f"data: {splits.source}")

    def fresh():
        torch.manual_seed(0)
        return models.build(args.backbone, num_classes=10, width=args.width)

    ref = reference_images_per_s(fresh(), splits, args.batch, args.steps, args.warmup, args.workers)
    print(f"reference (DataLoader + PIL transforms, {args.workers} workers): {ref:8.1f} images/s")
    results = {}
    for cl in (False, True):
        for bf16 in (False, True):
            ips = pqd_images_per_s(fresh(), splits, args.batch, args.steps, args.warmup, cl, bf16)
            results[(cl, bf16)] = ips
            print(f"pqd loop channels_last={cl!s:5} bf16={bf16!s:5}: {ips:8.1f} images/s  ({ips / ref:.2f}x)")
    default = results[(C.TrainConfig.channels_last, C.TrainConfig.bf16)]
    print(f"# library defaults: channels_last={C.TrainConfig.channels_last}, bf16={C.TrainConfig.bf16}")
    print(f"pqd/reference = {default / ref:.2f}")


if __name__ == "__main__":
    main()
