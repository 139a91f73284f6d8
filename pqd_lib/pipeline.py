"""The ordered pipeline of Zhou & Shen (2026): an order string over P, Q, D -> stages -> deploy form.

``order`` is a string over the letters of :data:`STAGES` (P = prune, Q = quantize, D = distill),
each at most once, run left to right: 3 single stages, 6 pairs, 6 full orders. The paper's
pipeline is ``"PQD"``; the order ablation loops over ``itertools.permutations("PQD")``.

Epochs (``cfg.pipeline.epochs``, the paper's 20/40/40) are allocated ``by_stage`` (P, Q, D get
``epochs[0]``, ``[1]``, ``[2]`` wherever they run) or ``by_position`` (the first, second and
third stage run get ``epochs[0..2]``); each record says which.

State that outlives a stage travels in a :class:`~pqd_lib.stages.StageContext`: P's masks are
re-applied after every optimiser step of every later stage and carried across Q's QAT prepare;
after Q every stage trains the fake-quant model (a P after Q prunes its float weights) at most at
Q's learning rate (``pipeline.qat_lr_after_q``) and evaluates with observers paused; D reads the
frozen teacher. At the end the model takes its deploy form: a real INT8 model
(:func:`~pqd_lib.stages.quantize.convert`: PT2E's INT8 graph by default, FX's converted model with
``quantize.engine=fx``) when Q ran, else FP32 -- sparse when P ran, with the mask buffers folded away
so its state dict loads into a freshly built network.

Every stage appends one record (a flat dict, plus the stage's training history): order, stage,
position, epochs, test top-1 after the stage, achieved sparsity, wall time. The last record adds
the deploy form's accuracy (evaluated on the CPU) and, for INT8, its agreement with and SQNR
against the fake-quant twin.

Validation and test: with ``pipeline.validation_images`` > 0 (the ``standard`` preset) :func:`start`
holds that many training images out (:func:`pqd_lib.train.holdout_validation`, a fixed split). The
baseline and every stage train on the rest and evaluate on the held-out images while they train
(``fit``'s per-epoch numbers, ``validation_top1`` of each record): that is where any choice is made.
The test set is only reported: ``top1`` of every record, the deploy accuracy, the per-image hits and
the INT8 fidelity. Records say which split training saw (``eval_split``: ``"validation"``, or
``"test"`` when nothing is held out, as in ``smoke`` and ``mini``).

Resuming: every finished stage is cached under ``<cache>/stages/`` by a key of everything it
depends on (the config hash with the order cut to the stages run so far, their epochs, the starting
model's and the teacher's weights, the data, the device): its weights, the global RNG state after it
and its record fields. A killed run restarts, rebuilds the finished stages from the cache (the
stage's structural work -- masks, QAT prepare, hooks -- without training, then the cached
weights) and trains from the first unfinished one; orders that share a prefix (P → Q → D and
P → Q) share those stages too. The key holds only the settings the prefix depends on: the
sections of stages it does not run are left out, and so is ``qat_lr_after_q`` until a stage runs
after Q, so the C4 control (P → Q → D with ``distill.alpha = 0``) and the position-independent
orders reuse the prefixes they share with P → Q → D. The FP32 baseline is cached by
``train.train_baseline``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import config as config_mod
from . import data as data_mod
from . import train
from ._atomic import atomic_write_text
from .config import RunConfig
from .measure.accuracy import accuracy
from .stages import StageContext
from .stages import distill as distill_stage
from .stages import prune as prune_stage
from .stages import quantize as quantize_stage

__all__ = ["STAGES", "Start", "start", "allocate_epochs", "deploy_form", "run_stages", "run", "compress"]

Stage = Callable[[nn.Module, RunConfig, data_mod.DataSplits, StageContext], nn.Module]

#: Letter -> stage function. Its key order (P, Q, D) is also the order of ``pipeline.epochs`` in by_stage.
STAGES: dict[str, Stage] = {
    "P": prune_stage.prune,
    "Q": quantize_stage.quantize,
    "D": distill_stage.distill,
}


@dataclasses.dataclass(frozen=True)
class Start:
    """Where every run of one seed starts: the FP32 baseline and the data it was trained on.

    ``fitting`` is what stages train on (its test slots hold the validation images when
    ``pipeline.validation_images`` > 0, else it is ``data``); ``data`` is the full data set, whose
    test split is only reported. ``split`` holds the record fields naming the split
    (``eval_split``, and the validation set's size, seed and first indices when held out).
    """

    model: nn.Module
    fitting: data_mod.DataSplits
    data: data_mod.DataSplits
    split: dict[str, Any]
    info: dict[str, Any]
    #: Top-1 (%) of the baseline on the test set, and on the validation split (None when none is held out).
    test_top1: float
    validation_top1: float | None

    @property
    def record_fields(self) -> dict[str, Any]:
        """Fields every record of a run from this start carries (scalars; the split's first indices as text)."""
        fields = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in self.split.items()}
        return {**fields, "baseline_top1": self.test_top1, "baseline_validation_top1": self.validation_top1}


def start(cfg: RunConfig, data: data_mod.DataSplits | None = None, *, progress: bool | None = None) -> Start:
    """Hold out ``cfg.pipeline.validation_images`` training images, train (or load) the FP32 baseline on the rest.

    The baseline is cached by ``train.train_baseline`` under ``train.baseline_path(cfg, fitting)``;
    its test top-1 is measured here on the full test set (one pass); its validation top-1 is what
    training saw.
    """
    if data is None:
        data = data_mod.load(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_path)
    if cfg.pipeline.validation_images:
        fitting, split = train.holdout_validation(data, cfg.pipeline.validation_images)
    else:
        fitting, split = data, {"eval_split": "test"}
    model, info = train.train_baseline(cfg, fitting, progress=progress)
    seen = (info.get("test") or {}).get("top1")
    if fitting is data:
        test_top1, validation_top1 = seen, None
    else:
        test_top1 = train.evaluate(model, data, batch_size=cfg.train.eval_batch_size,
                                   channels_last=cfg.train.channels_last)["top1"]
        validation_top1 = seen
    return Start(model, fitting, data, split, info, test_top1, validation_top1)


def _validated(cfg: RunConfig, order: str | None) -> RunConfig:
    """`cfg` with `order` (validated by the config's own rules: one-line ConfigError) set."""
    if order is None or order == cfg.pipeline.order:
        return cfg
    return config_mod.with_section(cfg, "pipeline", order=order)


def allocate_epochs(order: str, epochs: tuple[int, int, int], allocation: str) -> list[int]:
    """Epochs of each stage of `order`, in run order.

    ``by_stage``: letter L gets ``epochs[list(STAGES).index(L)]`` (P, Q, D = 20/40/40 in the paper);
    ``by_position``: the i-th stage run gets ``epochs[i]``.
    """
    # `allocation` is one of PipelineConfig's two values (checked where it is declared).
    if allocation == "by_stage":
        return [epochs[list(STAGES).index(letter)] for letter in order]
    return [epochs[i] for i in range(len(order))]


def deploy_form(model: nn.Module, *, backend: str = "x86") -> tuple[nn.Module, str]:
    """The deployable form of a pipeline's final model: ``(int8_model, "int8")`` or ``(fp32_model, "fp32")``.

    A QAT-prepared model is converted to real INT8 (:func:`~pqd_lib.stages.quantize.convert`);
    otherwise a copy with masks folded into the weights (:func:`~pqd_lib.stages.prune.remove_masks`).
    Both on the CPU, in eval mode, contiguous; `model` itself is left as it is.
    """
    if quantize_stage.is_fake_quant(model):
        return quantize_stage.convert(model, backend=backend), "int8"
    fp32 = prune_stage.remove_masks(copy.deepcopy(model))
    return fp32.cpu().to(memory_format=torch.contiguous_format).eval(), "fp32"


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return quantize_stage.int8_weights(model) or prune_stage.float_weights(model)


def _target_names(model: nn.Module, cfg: RunConfig) -> list[str]:
    """The layers sparsity is reported over: the masked ones, else those P would prune."""
    masked = list(prune_stage.masks(model))
    if masked:
        return masked
    return list(prune_stage.prunable_layers(model, prune_first_conv=cfg.prune.prune_first_conv,
                                            prune_classifier=cfg.prune.prune_classifier))


def _after_q(cfg: RunConfig) -> RunConfig:
    """`cfg` for a stage that trains the fake-quant model: P's and D's learning rates capped at Q's."""
    lr = cfg.quantize.lr
    cfg = config_mod.with_section(cfg, "prune", lr=min(cfg.prune.lr, lr))
    return config_mod.with_section(cfg, "distill", lr=min(cfg.distill.lr, lr))


def _weights_digest(model: nn.Module | None) -> str:
    """The identity of a model's values (every state-dict tensor's bytes), for stage-cache keys."""
    h = hashlib.sha256()
    if model is not None:
        for name, t in model.state_dict().items():
            if isinstance(t, torch.Tensor):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _split_digest(data: data_mod.DataSplits) -> str:
    """The identity of the images a stage is evaluated on (test, or validation in its slots)."""
    h = hashlib.sha256(data.y_test.cpu().numpy().tobytes())
    h.update(data.x_test[:: max(1, len(data.x_test) // 64)].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


#: The config section of each stage's own settings.
_SECTIONS = {"P": "prune", "Q": "quantize", "D": "distill"}

#: Fields of a stage's section that enter a cache key, for a prefix that does not run the stage, at the
#: value they had when the cache was written rather than at today's default: quantize.engine's default
#: became "pt2e" after the stage cache held P and D prefixes keyed with the old default "fx" (the
#: standard grid's among them), and those prefixes do not depend on the engine at all.
_UNRUN_SECTION_KEY = {"quantize": {"engine": "fx"}}


def _prefix_hash(cfg: RunConfig, prefix: str) -> str:
    """The hash of the settings the stages of `prefix` depend on: `cfg` with the order cut to `prefix`,
    the sections of stages it does not run at a fixed neutral value (their defaults, `_UNRUN_SECTION_KEY`
    on top), and without ``qat_lr_after_q`` unless a stage runs after Q (only then is there a rate to cap)."""
    cfg = config_mod.with_section(cfg, "pipeline", order=prefix)
    for letter, section in _SECTIONS.items():
        if letter not in prefix:
            neutral = type(getattr(cfg, section))(**_UNRUN_SECTION_KEY.get(section, {}))
            cfg = dataclasses.replace(cfg, **{section: neutral})
    if "Q" not in prefix[:-1]:
        cfg = config_mod.with_section(cfg, "pipeline", qat_lr_after_q=True)
    return config_mod.config_hash(cfg, length=16)


def _stage_path(cfg: RunConfig, order: str, position: int, epochs: list[int], start: str, teacher: str,
                data: data_mod.DataSplits, device: torch.device, test: data_mod.DataSplits) -> Path:
    """Where stage `position` of `order` is cached: a hash of everything its result depends on."""
    prefix = order[:position + 1]
    key = json.dumps({"config": _prefix_hash(cfg, prefix),
                      "epochs": epochs[:position + 1], "start": start, "teacher": teacher if "D" in prefix else "",
                      "data": train.data_fingerprint(data), "evaluated_on": _split_digest(data),
                      "reported_on": "" if test is data else _split_digest(test),
                      "device": device.type}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cfg.cache_path / "stages" / f"{cfg.model.name}-s{cfg.seed}-{prefix}-{digest}.pt"


def _save_stage(path: Path, model: nn.Module, fields: dict[str, Any]) -> None:
    """Weights + RNG state (a torch file that loads with weights_only) and the record fields (JSON), atomically.

    The JSON is written last: a stage counts as cached only when both files exist.
    """
    train.atomic_save({"state_dict": model.state_dict(), "rng": torch.get_rng_state()}, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(fields, default=str))


def _load_stage(path: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The cached (payload, record fields) of a finished stage, or None when not (fully) cached."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    return torch.load(path, map_location="cpu", weights_only=True), json.loads(meta.read_text())


def run_stages(model: nn.Module, cfg: RunConfig, data: data_mod.DataSplits, *, order: str | None = None,
               teacher: nn.Module | None = None, progress: bool | None = None,
               extra_record: dict[str, Any] | None = None, cache: bool = True,
               test: data_mod.DataSplits | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Run the stages of `order` (default ``cfg.pipeline.order``) on a copy of `model`; return (deploy model, records).

    `model` is the trained starting point (not changed); `teacher` is required when D is in the order
    (the frozen FP32 baseline, Zhou & Shen 2026). `extra_record` fields are added to every record.
    `cache`: reuse and write the stage cache (module text); False computes every stage afresh.
    `test`: the data whose test split is reported (``top1`` of each record, the deploy accuracy and
    hits), when `data`'s test slots hold a validation split (:func:`start`); None: `data` itself.

    Raises:
        ConfigError: a bad order (unknown or repeated letter, empty).
        TeacherError: D without a teacher, or a teacher with another number of classes.
        BackendError: Q without the configured quantized engine (lists the available ones).
    """
    cfg = _validated(cfg, order)
    order = cfg.pipeline.order
    epochs = allocate_epochs(order, cfg.pipeline.epochs, cfg.pipeline.allocation)
    device = train.resolve_device(cfg.train.device)
    # Fail before any training on what can be checked up front.
    if "Q" in order:
        quantize_stage.check_backend(cfg.quantize.backend)
        quantize_stage.check_activation_range(cfg.quantize.reduce_range, cfg.quantize.backend)
    if "D" in order:
        if teacher is None:
            raise distill_stage.TeacherError("distill: D is in the order but no teacher was given")
        teacher = distill_stage.frozen_teacher(teacher, device=device, channels_last=cfg.train.channels_last)
        distill_stage.check_teacher(teacher, data)
    else:
        teacher = None
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(model).to(device)
    ctx = StageContext(order=order, teacher=teacher, progress=progress)
    eval_kw = dict(batch_size=cfg.train.eval_batch_size, channels_last=cfg.train.channels_last)
    held_out = test is not None and test is not data
    test = test if test is not None else data
    start_top1 = train.evaluate(model, test, **eval_kw)["top1"]
    base = {"order": order, "allocation": cfg.pipeline.allocation, "seed": cfg.seed,
            "run_id": config_mod.run_id(cfg, order), "start_top1": start_top1,
            # The split training evaluated on (and any choice is made on); `top1` is always the test set's.
            "eval_split": "validation" if held_out else "test", **(extra_record or {})}
    records: list[dict[str, Any]] = []
    start_digest, teacher_digest = _weights_digest(model), _weights_digest(teacher)
    for position, (letter, stage_epochs) in enumerate(zip(order, epochs)):
        ctx.position, ctx.epochs, ctx.history, ctx.extra = position, stage_epochs, [], {}
        start = time.perf_counter()
        stage_cfg = _after_q(cfg) if ctx.fake_quant and cfg.pipeline.qat_lr_after_q else cfg
        path = _stage_path(cfg, order, position, epochs, start_digest, teacher_digest, data, device, test)
        cached = _load_stage(path) if cache else None
        ctx.replay = cached is not None
        model = STAGES[letter](model, stage_cfg, data, ctx)
        ctx.replay = False
        if cached is not None:
            payload, fields = cached
            model.load_state_dict(payload["state_dict"])
            torch.set_rng_state(payload["rng"])
            records.append({**base, **fields, "cached_stage": True})
            continue
        wall = time.perf_counter() - start
        ctx.extra.setdefault("lr", {"P": stage_cfg.prune.lr, "Q": stage_cfg.quantize.lr,
                                    "D": stage_cfg.distill.lr}[letter])
        with ctx.evaluation(model):
            reported = train.evaluate(model, test, **eval_kw)
            validation = train.evaluate(model, data, **eval_kw)["top1"] if held_out else None
        sparsity = prune_stage.sparsity_of(_weights(model), _target_names(model, cfg))
        fields = {"stage": letter, "stage_name": STAGES[letter].__name__, "position": position + 1,
                  "epochs": stage_epochs, "top1": reported["top1"], "top5": reported["top5"],
                  "test_loss": reported["loss"], "validation_top1": validation,
                  "sparsity": sparsity["sparsity"], "overall_sparsity": sparsity["overall_sparsity"],
                  "masked_layers": len(prune_stage.masks(model)),
                  "form": "fake_quant" if ctx.fake_quant else "fp32", "wall_s": wall,
                  "history": list(ctx.history), "details": dict(ctx.extra)}
        if cache:
            _save_stage(path, model, fields)
        records.append({**base, **fields, "cached_stage": False})
    names = _target_names(model, cfg)
    start = time.perf_counter()
    deploy, form = deploy_form(model, backend=cfg.quantize.backend)
    convert_s = time.perf_counter() - start
    final = train.evaluate(deploy, test, batch_size=cfg.train.eval_batch_size, device=torch.device("cpu"))
    sparsity = prune_stage.sparsity_of(_weights(deploy), names)
    records[-1].update({"deploy_form": form, "deploy_top1": final["top1"], "deploy_top5": final["top5"],
                        "deploy_device": "cpu", "deploy_sparsity": sparsity["sparsity"],
                        "deploy_overall_sparsity": sparsity["overall_sparsity"], "convert_s": convert_s})
    # Per-image hits of the deploy model (1,668 characters for 10,000 images): the per-image paired
    # bootstrap between orders (pqd_lib.claims) needs them; one more CPU pass over the test set.
    hits = accuracy(deploy, test, batch_size=cfg.train.eval_batch_size)
    records[-1].update({"correct_bits": hits["correct_bits"], "n": hits["n"]})
    if form == "int8":
        fid = quantize_stage.fidelity(model, deploy, test, batch_size=cfg.train.eval_batch_size)
        records[-1].update({"fake_quant_top1": fid["fake_quant_top1"], "int8_agreement": fid["agreement"],
                            "int8_sqnr_db": fid["sqnr_db"]})
    return deploy, records


def run(cfg: RunConfig | None = None, data: data_mod.DataSplits | None = None, *, order: str | None = None,
        progress: bool | None = None, begin: Start | None = None,
        extra_record: dict[str, Any] | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Compress a registry backbone: start from its cached FP32 baseline, run the order, return (deploy, records).

    The baseline (:func:`start`: the validation split held out when configured, then
    ``train.train_baseline``, trained once per seed/data/model/schedule and cached) is both the
    starting point and, when D runs, the teacher -- unless ``cfg.distill.teacher`` names another
    checkpoint. `begin`: a :func:`start` of the same seed, data and baseline schedule, reused
    instead of loading the baseline again. Records carry ``baseline_top1`` (test) and the split's
    fields; `extra_record` fields are added to every record.
    """
    cfg = _validated(cfg or RunConfig(), order)
    if "Q" in cfg.pipeline.order:
        quantize_stage.check_backend(cfg.quantize.backend)  # before the (long) baseline
        quantize_stage.check_activation_range(cfg.quantize.reduce_range, cfg.quantize.backend)
    if begin is None or not _same_start(begin, cfg, data):
        begin = start(cfg, data, progress=progress)
    teacher = None
    if "D" in cfg.pipeline.order:
        teacher = distill_stage.load_teacher(cfg.distill.teacher) if cfg.distill.teacher else begin.model
    extra = {"arch": train.arch_spec(cfg), "data_source": begin.data.source, **begin.record_fields,
             **(extra_record or {})}
    return run_stages(begin.model, cfg, begin.fitting, teacher=teacher, progress=progress, extra_record=extra,
                      test=begin.data)


def _same_start(begin: Start, cfg: RunConfig, data: data_mod.DataSplits | None) -> bool:
    """Is `begin` the start `cfg` (on `data`) would make: the same data, split and baseline checkpoint?"""
    if data is not None and data is not begin.data:
        return False
    held_out = begin.fitting is not begin.data
    if held_out != bool(cfg.pipeline.validation_images) or (
            held_out and begin.split.get("validation_images") != cfg.pipeline.validation_images):
        return False
    return str(train.baseline_path(cfg, begin.fitting)) == str(begin.info["path"])


def _fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """The same architecture with freshly initialised weights (``reset_parameters`` of every submodule)."""
    fresh = copy.deepcopy(model)
    prune_stage.remove_masks(fresh)
    torch.manual_seed(seed)
    for m in fresh.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


def compress(model: nn.Module, data: data_mod.DataSplits, order: str = "PQD", teacher: nn.Module | None = None,
             config: RunConfig | None = None, *,
             progress: bool | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Compress a trained `model` with the ordered pipeline of Zhou & Shen (2026); return (deploy_model, records).

    Args:
        model: the trained FP32 network to start from (left unchanged). When Q is in the order it
            must export with ``torch.export`` (the default engine, ``pt2e``: plain ``+`` and functional
            ReLU are fine; no data-dependent Python control flow), or, with ``quantize.engine=fx``
            (the deprecated reference path), trace with ``torch.fx`` (conv-BN-ReLU as modules in
            fusable order, residual additions through ``FloatFunctional``).
        data: a :class:`~pqd_lib.data.DataSplits` (e.g. ``data.load(...)`` or ``DataSplits.from_tensors``).
        order: letters P (prune), Q (quantize), D (distill), each at most once, run left to right.
        teacher: the FP32 teacher for D. None with D in the order: ``config.distill.teacher`` if set,
            else an FP32 baseline of `model`'s architecture (freshly initialised) trained with
            ``train.train_baseline`` under ``config.train`` and cached.
        config: a :class:`~pqd_lib.config.RunConfig` (e.g. ``config.preset("smoke")``); None = defaults
            (the paper's protocol).

    Returns:
        The deploy form (real INT8 when Q ran, else FP32, sparse when P ran; CPU, eval mode) and one
        record per stage (the last with the deploy accuracy). A PT2E INT8 graph runs its INT8
        arithmetic in FP32 when called eagerly (a correct reference): for speed compile it
        (:func:`pqd_lib.stages.quantize.compile_for_cpu`) or export it to ONNX.

    Raises:
        ConfigError: a bad `order` (unknown or repeated letter, empty) -- before anything runs.
        TeacherError: the model or the teacher outputs another number of classes than `data` has.
        BackendError: Q without the configured quantized engine.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, data_mod.DataSplits):
        raise TypeError(f"compress: data must be a pqd_lib.data.DataSplits, got {type(data).__name__}; "
                        "use DataSplits.from_tensors(...) for your own tensors")
    cfg = config if config is not None else RunConfig()
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"compress: config must be a RunConfig or None, got {type(cfg).__name__}")
    cfg = config_mod.with_section(cfg, "pipeline", order=order)  # PipelineConfig checks the order
    if "Q" in order:
        quantize_stage.check_backend(cfg.quantize.backend)
        quantize_stage.check_activation_range(cfg.quantize.reduce_range, cfg.quantize.backend)
    distill_stage.check_teacher(model, data, where="compress", role="model")
    if teacher is not None and "D" in order:
        distill_stage.check_teacher(teacher, data, where="compress")
    if "D" in order and teacher is None:
        if cfg.distill.teacher:
            teacher = distill_stage.load_teacher(cfg.distill.teacher, build_fn=lambda: _fresh_copy(model, cfg.seed))
        else:
            teacher, _ = train.train_baseline(cfg, data, model=_fresh_copy(model, cfg.seed), progress=progress)
    # The records name the user's architecture and data, never the config's default backbone/dataset.
    arch = train.arch_spec(model)
    identity = (train.model_fingerprint(model), train.data_fingerprint(data))
    extra = {"arch": arch, "data_source": data.source, "backbone": arch["name"], "dataset": data.name,
             "run_id": config_mod.run_id(cfg, order, model=arch["name"], dataset=data.name, identity=identity)}
    return run_stages(model, cfg, data, teacher=teacher, progress=progress, extra_record=extra)
