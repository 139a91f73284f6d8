"""The one training loop every stage uses.

``train_one_epoch`` and ``evaluate`` are plain functions returning dicts; ``fit`` runs
epochs with an SGD optimiser and an lr schedule, checkpointing atomically after every
epoch so a killed run resumes. What makes a stage a stage is passed in, never a
second loop (STYLE.md, example 6):

* the loss (cross-entropy for the baseline, P and Q; the Hinton KD loss for D),
* hooks after each optimiser step (P's mask re-application and schedule),
* hooks at the start of each epoch (Q's observer and BN freezing),
* the model itself (a QAT-prepared graph for a stage after Q).

``train_baseline`` trains the FP32 model that becomes the teacher and caches it by
the hash of what determines it (seed, data, model, baseline schedule).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import config as config_mod
from . import data as data_mod
from . import models
from ._atomic import atomic_path
from .backbones import NHWC_BUG_FIX, ONEDNN_SAFE_INPUT_CHANNELS
from .data import Augmentation
from .config import RunConfig

__all__ = [
    "data_fingerprint",
    "VALIDATION_IMAGES",
    "VALIDATION_SEED",
    "holdout_validation",
    "CheckpointError",
    "LossFn",
    "resolve_device",
    "cross_entropy",
    "make_optimizer",
    "make_scheduler",
    "steps_per_epoch",
    "train_one_epoch",
    "evaluate",
    "fit",
    "train_baseline",
    "baseline_path",
    "arch_spec",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_save",
]

# loss_fn(logits, targets, images) -> scalar loss; images are given so a KD loss can run its teacher.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another architecture."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without CUDA is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but torch sees no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("PQD_PROGRESS", "1") != "0"


def _bar(iterable: Iterable, total: int, desc: str, progress: bool | None) -> Iterable:
    # In logs (papermill, CI) a bar redrawn many times a second floods the output:
    # redraw rarely when stderr is not a terminal.
    interactive = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=not _progress_enabled(progress),
                mininterval=0.5 if interactive else 30.0, ncols=100, file=sys.stderr)


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Plain (optionally label-smoothed) cross-entropy in the ``LossFn`` signature."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return loss


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                   nesterov: bool = True) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def make_scheduler(optimizer: torch.optim.Optimizer, *, schedule: str, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step lr schedule: cosine to zero (after an optional linear warm-up) or one-cycle."""
    total_steps = max(1, total_steps)
    if schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    # Otherwise cosine: TrainConfig.schedule allows only these two (checked where it is declared).
    warmup_steps = min(warmup_steps, total_steps - 1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps)
    if warmup_steps <= 0:
        return cosine
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup_steps, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine], milestones=[warmup_steps])


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # One generator per (seed, epoch): a resumed run draws exactly the batches it would have drawn.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _autocast(device: torch.device, bf16: bool):
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of `n` images: a final batch of one image is skipped (BatchNorm)."""
    return n // batch_size + (1 if n % batch_size > 1 else 0)


def train_one_epoch(model: nn.Module, data: data_mod.DataSplits, optimizer: torch.optim.Optimizer,
                    loss_fn: LossFn, *, batch_size: int, generator: torch.Generator,
                    device: torch.device, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                    after_step: Sequence[Callable[[], None]] = (), augment: bool = True,
                    channels_last: bool = False, bf16: bool = False, progress: bool | None = None,
                    desc: str = "train") -> dict[str, float]:
    """One pass over the training split; returns mean loss, top-1 (%), images, seconds, images/s.

    The model is updated in place. ``after_step`` callables run after every optimiser step
    (pruning re-applies its masks there). Batches whose size would be 1 are dropped, since
    BatchNorm cannot train on them.
    """
    model.train()
    n = data.y_train.numel()
    steps = steps_per_epoch(n, batch_size)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    batches = data_mod.batches(data, "train", batch_size, shuffle=True, augment=augment, generator=generator,
                               device=device, channels_last=channels_last)
    for images, targets in _bar(batches, steps, desc, progress):
        if targets.numel() < 2:
            continue
        with _autocast(device, bf16):
            logits = model(images)
            loss = loss_fn(logits.float(), targets, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for hook in after_step:
            hook()
        # Accumulate on the device: a .item() per step would synchronise CUDA every batch.
        total_loss += loss.detach() * targets.numel()
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += targets.numel()
    seconds = time.perf_counter() - start
    return {
        "loss": (total_loss / max(seen, 1)).item(),
        "train_top1": 100.0 * correct.item() / max(seen, 1),
        "images": seen,
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else float("nan"),
        "lr": optimizer.param_groups[0]["lr"],
    }


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")  # a converted INT8 model may hold no parameters: it runs on CPU


@torch.no_grad()
def evaluate(model: nn.Module, data: data_mod.DataSplits, *, split: str = "test", batch_size: int = 512,
             device: torch.device | None = None, channels_last: bool = False,
             progress: bool | None = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy of `model` on a split, in eval mode.

    Works for FP32, QAT-prepared (fake-quant) and converted INT8 models; the model's
    train/eval mode is restored afterwards.
    """
    device = _model_device(model) if device is None else device
    was_training = model.training
    model.eval()
    n = (data.y_test if split == "test" else data.y_train).numel()
    total_loss = 0.0
    top1 = top5 = 0
    start = time.perf_counter()
    batches = data_mod.batches(data, split, batch_size, shuffle=False, augment=False, device=device,
                               channels_last=channels_last)
    for images, targets in _bar(batches, math.ceil(n / batch_size), f"eval {split}", progress):
        logits = model(images).float()
        total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 += (topk[:, 0] == targets).sum().item()
        top5 += (topk == targets[:, None]).any(dim=1).sum().item()
    model.train(was_training)
    return {
        "top1": 100.0 * top1 / max(n, 1),
        "top5": 100.0 * top5 / max(n, 1),
        "loss": total_loss / max(n, 1),
        "images": n,
        "seconds": time.perf_counter() - start,
    }


