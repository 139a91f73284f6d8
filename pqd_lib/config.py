"""Typed, validated run configuration.

One frozen dataclass per concern, grouped in :class:`RunConfig`. The defaults are
the paper's protocol (Zhou & Shen 2026, full widths, 20/40/40 stage epochs); the
presets ``smoke``, ``mini`` and ``paper`` change *how much* is computed (widths,
epochs, subset sizes, timing repetitions), never *what*.

Configuration is layered, later layers winning::

    dataclass defaults  <-  parameters/<cell>.yaml  <-  built-in preset
                        <-  the YAML's ``presets: {<name>: {...}}`` block  <-  overrides

Every key maps 1:1 onto a dataclass field. Each field is checked where it is declared
(its annotation and the range given with it, in ``__post_init__``), so direct construction,
``dataclasses.replace``, presets, YAML files and ``--set`` are all checked, and each layer of
a file is checked on its own (a bad value is refused even where a preset would replace it).
An unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` with a
one-line message naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .backbones import BACKBONES, check_channels_last, check_width

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "PruneConfig",
    "QuantizeConfig",
    "DistillConfig",
    "PipelineConfig",
    "MeasureConfig",
    "RunConfig",
    "PRESETS",
    "load",
    "preset",
    "from_dict",
    "to_dict",
    "to_yaml",
    "config_hash",
    "run_id",
    "apply_overrides",
    "parse_assignments",
    "with_section",
    "PARAMETERS_DIR",
    "cell",
    "DEFAULT_RESULTS_DIR",
    "cache_root",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names key, value and what is allowed."""


Dataset = Literal["cifar10", "cifar100"]
DataSource = Literal["torchvision", "folder", "embedded"]
Backbone = Literal[BACKBONES]

#: Where result records go unless told otherwise (relative to the working directory).
DEFAULT_RESULTS_DIR = "reports/results"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: `cache_dir`, else ``$PQD_CACHE``, else ``~/.cache/pqd``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("PQD_CACHE", "~/.cache/pqd")).expanduser()


