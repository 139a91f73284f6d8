"""The three compression stages of Zhou & Shen (2026) and the state they hand to each other.

Each stage is a function ``stage(model, cfg, data, ctx) -> model`` (STYLE.md, example 1):

* :func:`pqd_lib.stages.prune.prune` -- P, global unstructured magnitude pruning with the
  cubic schedule of Zhu & Gupta (2017);
* :func:`pqd_lib.stages.quantize.quantize` -- Q, INT8 quantization-aware training (torchao PT2E,
  :mod:`pqd_lib.stages.quantize_pt2e`; torch.ao's FX graph mode, the reference path, with
  ``quantize.engine: fx``);
* :func:`pqd_lib.stages.distill.distill` -- D, Hinton et al. (2015) knowledge distillation.

The pipeline (:mod:`pqd_lib.pipeline`) looks them up in its ``STAGES`` registry and runs them in
the order of ``cfg.pipeline.order``. What one stage leaves for the later ones travels in a
:class:`StageContext`, never in globals: P registers "re-apply my masks after every optimiser
step" and "carry my masks onto a rebuilt model"; Q registers "pause the observers while
evaluating", "follow the QAT freezing recipe in every training from now on" and "no bfloat16
autocast from now on"; D reads the teacher.

This package module imports none of the stages (it imports the one training loop they share).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .. import train

__all__ = ["StageContext"]


@dataclass
class StageContext:
    """The state that crosses stages of one pipeline run (one per run; the pipeline fills it).

    Attributes:
        order: the whole order string, e.g. ``"PQD"`` (for progress labels and records).
        position: 0-based position of the running stage in `order`.
        epochs: the running stage's epochs (from the pipeline's allocation).
        teacher: the frozen FP32 teacher for D, or None when D is not in the order.
        after_step: hooks ``(model) -> None`` that every later stage runs after each optimiser
            step of its training (P appends its mask re-application).
        on_new_model: hooks ``(old, new) -> None`` that a stage runs when it replaces the model
            by a rebuilt one (Q's QAT prepare); P appends "copy my masks onto the new model".
        stage_hooks: factories ``(model, total_steps, steps_per_epoch) -> (after_step hooks,
            on_epoch_start hooks)`` called at the start of every stage's training from the one that
            registered them on; Q appends its observer/BN freezing schedule, so every training of
            the fake-quant model (Q's and any later stage's) follows the QAT recipe.
        eval_context: context manager factory ``(model) -> ctx`` entered around every test
            evaluation (Q sets "observers paused" so test images never move quantization ranges).
        fake_quant: True once the model is QAT-prepared; later training then stays in FP32
            (fake quantization needs FP32, so bfloat16 autocast is switched off).
        history: the running stage's per-epoch training history, written by the stage.
        extra: per-stage facts for the record (e.g. P's schedule), written by the stage.
        progress: show progress bars (None: the ``PQD_PROGRESS`` environment default).
    """

    order: str
    position: int = 0
    epochs: int = 0
    teacher: nn.Module | None = None
    after_step: list[Callable[[nn.Module], None]] = field(default_factory=list)
    on_new_model: list[Callable[[nn.Module, nn.Module], None]] = field(default_factory=list)
    stage_hooks: list[Callable[[nn.Module, int, int], tuple[Sequence[Callable[[], None]],
                                                            Sequence[Callable[[int], None]]]]] = field(
        default_factory=list)
    eval_context: Callable[[nn.Module], contextlib.AbstractContextManager] | None = None
    fake_quant: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    progress: bool | None = None
    # Rebuild a finished stage from the pipeline's stage cache: the stage does its structural work
    # (masks, QAT prepare, hooks) but :meth:`fit` trains nothing; the cached weights are loaded after.
    replay: bool = False

    @property
    def stage_label(self) -> str:
        """A short label for progress bars, e.g. ``"PQD:Q"``."""
        return f"{self.order}:{self.order[self.position]}" if self.order else "stage"

    def replace_model(self, old: nn.Module, new: nn.Module) -> None:
        """Run the ``on_new_model`` hooks: state kept on `old` (e.g. masks) moves onto `new`."""
        for hook in self.on_new_model:
            hook(old, new)

    def evaluation(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """The context to evaluate `model` in (a no-op unless a stage set ``eval_context``)."""
        return self.eval_context(model) if self.eval_context is not None else contextlib.nullcontext()

    def fit(self, model: nn.Module, data: Any, cfg: Any, *, lr: float, momentum: float, weight_decay: float,
            loss_fn: Callable | None = None, after_step: Sequence[Callable[[], None]] = (),
            on_epoch_start: Sequence[Callable[[int], None]] = ()) -> list[dict[str, Any]]:
        """Train `model` for this stage's epochs with :func:`pqd_lib.train.fit`, adding the cross-stage state.

        The stage's own hooks run first, then the per-stage hooks made by ``stage_hooks``, then
        the ``after_step`` hooks earlier stages registered (so P's masks are re-applied after
        whatever the stage did). This is a thin call of the one training loop, not a second one.
        Stores and returns the per-epoch history.
        """
        per_epoch = max(1, train.steps_per_epoch(data.y_train.numel(), cfg.train.batch_size))
        hooks, epoch_hooks = list(after_step), list(on_epoch_start)
        for factory in self.stage_hooks:
            more_steps, more_epochs = factory(model, self.epochs * per_epoch, per_epoch)
            hooks += list(more_steps)
            epoch_hooks += list(more_epochs)
        if self.replay:
            # Leave the model in the state a trained stage ends in: what the per-stage hooks switch (QAT's
            # observer and BN freezing) is not all in the cached state dict (PT2E keeps BN's in graph meta).
            for hook in epoch_hooks[len(on_epoch_start):]:
                hook(self.epochs)
            return self.history
        hooks += [functools.partial(h, model) for h in self.after_step]
        self.history = train.fit(model, data, cfg, epochs=self.epochs, lr=lr, momentum=momentum,
                                 weight_decay=weight_decay, loss_fn=loss_fn, after_step=hooks,
                                 on_epoch_start=epoch_hooks, desc=self.stage_label,
                                 bf16=False if self.fake_quant else None, progress=self.progress,
                                 eval_context=self.eval_context)
        return self.history