#: Images held out of CIFAR's 50,000 training images for validation in the ``standard`` preset, and
#: the seed of that split: fixed, so every run and seed shares one validation set.
VALIDATION_IMAGES, VALIDATION_SEED = 5000, 0


def holdout_validation(data: data_mod.DataSplits, images: int = VALIDATION_IMAGES,
                       seed: int = VALIDATION_SEED) -> tuple[data_mod.DataSplits, dict[str, Any]]:
    """Split `images` training images off as a validation set; the test set is left untouched.

    Returns ``(for_fitting, split)``: ``for_fitting`` trains on the remaining images and holds the
    validation images in its *test* slots, so :func:`fit` and :func:`evaluate` (which evaluate on
    ``x_test``) choose and report on validation, never on test; ``split`` goes into each record
    (``eval_split``, ``validation_images``, ``validation_seed``, ``validation_first_indices``).
    The permutation comes from a seeded ``torch.Generator``, the same on every machine.
    """
    n = len(data.y_train)
    if not 0 < images < n:
        raise ValueError(f"holdout_validation: images must be in 1..{n - 1} (of {n} training images), got {images}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, keep = order[:images].sort().values, order[images:].sort().values
    fitting = dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep],
                                  x_test=data.x_train[val], y_test=data.y_train[val])
    return fitting, {"eval_split": "validation", "validation_images": images, "validation_seed": seed,
                     "validation_first_indices": [int(i) for i in val[:5]]}


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------
def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temporary file beside `path`, then rename: a reader never sees half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def arch_spec(model_or_cfg: nn.Module | RunConfig) -> dict[str, Any]:
    """What identifies an architecture: name, number of classes, width (or the class name of a user model)."""
    if isinstance(model_or_cfg, RunConfig):
        cfg = model_or_cfg
        return {"name": cfg.model.name, "num_classes": cfg.num_classes, "width": cfg.model.width}
    spec = getattr(model_or_cfg, "pqd_arch", None)
    return dict(spec) if spec else {"name": type(model_or_cfg).__name__}