def _f(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
       lt: float | None = None) -> Any:
    """A field with its allowed range declared beside it (every item of a tuple field is checked)."""
    lo, lo_open = (gt, True) if gt is not None else (ge, False)
    hi, hi_open = (lt, True) if lt is not None else (le, False)
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open)})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class _Section:
    """Base of every config dataclass: each field is checked where it is declared, whoever builds it.

    ``__post_init__`` runs for direct construction, ``dataclasses.replace``, presets, YAML files and
    ``--set`` alike: every value is checked against its annotation (and converted: an int where a
    float is declared, a list where a tuple is) and against the range declared with :func:`_f`;
    ``_check`` adds what involves several fields. The error names key, value and what is allowed.
    """

    _section: typing.ClassVar[str] = ""

    def __init_subclass__(cls, section: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._section = section

    def __post_init__(self) -> None:
        prefix = f"{self._section}." if self._section else ""
        hints = _hints(type(self))
        for f in fields(self):
            key = f"{prefix}{f.name}"
            value = _coerce(key, getattr(self, f.name), hints[f.name])
            if "range" in f.metadata:
                _check_range(key, value, *f.metadata["range"])
            object.__setattr__(self, f.name, value)  # frozen: the converted value replaces the given one
        self._check()

    def _check(self) -> None:
        """Checks across fields; none by default."""
Schedule = Literal["cosine", "onecycle"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class DataConfig(_Section, section='data'):
    """Where the images come from and how many are used."""

    # Which CIFAR; fixes the number of classes (10 or 100).
    dataset: Dataset = "cifar10"
    # torchvision: the official archive (downloaded if missing; the default for users);
    # folder: an image-folder tree train/<class>/*, test/<class>/* (e.g. the offline JPEG mirror);
    # embedded: the balanced 500+100-per-class CIFAR-10 subset shipped inside pqd_lib (no download).
    source: DataSource = "torchvision"
    # Data root; None means $PQD_DATA, else ~/.cache/pqd/data. For "folder", the tree's root.
    root: str | None = None
    # Let torchvision download the archive when it is missing from `root`.
    download: bool = True
    # Balanced, seeded subset of the training set (images in total); None keeps every image.
    train_subset: int | None = _f(None, ge=1)
    # Balanced, seeded subset of the test set; None keeps every image (the reported protocol).
    test_subset: int | None = _f(None, ge=1)
    # Random crop with 4-pixel zero padding and horizontal flip, on whole batches.
    augment: bool = True


@dataclass(frozen=True)
class ModelConfig(_Section, section='model'):
    """The backbone; the number of classes follows from the dataset."""

    # One of pqd_lib.models.MODELS.
    name: Backbone = "resnet18"
    # Channel multiplier: 1.0 is the paper's architecture; CPU presets use less.
    width: float = _f(1.0, gt=0, le=4)

    def _check(self) -> None:
        try:
            check_width(self.name, self.width)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class TrainConfig(_Section, section='train'):
    """The FP32 baseline (the teacher) and the loop settings shared by every stage."""

    # Baseline epochs. 200 with SGD+cosine is the common CIFAR ResNet recipe
    # (the paper gives no baseline schedule; this is our stated choice).
    epochs: int = _f(200, ge=0)
    # Mini-batch size for training (evaluation uses `eval_batch_size`).
    batch_size: int = _f(128, ge=1)
    eval_batch_size: int = _f(512, ge=1)
    # SGD with momentum; lr for batch 128 as in He et al. 2016 / the usual CIFAR recipes.
    lr: float = _f(0.1, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = _f(5e-4, ge=0)
    # Learning-rate schedule over the run's steps.
    schedule: Schedule = "cosine"
    # Label smoothing of the cross-entropy (0 = plain CE, the paper's loss).
    label_smoothing: float = _f(0.0, ge=0, lt=1)
    # Gradient-free epochs at the start with a linearly rising lr (0 = none).
    warmup_epochs: float = _f(0.0, ge=0)
    # "auto": CUDA when available, else CPU.
    device: Device = "auto"
    # torch.set_num_threads for training; None keeps torch's default (all cores).
    threads: int | None = _f(None, ge=1)
    # NHWC memory layout; measured faster for convolutions on CPU and CUDA.
    channels_last: bool = True
    # bfloat16 autocast for FP32 training where the hardware supports it natively
    # (never used for QAT, whose fake-quant needs FP32).
    bf16: bool = False


@dataclass(frozen=True)
class PruneConfig(_Section, section='prune'):
    """P: unstructured magnitude pruning (Zhu & Gupta 2017 gradual schedule)."""

    # Fraction of prunable weights set to zero at the end of the stage.
    target_sparsity: float = _f(0.5, ge=0, lt=1)
    # global: one magnitude threshold over all prunable layers; layerwise: every
    # prunable layer pruned to the same sparsity by its own magnitudes (uniform).
    scope: Literal["global", "layerwise"] = "global"
    # The first conv and the classifier are small and sensitive; keeping them dense is
    # the common practice (Gale et al. 2019, "The State of Sparsity in Deep Neural Networks").
    prune_first_conv: bool = False
    prune_classifier: bool = False
    # Fraction of the stage's steps over which sparsity ramps up (cubic schedule);
    # the rest fine-tunes at the final sparsity.
    ramp_fraction: float = _f(0.5, ge=0, le=1)
    # Number of mask updates spread over the ramp.
    ramp_updates: int = _f(10, ge=1)
    # Optimiser for the stage: fine-tuning a trained model, so a tenth of the baseline lr.
    lr: float = _f(0.01, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)


@dataclass(frozen=True)
class QuantizeConfig(_Section, section='quantize'):
    """Q: INT8 quantization-aware training for the x86 CPU backend."""

    # Quantized engine of the deployed model (torch.backends.quantized.engine).
    backend: Literal["x86", "fbgemm", "qnnpack", "onednn"] = "x86"
    # Observers frozen after this fraction of the stage's epochs, BN statistics after
    # this one (torchvision's QAT recipe: 4 and 3 of 10 epochs -> 0.4 and 0.3).
    freeze_observers_after: float = _f(0.4, ge=0, le=1)
    freeze_bn_after: float = _f(0.3, ge=0, le=1)
    # True (default): activations use 0..127, torch's own x86 default, exact on every x86 CPU.
    # Without AVX-512 VNNI (AVX2, AVX-512 without VNNI) the x86 engine's u8 x s8 kernels add product
    # pairs in saturating 16-bit registers; only 7-bit activations keep 2 x 127 x 128 below 32,767.
    # Measured INT8-vs-fake-quant logit SQNR / top-1 agreement, 0..127 vs 0..255 (more in
    # stages/quantize.py's module text):
    #   AMD EPYC, AVX2, no VNNI: test setup 26.1 dB / 98.7 % vs 14.4 dB / 84.4 % (saturated).
    #   Zen 4, AVX-512 VNNI: test setup 30.5 dB / 98.8 % vs 45.3 dB / 99.6 %.
    # Accuracy cost of 7-bit activations (test setup, fake-quant top-1): 43.9 % vs 43.5 %, none
    # measurable; the INT8 model that runs on AVX2: 44.0 % vs 41.9 %.
    # False: the paper's full 0..255, an explicit opt-in for deploy targets with AVX-512 VNNI;
    # stage Q, convert and load_deploy refuse it on a CPU without (one line naming the fix).
    reduce_range: bool = True
    # Quantization flow: "pt2e" (default) is torchao's torch.export-based QAT, the maintained path
    # (x86 backend only; pqd_lib/stages/quantize_pt2e.py), the default since it reached parity with FX
    # on the mini grid (seeds 0-2, orders Q and P -> Q: INT8 top-1 within 0.3 pp, INT8-vs-fake-quant
    # agreement >= 99.6 %, zeros kept; reports/engine-parity/). "fx" is torch.ao's FX graph mode,
    # deprecated in torch 2.14: the reference path, kept to reproduce the committed FX records
    # (`--set quantize.engine=fx`) until a later change retires it.
    engine: Literal["fx", "pt2e"] = "pt2e"
    # torchvision's QAT recipe fine-tunes with lr 1e-4 at batch 32 (4e-4 at batch 128 by linear
    # scaling); we use 1e-3 because the CPU presets give Q only a few epochs to adapt.
    lr: float = _f(0.001, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)


@dataclass(frozen=True)
class DistillConfig(_Section, section='distill'):
    """D: Hinton et al. 2015 knowledge distillation from the FP32 baseline."""

    # Softmax temperature T and the weight alpha of the soft term:
    # loss = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE   (Hinton et al. 2015).
    temperature: float = _f(4.0, gt=0)
    alpha: float = _f(0.9, ge=0, le=1)
    # Path to a teacher checkpoint written by pqd; None = the cached FP32 baseline.
    teacher: str | None = None
    lr: float = _f(0.01, gt=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    weight_decay: float = _f(5e-4, ge=0)


@dataclass(frozen=True)
class PipelineConfig(_Section, section='pipeline'):
    """The order of stages and how epochs are allocated to them."""

    # Letters P, Q, D, each at most once, in execution order.
    order: str = "PQD"
    # by_stage: `epochs` are for P, Q, D whatever their position (the paper's 20/40/40);
    # by_position: `epochs` are for the first, second and third stage run.
    allocation: Literal["by_stage", "by_position"] = "by_stage"
    epochs: tuple[int, int, int] = _f((20, 40, 40), ge=0)
    # After Q, P and D fine-tune a quantization-aware model: at most Q's learning rate
    # (quantize.lr) there, since QAT fine-tuning wants small steps (torchvision's recipe) and the
    # stages' own 10x larger rate collapsed it (mini, seed 0: D after Q took P->Q->D from 59.1 % to
    # 40.0 %; see reports/README.md). False keeps every stage's own rate wherever it runs.
    qat_lr_after_q: bool = True
    # Training images held out as a fixed validation split (pqd_lib.train.holdout_validation, split
    # seed 0): the baseline and every stage train on the rest and evaluate on it during training, the
    # test set only reports (pqd_lib.pipeline.start). 0 holds none out: stages evaluate on the test
    # set (the smoke and mini protocol, whose records say eval_split = "test").
    validation_images: int = _f(0, ge=0)

    def _check(self) -> None:
        _check_order(self.order)


@dataclass(frozen=True)
class MeasureConfig(_Section, section='measure'):
    """The latency protocol and what else is measured."""

    # Thread counts to time; None = [1, all cores].
    threads: tuple[int, ...] | None = _f(None, ge=1)
    batch_sizes: tuple[int, ...] = _f((1, 32), ge=1)
    # Untimed runs before timing (caches, allocator, oneDNN primitive creation).
    warmup: int = _f(50, ge=0)
    # Timed runs continue until both bounds are met.
    min_runs: int = _f(300, ge=1)
    min_seconds: float = _f(2.0, ge=0)
    # Time each model in a freshly spawned process loading the saved artifact.
    isolate: bool = True
    # Also time a torch.compile variant where it works.
    compile: bool = False
    # Also export to ONNX and time ONNX Runtime (FP32, its own INT8, our QAT INT8).
    onnxruntime: bool = True
    # Images used to calibrate ONNX Runtime's static quantization.
    calibration_images: int = _f(256, ge=1)
    # The rounds protocol (pqd_lib.measure.rounds), used for every comparison between models.
    # Rounds: each times every model once, in rotated order, between two blocks of the reference.
    # 15 is pyperf's and MLPerf's order of magnitude and gives a bootstrap CI of the median that is
    # a few percent wide on a quiet 2-core VM.
    rounds: int = _f(15, ge=1)
    # Seconds per timed block (calls per block calibrated to reach it): short enough that a burst
    # of other work spoils one block, not a model's whole measurement.
    block_seconds: float = _f(0.2, ge=0)
    # A round whose two reference blocks differ by more than this fraction is marked (the machine
    # changed within the round) and re-run.
    canary_drift: float = _f(0.10, gt=0)
    # A block during which other processes used more than this many cores (/proc/stat busy time
    # minus the timed process's own) or the hypervisor stole more than 2 % is marked, its round re-run.
    contention_cores: float = _f(0.25, ge=0)
    # At most this many extra rounds replace marked ones per comparison; then marked rounds are kept
    # and the records say so (``rounds_marked``).
    max_reruns: int = _f(10, ge=0)
    # Pin each timed process to `threads` cores (os.sched_setaffinity) before torch is imported.
    pin_cores: bool = True
    # The width notebook 07 times beside the trained one: the paper's full width, where INT8's
    # arithmetic saving shows (at the CPU presets' widths INT8 can be slower than FP32).
    latency_width: float = _f(1.0, gt=0, le=4)


@dataclass(frozen=True)
class RunConfig(_Section, section=''):
    """Everything that defines one run; its hash names the run."""

    seed: int = _f(0, ge=0)
    # Name of the preset that was layered on (recorded; changes nothing by itself).
    preset: Literal["smoke", "mini", "standard", "paper"] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    # Where result records are appended.
    results_dir: str = DEFAULT_RESULTS_DIR
    # Checkpoints and decoded-data caches; None = $PQD_CACHE, else ~/.cache/pqd.
    cache_dir: str | None = None

    @property
    def num_classes(self) -> int:
        """10 for CIFAR-10, 100 for CIFAR-100."""
        return 100 if self.data.dataset == "cifar100" else 10

    @property
    def cache_path(self) -> Path:
        """The resolved cache directory."""
        return cache_root(self.cache_dir)

    def _check(self) -> None:
        # CUDA trains with cuDNN, which oneDNN's NHWC bug (backbones.check_channels_last) does not reach.
        if self.train.channels_last and self.train.device != "cuda":
            try:
                check_channels_last(self.model.name, self.model.width)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------
# Presets: how much is computed. Sizes are justified in README ("Presets").
# ---------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on 2 CPU cores: for tests and nbval. Not a result.
    "smoke": {
        "model": {"width": 0.125},
        "data": {"train_subset": 500, "test_subset": 200},
        # One thread: tests and nbval run beside other work, where 2-thread OpenMP contends badly.
        # NCHW: at width 0.125 ResNet-18's first downsampling shortcut has 8 inputs, below the
        # 16 at which oneDNN's NHWC weight gradient is right on AVX-512 (backbones.check_channels_last).
        "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 200, "threads": 1, "channels_last": False},
        "prune": {"ramp_updates": 2},
        "pipeline": {"epochs": (1, 1, 1)},
        "measure": {
            "threads": (1,),
            "batch_sizes": (1,),
            "warmup": 2,
            "min_runs": 5,
            "min_seconds": 0.0,
            "calibration_images": 16,
            "rounds": 3,
            "block_seconds": 0.01,
            "max_reruns": 0,
            # The trained width alone (notebook 07 then times one width): full-width models (a CSR
            # forward pass alone ~0.65 s) made notebook 07 the slowest item of `make test`, and a
            # narrow second width (0.25) still cost 15 more worker processes (torch imports, ONNX and
            # OpenVINO compiles): 07's slowest cells, 145 + 34 s of the CI run.
            "latency_width": 0.125,
        },
    },
    # Real data, reduced widths/epochs: the protocol run and reported on 2 CPU cores.
    # 5,000 training images (the embedded set's size, so `--source embedded` runs it unchanged),
    # the whole 10,000-image test set. Measured cost of the ResNet-18 grid (baseline, each stage
    # alone, 6 orders x 2 allocations) on 2 cores: 47-53 min per seed on a quiet machine, 29-38 of them notebook 06.
    "mini": {
        "model": {"width": 0.25},
        "data": {"train_subset": 5000},
        "train": {"epochs": 15},
        "pipeline": {"epochs": (1, 2, 2)},
        "measure": {"warmup": 20, "min_runs": 100, "min_seconds": 1.0},
    },
    # All of CIFAR-10's training images, on 2 CPU cores: decisive verdicts (issue 15). Fitting uses
    # 45,000 images; 5,000 fixed ones (pqd_lib.train.holdout_validation, split seed 0) are the
    # validation set every choice is made on; the test set only reports. Stage budget 1/2/2 epochs
    # (the paper's 1:2:2) = 352/703/703 optimizer steps at batch 128; P's ramp is 85 % of its stage,
    # ~300 steps in 30 mask updates (one per ~10 steps).
    # Cost of one seed's grid on 2 Zen 4 cores, from 676 img/s FP32 training, half that for QAT,
    # KD x1.33 for the teacher's forward pass, eval passes included:
    #   baseline 15 epochs x 45,000 / 676 = 18 min; singles (P at 50/70/90 %, Q, D, D at alpha 0) 14 min;
    #   6 orders by stage 65 min; C4 control (P → Q then 2 epochs CE, P → Q cached) 4.5 min;
    #   position-independent learning rates (only stages after Q differ; prefixes cached) 25 min;
    #   total ~126 min <= 2.5 h, leaving ~24 min for latency and sizes. On this AVX2-only CPU
    #   (~310 img/s) the same grid takes ~4.6 h: it resumes across sessions (stage cache).
    # The pilot (width 0.25, 15 epochs, 45,000 images) reached 84.34 % test top-1 (issue 15).
    # What `pqd grid` trains per seed, counted (tests/test_grid.py checks the shared prefixes): FP32 CE
    # 4 epochs, FP32 KD 6, QAT CE 16, QAT KD 14 (benchmarks/grid_time.py projects from them). Measured
    # at smoke scale (240 + 60 validation images, 2 cores loaded ~10x by other jobs; the singles' stages
    # cached by an earlier attempt): 152 s for the seed -- singles replayed 31 s, 6 orders capped 33 s,
    # C4 control 13 s, pre-conditioning 11 s (all cache hits), position-independent orders 64 s. Smoke
    # stages are dominated by fixed costs (QAT prepare/convert, size encodings), not by images: no basis
    # for the standard projection. The standard baseline trained at 85 images/s beside 5 other jobs
    # (526 s for its first epoch), a quarter of the quiet pilot's 357.
    "standard": {
        "model": {"width": 0.25},
        "data": {"train_subset": None},
        "train": {"epochs": 15},
        "prune": {"ramp_fraction": 0.85, "ramp_updates": 30},
        "pipeline": {"epochs": (1, 2, 2), "validation_images": 5000},
        "measure": {"warmup": 20, "min_runs": 100, "min_seconds": 1.0},
    },
    # The paper's full protocol (the dataclass defaults), for GPU users.
    "paper": {},
}

_SECTIONS = {f.name: f.type for f in fields(RunConfig) if f.name in {
    "data", "model", "train", "prune", "quantize", "distill", "pipeline", "measure"}}

# Fields that say where things go, not what is computed: left out of the hash. One exception,
# pipeline.validation_images: what it changes (the images training sees) is already in every cache
# key through the data's fingerprint, and leaving it out keeps the hash -- run ids, and the tag a
# half-trained baseline resumes by (train.fit) -- what it was before the field existed, so the
# standard baselines trained before it resume and are found.
_UNHASHED = {"results_dir", "cache_dir", "preset", "data.root", "data.download", "train.device",
             "train.threads", "measure", "pipeline.validation_images"}


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return `value` converted to annotation `tp`, or raise ConfigError."""
    if is_dataclass(tp):
        if not isinstance(value, tp):
            raise ConfigError(f"{key}: expected a {tp.__name__}, got {type(value).__name__}; build it with "
                              f"{tp.__name__}(...) or pqd_lib.config.from_dict")
        return value
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise ConfigError(f"{errors[0]}{' (or null)' if type(None) in args else ''}")
        raise ConfigError(f"{key}: {value!r} is not a {_type_name(tp)}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: {value!r} is not a list; expected {_type_name(tp)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: {list(value)!r} must have exactly {len(args)} items")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a bool; use true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: {value!r} is not a string")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module, not in the YAML


def _check_range(key: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    if value is None:
        return
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            allowed = " and ".join(s for s in (lo_s, hi_s) if s)
            raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")




def _check_order(order: str) -> None:
    if not order:
        raise ConfigError("pipeline.order: '' is empty; use letters from 'P', 'Q', 'D' (e.g. 'PQD')")
    bad = sorted(set(order) - set("PQD"))
    if bad:
        raise ConfigError(f"pipeline.order: {order!r} has unknown letter(s) {', '.join(bad)}; "
                          "use only P (prune), Q (quantize), D (distill)")
    repeated = sorted({c for c in order if order.count(c) > 1})
    if repeated:
        raise ConfigError(f"pipeline.order: {order!r} repeats {', '.join(repeated)}; each letter at most once")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping: unknown keys refused here, values checked by the dataclass."""
    if data is None:
        data = {}
    if is_dataclass(data):
        data = to_dict(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(f"{prefix}{key}: unknown key in {where}; allowed keys: {', '.join(sorted(known))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], prefix=f"{key}.")
            continue
        kwargs[f.name] = data[f.name]
    return cls(**kwargs)  # each field is checked by the dataclass itself (_Section.__post_init__)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts and lists (tuples become lists), ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate a nested mapping (as read from YAML) into a :class:`RunConfig`."""
    return _build(RunConfig, data)


def _merge(base: dict, update: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in (update or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _check_preset(name: str | None) -> None:
    if name is not None and name not in PRESETS:
        raise ConfigError(f"preset: {name!r} does not exist; choose one of {', '.join(map(repr, PRESETS))}")


def preset(name: str, **overrides: Any) -> RunConfig:
    """The config of preset `name` ('smoke', 'mini', 'standard', 'paper') with every other field at its default.

    `overrides` are sections or top-level fields, e.g. ``data={"source": "embedded"}, seed=1``.
    """
    _check_preset(name)
    layered = _merge(_merge({}, PRESETS[name]), {"preset": name})
    return from_dict(_merge(layered, overrides))


def load(path: str | os.PathLike | None = None, preset: str | None = None, **overrides: Any) -> RunConfig:
    """Load a parameters YAML, layer a preset and overrides on it, validate, return a RunConfig.

    Args:
        path: a ``parameters/*.yaml`` file (overrides of the defaults only), or None for defaults.
        preset: 'smoke', 'mini', 'standard' or 'paper' layered on the file; None layers none.
        overrides: sections or top-level fields, e.g. ``train={"epochs": 3}, seed=2``.

    Raises:
        ConfigError: unknown key, wrong type, out-of-range value, unknown preset, unreadable file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: parameters file not found; see parameters/*.yaml for examples")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of keys at the top level, got {type(data).__name__}")
    file_presets = data.pop("presets", None) or {}
    if not isinstance(file_presets, dict):
        raise ConfigError(f"presets: expected a mapping of preset name -> overrides, got {file_presets!r}")
    for name in file_presets:
        _check_preset(name)
    # Every layer is checked on its own, so a bad value is refused even where a later layer
    # (a preset, an override) would replace it: the file names what it means to run. A file's
    # preset section is checked as it resolves (file, then pqd's preset, then the section).
    where = f"{path}: " if path is not None else ""
    for label, layer in (("", data), *((f"presets.{n}: ", _merge(_merge(data, PRESETS[n]), b or {}))
                                       for n, b in file_presets.items())):
        try:
            from_dict(layer)
        except ConfigError as exc:
            raise ConfigError(f"{where}{label}{exc}") from None
    # A `preset` key inside the file only records what was layered (a resolved config read back
    # must stay equal to itself); layering happens for the `preset` argument alone.
    _check_preset(preset)
    layered = data
    if preset is not None:
        layered = _merge(layered, PRESETS[preset])
        layered = _merge(layered, file_presets.get(preset) or {})
        layered["preset"] = preset
    return from_dict(_merge(layered, overrides))


# The repository's parameters/ folder (a source checkout, as on Binder and Colab); $PQD_PARAMETERS wins.
PARAMETERS_DIR = Path(os.environ.get("PQD_PARAMETERS", Path(__file__).resolve().parents[1] / "parameters"))


def cell(backbone: str, dataset: str, preset: str | None = None, **overrides: Any) -> RunConfig:
    """The config of one backbone x dataset cell: ``parameters/<backbone>_<dataset>.yaml`` + preset + overrides.

    This is how notebooks and the batch runner find their parameters, whatever the working directory.
    """
    _coerce("model.name", backbone, Backbone)
    _coerce("data.dataset", dataset, Dataset)
    path = PARAMETERS_DIR / f"{backbone}_{dataset}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no parameters file for {backbone} x {dataset}; "
                          f"expected one per cell in {PARAMETERS_DIR} (or set $PQD_PARAMETERS)")
    return load(path, preset=preset, **overrides)


def apply_overrides(cfg: RunConfig, assignments: dict[str, Any]) -> RunConfig:
    """Return `cfg` with dotted-key assignments applied, e.g. ``{"train.epochs": 3}`` (validated)."""
    nested: dict[str, Any] = {}
    for dotted, value in assignments.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(_merge(to_dict(cfg), nested))


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` strings; values are read as YAML scalars/lists (``3``, ``true``, ``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item!r}: expected key=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{key}: cannot read value {raw!r}") from None
    return out


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML; ``load`` of it gives back an equal config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_hash(cfg: RunConfig, sections: tuple[str, ...] | None = None, length: int = 10) -> str:
    """A stable hex hash of what the run computes (paths, devices and timing knobs excluded).

    `sections` restricts the hash to some top-level fields, e.g. ``("seed", "data", "model", "train")``
    names the baseline teacher independently of the stage settings.
    """
    d = to_dict(cfg)
    for dotted in _UNHASHED:
        node = d
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    if sections is not None:
        d = {k: v for k, v in d.items() if k in sections}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_id(cfg: RunConfig, order: str | None = None, *, model: str | None = None, dataset: str | None = None,
           identity: tuple[str, ...] = ()) -> str:
    """A readable, unique run name ``<model>-<dataset>-<label>-s<seed>-<hash>``, e.g. ``resnet18-cifar10-PQD-s0-3fa2c81b9e``.

    The one home of the run-id format. `order` is the label (default ``cfg.pipeline.order``; the
    batch runner passes the preset); `model` and `dataset` default to the config's names (a user's
    own network and data pass theirs); `identity` adds strings to the hash (e.g. fingerprints of a
    user's model and data, which the config does not describe).
    """
    order = cfg.pipeline.order if order is None else order
    digest = config_hash(cfg)
    if identity:
        digest = hashlib.sha256("|".join((digest, *identity)).encode()).hexdigest()[:len(digest)]
    name = "-".join((model or cfg.model.name, dataset or cfg.data.dataset, order, f"s{cfg.seed}", digest))
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def with_section(cfg: RunConfig, section: str, **changes: Any) -> RunConfig:
    """Return `cfg` with fields of one section replaced (validated), e.g. ``with_section(cfg, "train", epochs=3)``."""
    return apply_overrides(cfg, {f"{section}.{k}": v for k, v in changes.items()})

