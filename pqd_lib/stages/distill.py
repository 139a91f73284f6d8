"""D: knowledge distillation from the FP32 baseline (Hinton, Vinyals & Dean 2015).

Stage D of Zhou & Shen (2026). The student (the model as the earlier stages left it: pruned,
fake-quantized, or plain) is trained on::

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

(Hinton et al. 2015, Sec. 2: the soft term is scaled by T^2 so its gradients keep their size
as T changes), with T = ``cfg.distill.temperature`` = 4 and alpha = ``cfg.distill.alpha`` = 0.9.
The teacher is the FP32 baseline of the same backbone and dataset (``train.train_baseline``,
cached), or the checkpoint named by ``cfg.distill.teacher``; it is frozen and in eval mode, and
it sees exactly the (augmented) batch the student sees.

Distillation is only a loss (STYLE.md, example 6): it changes no module and no dtype of the
student, so the student keeps its masks and its fake-quants (tested).

Learning rate: ``cfg.distill.lr = 0.01`` (the config's default), a tenth of the baseline rate, the
fine-tuning rate also used for P: D fine-tunes a trained student, and the paper states no
D-specific rate.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import models, train
from . import StageContext

__all__ = ["TeacherError", "kd_loss", "kd_loss_fn", "frozen_teacher", "check_teacher", "load_teacher", "distill"]


class TeacherError(ValueError):
    """The teacher does not fit the student/data (e.g. another number of classes) or cannot be loaded."""


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(student_logits, targets)`` with
    ``p_T = softmax(teacher_logits / T)``, ``q_T = softmax(student_logits / T)`` and the KL summed
    over classes and averaged over the batch (``reduction="batchmean"``, the true KL).
    """
    log_q = F.log_softmax(student_logits.float() / T, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / T, dim=1)
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (T * T)
    hard = F.cross_entropy(student_logits.float(), targets)
    return alpha * soft + (1.0 - alpha) * hard


def kd_loss_fn(teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.9) -> Callable[..., torch.Tensor]:
    """A ``train.LossFn`` ``(logits, targets, images) -> loss`` that runs the frozen `teacher` on `images`.

    The teacher runs without gradients on the same augmented batch as the student; `teacher`
    must already be frozen and in eval mode (:func:`frozen_teacher`).
    """

    def loss(logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(images)
        return kd_loss(logits, teacher_logits, targets, T=temperature, alpha=alpha)

    return loss


def frozen_teacher(teacher: nn.Module, *, device: torch.device | str = "cpu",
                   channels_last: bool = False) -> nn.Module:
    """A frozen copy of `teacher`: eval mode, no gradients, on `device` (the caller's module is untouched)."""
    t = copy.deepcopy(teacher).to(device).eval()
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    for p in t.parameters():
        p.requires_grad_(False)
    return t


@torch.no_grad()
def check_teacher(teacher: nn.Module, data: Any, *, where: str = "distill", role: str = "teacher") -> None:
    """Raise :class:`TeacherError` (one line) unless `teacher` outputs one logit per class of `data`.

    `role` names the network in the message (``"teacher"``, or ``"model"`` for a student check).
    """
    device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    was_training = teacher.training
    teacher.eval()
    try:
        out = teacher(torch.zeros(1, *data.x_test.shape[1:], device=device))
    finally:
        teacher.train(was_training)
    got = out.shape[-1] if out.dim() == 2 else tuple(out.shape)
    if got != data.num_classes:
        raise TeacherError(f"{where}: the {role} outputs {got} classes but the data have {data.num_classes}; "
                           f"use a {role} built for the same dataset")


def load_teacher(path: str | Path, *, build_fn: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Load a teacher checkpoint written by pqd (``train.save_checkpoint``; ``weights_only`` load).

    Registry architectures (``resnet18``, ``wrn28_10``, ``vgg16_bn``) are rebuilt from the
    checkpoint's ``arch``; any other network needs `build_fn` returning a fresh instance.
    """
    payload = train.load_checkpoint(path)
    arch = payload.get("arch") or {}
    model = models.rebuild(arch, build_fn)
    if model is None:
        raise TeacherError(f"{path}: teacher checkpoint holds {arch.get('name')!r}, not a registry model; "
                           "pass the teacher module itself (compress(..., teacher=...))")
    train.load_checkpoint(path, model)
    return model


def distill(model: nn.Module, cfg: Any, data: Any, ctx: StageContext) -> nn.Module:
    """Stage D (Zhou & Shen 2026): train `model` in place on the Hinton KD loss against ``ctx.teacher``.

    Loss :func:`kd_loss` with T = ``cfg.distill.temperature``, alpha = ``cfg.distill.alpha``; the
    earlier stages' hooks (P's masks) keep running after every step, a fake-quant student stays
    fake-quant. Returns the same `model` object: no module and no dtype changes.

    Optimiser: ``cfg.distill.lr`` (0.01), ``cfg.distill.momentum``, ``cfg.distill.weight_decay``.

    Raises:
        TeacherError: no teacher in `ctx`, or a teacher with another number of classes.
    """
    dc = cfg.distill
    if ctx.teacher is None:
        raise TeacherError("distill: no teacher; the pipeline supplies the FP32 baseline "
                           "(or set distill.teacher / pass teacher=)")
    device = train.resolve_device(cfg.train.device)
    teacher = ctx.teacher.to(device)
    if cfg.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    check_teacher(teacher, data)
    ctx.fit(model, data, cfg, lr=dc.lr, momentum=dc.momentum, weight_decay=dc.weight_decay,
            loss_fn=kd_loss_fn(teacher, temperature=dc.temperature, alpha=dc.alpha))
    ctx.extra.update({"temperature": dc.temperature, "alpha": dc.alpha})
    return model