def _describe(arch: dict[str, Any]) -> str:
    extra = ", ".join(f"{k} {v}" for k, v in arch.items() if k != "name")
    return f"{arch.get('name')}" + (f" ({extra})" if extra else "")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, arch: dict[str, Any],
                    cfg: RunConfig | None = None, **extra: Any) -> Path:
    """Atomically save a model's state with its architecture spec and resolved config (as YAML text)."""
    payload = {"arch": dict(arch), "state_dict": model.state_dict(),
               "config_yaml": config_mod.to_yaml(cfg) if cfg is not None else None, **extra}
    return atomic_save(payload, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, *,
                    arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no code runs).

    With `model`, its state is loaded into it; with `arch`, the checkpoint's architecture must
    match it. Either mismatch raises :class:`CheckpointError` naming both architectures.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable pqd checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path}: not a pqd checkpoint (no state_dict inside)")
    saved = payload.get("arch") or {}
    if arch is not None and saved and saved != dict(arch):
        raise CheckpointError(f"{path}: checkpoint is for {_describe(saved)}, but the model is {_describe(arch)}")
    if model is not None:
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: checkpoint is for {_describe(saved)} and does not fit the model "
                                  f"{_describe(arch_spec(model) if arch is None else arch)} "
                                  f"({str(exc).splitlines()[0][:160]})") from None
    return payload


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------
def _refuse_nhwc_kernel_bug(model: nn.Module) -> None:
    """Raise ValueError (one line) if `model` has a convolution whose NHWC weight gradient oneDNN gets wrong on CPU.

    The config refuses pqd's backbones at such widths before anything runs
    (:func:`pqd_lib.backbones.check_channels_last`); this catches a user's own CNN, given to
    :func:`pqd_lib.pipeline.compress`, before its first training step instead of in a crash.
    """
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                and m.in_channels < ONEDNN_SAFE_INPUT_CHANNELS):
            raise ValueError(f"{name or 'model'}: a stride-{m.stride[0]} 1x1 convolution with {m.in_channels} input "
                             f"channels, {NHWC_BUG_FIX}")


def fit(model: nn.Module, data: data_mod.DataSplits, cfg: RunConfig, *, epochs: int, lr: float,
        momentum: float, weight_decay: float, loss_fn: LossFn | None = None,
        after_step: Sequence[Callable[[], None]] = (),
        on_epoch_start: Sequence[Callable[[int], None]] = (),
        checkpoint: str | os.PathLike | None = None, desc: str = "train", bf16: bool | None = None,
        progress: bool | None = None,
        eval_context: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None,
        ) -> list[dict[str, float]]:
    """Train `model` in place for `epochs` epochs; return one dict per epoch (train stats + test top-1).

    Batch size, schedule, Nesterov, label smoothing, device, threads and memory layout come
    from ``cfg.train``; the optimiser's lr, momentum and weight decay are the stage's own.
    With `checkpoint`, state is saved atomically after every epoch and a matching checkpoint
    (same config hash and stage description) is resumed from; it is deleted on success.
    `eval_context(model)`, when given, is entered around each per-epoch test evaluation (a
    QAT model pauses its observers there, so test images never move its quantization ranges).
    """
    t = cfg.train
    device = resolve_device(t.device)
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    bf16 = t.bf16 if bf16 is None else bf16
    model.to(device)
    if t.channels_last:
        if device.type == "cpu":
            _refuse_nhwc_kernel_bug(model)
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or cross_entropy(t.label_smoothing)
    optimizer = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=t.nesterov)
    n = data.y_train.numel()
    per_epoch = max(1, steps_per_epoch(n, t.batch_size))
    scheduler = make_scheduler(optimizer, schedule=t.schedule, total_steps=epochs * per_epoch,
                               warmup_steps=int(t.warmup_epochs * per_epoch))
    history: list[dict[str, float]] = []
    start_epoch = 0
    tag = f"{config_mod.config_hash(cfg)}:{desc}:{epochs}"
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state.get("tag") == tag:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = list(state["history"]), int(state["epoch"])
    for epoch in range(start_epoch, epochs):
        for hook in on_epoch_start:
            hook(epoch)
        stats = train_one_epoch(model, data, optimizer, loss_fn, batch_size=t.batch_size,
                                generator=_epoch_generator(cfg.seed, epoch), device=device, scheduler=scheduler,
                                after_step=after_step, augment=cfg.data.augment, channels_last=t.channels_last,
                                bf16=bf16, progress=progress, desc=f"{desc} {epoch + 1}/{epochs}")
        with eval_context(model) if eval_context is not None else contextlib.nullcontext():
            test = evaluate(model, data, batch_size=t.eval_batch_size, device=device,
                            channels_last=t.channels_last)
        history.append({"epoch": epoch + 1, **stats, "test_top1": test["top1"], "test_loss": test["loss"]})
        if ckpt is not None:
            atomic_save({"tag": tag, "epoch": epoch + 1, "history": history, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, ckpt)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return history


def data_fingerprint(data: data_mod.DataSplits) -> str:
    """Cheap identity of a dataset: its source, sizes and labels (a user's own tensors included)."""
    h = hashlib.sha256()
    h.update(f"{data.source}|{tuple(data.x_train.shape)}|{tuple(data.x_test.shape)}".encode())
    h.update(data.y_train.cpu().numpy().tobytes())
    h.update(data.x_train[:: max(1, len(data.x_train) // 64)].cpu().numpy().tobytes())
    if data.augmentation != Augmentation.for_shape(*data.x_train.shape[2:]):
        # Only a non-default augmentation joins the key, so existing cache entries keep their names.
        h.update(repr(data.augmentation).encode())
    return h.hexdigest()[:10]


def model_fingerprint(model: nn.Module) -> str:
    """Identity of a user model's architecture: class name, parameter/buffer names and shapes."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        h.update(f"|{name}:{tuple(t.shape)}".encode())
    return h.hexdigest()[:10]


def baseline_path(cfg: RunConfig, data: data_mod.DataSplits | None = None,
                  model: nn.Module | None = None) -> Path:
    """Where the cached FP32 baseline (teacher) of this config lives.

    With `model` (a user's own network instead of ``cfg.model``), the key also holds the
    model's class and parameter shapes, so two architectures never share a cache entry.
    """
    key = config_mod.config_hash(cfg, sections=("seed", "data", "model", "train"))
    if data is not None:
        key = f"{key}-{data_fingerprint(data)}"
    name, dataset = cfg.model.name, cfg.data.dataset
    if model is not None:
        name = type(model).__name__
        dataset = data.name if data is not None else dataset
        key = f"{key}-{model_fingerprint(model)}"
    return cfg.cache_path / "baselines" / f"{name}-{dataset}-s{cfg.seed}-{key}.pt"


def train_baseline(cfg: RunConfig, data: data_mod.DataSplits | None = None, *, model: nn.Module | None = None,
                   progress: bool | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or load from cache) the FP32 baseline of `cfg`: the teacher of later distillation.

    Returns ``(model, info)`` with info = {"path", "history", "test", "cached"}. The cache key is
    the hash of seed, data, model and baseline schedule (and the data's fingerprint), so stage
    settings never cause a retrain. `model` overrides the registry model (a user's own network).
    """
    if data is None:
        data = data_mod.load(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_path)
    path = baseline_path(cfg, data, model)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = models.build(cfg.model.name, num_classes=data.num_classes, width=cfg.model.width)
        arch = arch_spec(cfg)
    else:
        arch = arch_spec(model)
    if path.is_file():
        payload = load_checkpoint(path, model, arch=arch)
        model.to(resolve_device(cfg.train.device))
        return model, {"path": str(path), "history": payload.get("history", []), "test": payload.get("test", {}),
                       "cached": True}
    history = fit(model, data, cfg, epochs=cfg.train.epochs, lr=cfg.train.lr, momentum=cfg.train.momentum,
                  weight_decay=cfg.train.weight_decay, checkpoint=path.with_suffix(".partial.pt"), desc="baseline",
                  progress=progress)
    test = evaluate(model, data, batch_size=cfg.train.eval_batch_size)
    save_checkpoint(path, model, arch=arch, cfg=cfg, history=history, test=test, data_source=data.source)
    return model, {"path": str(path), "history": history, "test": test, "cached": False}
