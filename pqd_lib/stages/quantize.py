"""Q: INT8 quantization-aware training for the x86 CPU backend, and conversion to a real INT8 model.

Stage Q of Zhou & Shen (2026), with two engines (``cfg.quantize.engine``). The default, ``"pt2e"``,
is torchao's ``torch.export``-based QAT (:mod:`pqd_lib.stages.quantize_pt2e`), the maintained path,
with the scheme and schedule described here. ``"fx"`` is torch.ao's FX graph mode, deprecated in torch
2.14: the reference path, kept behind ``quantize.engine=fx`` to reproduce the committed FX records
until it is retired (the two reached parity on the mini grid: ``reports/engine-parity/``). The text
below was measured on the FX path, where it was first built; the PT2E module says where it differs.

FX: the model is traced and prepared for QAT with PyTorch's FX graph
mode (``torch.ao.quantization.quantize_fx.prepare_qat_fx``): conv-BN(-ReLU) are fused into QAT
modules that fold BatchNorm into the weight and fake-quantize it (Jacob et al. 2018, "Quantization
and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", Sec. 3), and
every activation gets a fake-quant. Training then follows torchvision's QAT reference recipe
(``references/classification/train_quantization.py``): observers are frozen after a fraction
``freeze_observers_after`` of the stage (``model.apply(torch.ao.quantization.disable_observer)``)
and BatchNorm statistics after ``freeze_bn_after``
(``model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)``); we count in optimiser steps, not
whole epochs, so the fractions mean something in 1- or 2-epoch CPU stages. At the end of the
pipeline :func:`convert` turns the fake-quant model into a real INT8 model (``convert_fx``)
whose convolutions and linear layer run quantized x86 kernels (``quantized::conv2d``, ...).

The quantization scheme (:func:`qconfig_mapping`): weights INT8 (``qint8``, -128..127),
per-output-channel symmetric (zero point 0, so a pruned 0 stays the integer 0); activations
``quint8`` per-tensor affine over 0..127 by default (``reduce_range``, torch's own x86 default), over
the paper's full 0..255 as an explicit opt-in (``cfg.quantize.reduce_range=False``) for deploy
targets with AVX-512 VNNI. Why, by measurement:

* Without VNNI (AVX2, AVX-512 without VNNI) the u8 x s8 kernels of torch's x86 engine (fbgemm's,
  ``vpmaddubsw``) add each pair of products in a *saturating 16-bit* register before widening to
  32 bits; 2 x 255 x 127 = 64,770 overflows 32,767, 2 x 127 x 128 = 32,512 does not, so only 7-bit
  activations are exact there. With AVX-512 VNNI (``vpdpbusd``, and oneDNN's kernels, which the x86
  engine picks only on such CPUs) products go straight into 32-bit sums: both ranges are exact.
  The mismatch of a full-range model on AVX2 is this saturation, not a rounding difference: one
  quantized conv (uint8 inputs, int8 weights up to +-127) against exact integer arithmetic on AMD
  EPYC AVX2 is off by up to 11 output steps (51 % of outputs by more than one) with 0..255 inputs,
  and by 0 with 0..127 inputs or with weights within +-64 (``tests/test_stages.py`` keeps this
  oracle per CPU).
* INT8 vs its fake-quant twin, logit SQNR / top-1 agreement, 0..127 vs 0..255:
  AMD EPYC, AVX2, no VNNI (``x86-avx2``, this project's CI machine) -- test setup (ResNet-18 width
  0.125, embedded CIFAR-10, 1 QAT epoch) 26.1 dB / 98.7 % vs 14.4 dB / 84.4 % (the full-range
  model forced through convert; its INT8 top-1 41.9 % against 43.5 % fake-quant). The mini
  preset (width 0.25, CIFAR-10 JPEG mirror, Q alone) is not measured here yet.
  Zen 4, AVX-512 VNNI (``x86-avx512-vnni``, where the committed mini records were made) -- test
  setup 30.5 dB / 98.8 % vs 45.3 dB / 99.6 %: the full range is the more faithful one *there*,
  which is why it was the default; on AVX2 it is wrong.
* The accuracy cost of 7-bit activations, in the same test setup (1,000 test images): fake-quant
  top-1 43.9 % with 0..127 against 43.5 % with 0..255 -- none measurable; the INT8 model that
  runs on AVX2 scores 44.0 % with 0..127 and 41.9 % with 0..255.
* The +-1-step mismatch left with 0..127 is not saturation: the conv oracle above is exact there,
  and ONNX Runtime running the exported QDQ graph op by op in *float* (no integer kernels) differs
  from the fake-quant model by the same 26.1 dB / 98.7 % as torch's INT8 kernels do, so it comes
  from where the converted graph rounds to the coarser 7-bit grid, not from the kernels.

So full range is refused where it would be wrong: stage Q and :func:`convert` raise
:class:`ActivationRangeError` on a CPU without AVX-512 VNNI (one line naming the fix; ``convert``'s
``allow_saturation=True`` overrides), deploy files record the range and ``load_deploy`` refuses
the same way (:func:`pqd_lib.hardware.has_int8_vnni` decides).

The weights differ from ``get_default_qat_qconfig_mapping("x86")`` too, deliberately: its *fused*
per-channel weight fake-quant stores the symmetric scale as max|w| / 127 while ``convert_fx``
quantizes with the observer's max|w| / 127.5, so about one INT8 weight in five lands one step away
from what QAT trained (measured with 0..127 activations on Zen 4: SQNR 26 dB and agreement 95.5 %
fused, 30.5 dB and 98.8 % unfused). We use the unfused ``FakeQuantize`` with the same observer
(``MovingAveragePerChannelMinMaxObserver``), whose scale is exactly the one ``convert_fx`` uses.

The mapping's special cases (fixed-qparams ops, reshape, transposed convs) are kept.

Deploy speed differs between the engines' INT8 forms: measured on the project's CPU (ResNet-18
CIFAR, batch 1, 1 thread) FP32 eager 19.8 ms, FX INT8 4.3 ms eager, PT2E-converted 45 ms eager (INT8
arithmetic run in FP32, a reference) and 3.7 ms under ``torch.compile`` (:func:`compile_for_cpu`),
ONNX Runtime INT8 3.3 ms; a PT2E INT8 model is therefore timed compiled or in a runtime
(:func:`deploys_compiled`). FX's deprecation warnings are silenced here only, inside each call
(:func:`_quiet`), never globally.

The functions here dispatch on the model they are given, so the stage,
the pipeline and ``measure`` ask one place whatever the engine: :func:`is_fake_quant`,
:func:`is_int8`, :func:`int8_layers` / :func:`int8_weights` (the one reader of INT8 weights for sizes,
proxies and sparsity), :func:`convert`, :func:`observers_paused` and the freezing functions.

Learning rate: ``cfg.quantize.lr = 0.001``, the config's default and a hundredth of the baseline
rate: QAT only fine-tunes. torchvision's QAT reference uses 1e-4 at batch 32 per GPU; the config
comment on ``QuantizeConfig.lr`` says how it scales that to batch 128.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .. import hardware
from ..config import QuantizeConfig
from . import StageContext

__all__ = [
    "BackendError",
    "ActivationRangeError",
    "check_backend",
    "check_activation_range",
    "activation_reduce_range",
    "int8_settings",
    "qconfig_mapping",
    "example_inputs",
    "prepare_qat",
    "freeze_observers",
    "freeze_bn_stats",
    "observers_paused",
    "calibrate",
    "convert",
    "int8_skeleton",
    "is_fake_quant",
    "is_int8",
    "engine_of",
    "deploys_compiled",
    "compile_for_cpu",
    "int8_layers",
    "int8_weights",
    "fidelity",
    "qat_schedule",
    "quantize",
]

# Observer passes before training when observers would otherwise never see data
# (a 0-epoch Q stage, or freeze_observers_after = 0): a few batches fix sane ranges.
_CALIBRATION_BATCHES = 8


class BackendError(RuntimeError):
    """The requested quantized engine is not available in this torch build / on this machine."""


class ActivationRangeError(BackendError):
    """Full-range (0..255) activations on an x86 CPU whose INT8 kernels saturate them (no AVX-512 VNNI)."""


# Engines whose x86 u8 x s8 kernels add product pairs in saturating 16-bit registers without VNNI.
_SATURATING_ENGINES = ("x86", "fbgemm", "onednn")
# Where convert records the range on the INT8 GraphModule: ``meta`` survives deepcopy and pickling.
_META_KEY = "pqd_quantize"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch.ao's deprecation chatter for the duration of one call (and nothing else)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max")
        # A converted skeleton (int8_skeleton) computes qparams from untouched observers; the
        # values are overwritten by the loaded state dict at once.
        warnings.filterwarnings("ignore", message=r"must run observer before calling calculate_qparams")
        yield


def check_backend(backend: str) -> None:
    """Raise :class:`BackendError` (one line, listing the available engines) unless `backend` is usable."""
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    if backend not in engines:
        raise BackendError(f"quantize.backend: {backend!r} is not a quantized engine of this torch build/machine; "
                           f"available: {', '.join(engines) or 'none'}")


def _use_backend(backend: str) -> None:
    check_backend(backend)
    # Process-wide on purpose: INT8 weights are packed for, and must run on, this engine.
    torch.backends.quantized.engine = backend


def check_activation_range(reduce_range: bool, backend: str = "x86", *, allow_saturation: bool = False,
                           where: str = "quantize") -> None:
    """Raise :class:`ActivationRangeError` (one line naming the fix) if an INT8 model with this activation
    range would compute wrong sums with `backend`'s kernels on this CPU.

    Full-range activations (``reduce_range=False``) are exact only where the x86 kernels have VNNI
    (:func:`pqd_lib.hardware.has_int8_vnni`); 0..127 activations are exact everywhere.
    `allow_saturation` skips the check, for users who know the model never reaches the
    saturating sums (or who convert here to deploy on a VNNI CPU). `where` starts the message.
    """
    if reduce_range or allow_saturation or backend not in _SATURATING_ENGINES or hardware.has_int8_vnni():
        return
    raise ActivationRangeError(
        f"{where}: full-range uint8 activations (quantize.reduce_range=false) on a CPU without AVX-512 VNNI "
        f"({hardware.capability_class()}): the {backend} INT8 kernels saturate 16-bit sums and give wrong outputs; "
        "retrain with quantize.reduce_range=true, or run on a CPU with AVX-512 VNNI (allow_saturation=True overrides)")


def activation_reduce_range(model: nn.Module) -> bool | None:
    """The activation range of a QAT-prepared `model`: True if every uint8 activation fake-quant stops at
    127 (``reduce_range``), False if one uses 0..255, None if it has none (not QAT-prepared). FX or PT2E."""
    if _is_pt2e(model):
        maxima = [int(m.quant_max) for m in _pt2e().fake_quants(model) if getattr(m, "dtype", None) == torch.uint8]
        return None if not maxima else max(maxima) <= 127
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    maxima = [int(m.quant_max) for m in model.modules()
              if isinstance(m, FakeQuantizeBase) and getattr(m, "dtype", None) == torch.quint8]
    return None if not maxima else max(maxima) <= 127


def int8_settings(model: nn.Module) -> dict[str, Any] | None:
    """``{"backend", "reduce_range"}`` that :func:`convert` recorded on an INT8 model; None if it has none."""
    meta = getattr(model, "meta", None)
    settings = meta.get(_META_KEY) if isinstance(meta, dict) else None
    return dict(settings) if settings else None


def qconfig_mapping(backend: str = "x86", *, reduce_range: bool = True) -> Any:
    """The QAT ``QConfigMapping``: per-channel symmetric qint8 weights, per-tensor affine quint8 activations.

    Starts from ``get_default_qat_qconfig_mapping(backend)`` (keeping its special cases) and
    replaces its default qconfig wherever used: activations quint8, per-tensor affine, 0..255
    (0..127 with `reduce_range`), moving-average min/max; weights qint8 -128..127,
    ``per_channel_symmetric``, moving-average per-channel min/max, unfused (see the module text).
    """
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping
    from torch.ao.quantization.fake_quantize import (FakeQuantize, FusedMovingAvgObsFakeQuantize,
                                                     default_per_channel_weight_fake_quant)
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

    with _quiet():
        mapping = get_default_qat_qconfig_mapping(backend)
        default = mapping.global_qconfig
        act = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=127 if reduce_range else 255,
            dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        # Not the default's *fused* weight fake-quant: its kernel stores the symmetric scale as
        # max|w| / 127 while convert_fx quantizes with the observer's max|w| / 127.5, so ~1 in 5
        # INT8 weights would land one step away from what training saw (measured on torch 2.14.1:
        # logit SQNR INT8 vs fake-quant 26 dB -> see tests). The unfused FakeQuantize computes its
        # scale with the observer's own calculate_qparams, exactly what convert uses.
        weight = FakeQuantize.with_args(
            observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        assert default_per_channel_weight_fake_quant.p.keywords["qscheme"] == torch.per_channel_symmetric

        def swap(q: Any) -> Any:
            if q is None or q.activation is not default.activation:
                return q
            return QConfig(activation=act, weight=weight if q.weight is default.weight else q.weight)

        mapping.set_global(swap(mapping.global_qconfig))
        for key, q in list(mapping.object_type_qconfigs.items()):
            mapping.set_object_type(key, swap(q))
    return mapping


def example_inputs(data: Any, device: torch.device | str = "cpu") -> tuple[torch.Tensor]:
    """One zero image shaped like `data`'s images, for FX tracing (values do not matter)."""
    return (torch.zeros(1, *data.x_train.shape[1:], device=device),)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def prepare_qat(model: nn.Module, *, backend: str = "x86", reduce_range: bool = True,
                example_inputs: tuple[torch.Tensor, ...] | None = None,
                engine: str = QuantizeConfig.engine) -> nn.Module:
    """QAT prepare of a copy of `model` (the input is left untouched); returns it in train mode.

    ``engine="pt2e"`` (the default, ``QuantizeConfig.engine``): torchao's PT2E flow
    (:func:`pqd_lib.stages.quantize_pt2e.prepare_qat`, x86 backend only); ``"fx"``: torch.ao's FX
    graph mode (the reference path), as follows.

    Fuses conv-BN(-ReLU) into QAT modules named like the conv and inserts fake-quants with
    :func:`qconfig_mapping`. Module state that is not a parameter of a standard module (e.g.
    pruning masks) does not survive: the caller carries it (``StageContext.on_new_model``).

    Raises:
        BackendError: `backend` is not among ``torch.backends.quantized.supported_engines``.
        ValueError: `model` is already fake-quantized or converted.
    """
    _use_backend(backend)
    if is_fake_quant(model) or is_int8(model):
        raise ValueError("quantize: the model is already quantization-aware or INT8; Q runs at most once")
    if engine == "pt2e":
        if backend != "x86":
            raise BackendError(f"quantize.backend: {backend!r} with quantize.engine 'pt2e'; PT2E here targets "
                               "'x86' only (set quantize.backend: x86, or quantize.engine: fx)")
        return _pt2e().prepare_qat(model, reduce_range=reduce_range, example_inputs=example_inputs)
    if engine != "fx":
        raise ValueError(f"quantize.engine: {engine!r} is not allowed; choose 'pt2e' or 'fx'")
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    model = copy.deepcopy(model).train()
    if example_inputs is None:
        example_inputs = (torch.zeros(1, 3, 32, 32, device=_device_of(model)),)
    with _quiet():
        return prepare_qat_fx(model, qconfig_mapping(backend, reduce_range=reduce_range), example_inputs)


def _pt2e() -> Any:
    """The PT2E implementation module (imported on first use: it imports torchao)."""
    from . import quantize_pt2e

    return quantize_pt2e


def _is_pt2e(model: nn.Module) -> bool:
    return _pt2e().is_exported(model)


def freeze_observers(model: nn.Module) -> None:
    """Stop updating quantization ranges (torchvision QAT recipe: after ``num_observer_update_epochs``)."""
    if _is_pt2e(model):
        return _pt2e().freeze_observers(model)
    from torch.ao.quantization import disable_observer

    model.apply(disable_observer)


def freeze_bn_stats(model: nn.Module) -> None:
    """Stop updating BatchNorm running statistics of the fused QAT modules (torchvision QAT recipe)."""
    if _is_pt2e(model):
        return _pt2e().freeze_bn_stats(model)
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats as _freeze

    model.apply(_freeze)


@contextlib.contextmanager
def observers_paused(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block no observer updates its range (restored afterwards): evaluation must not
    move quantization ranges with test images (a fake-quant observes in eval mode too)."""
    if _is_pt2e(model):
        fqs = _pt2e().fake_quants(model)
    else:
        from torch.ao.quantization.fake_quantize import FakeQuantizeBase

        fqs = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    saved = [m.observer_enabled.clone() for m in fqs]
    for m in fqs:
        m.disable_observer()
    try:
        yield model
    finally:
        for m, s in zip(fqs, saved):
            m.observer_enabled.copy_(s)


@torch.no_grad()
def calibrate(model: nn.Module, data: Any, *, batches: int = _CALIBRATION_BATCHES, batch_size: int = 128,
              channels_last: bool = False) -> None:
    """Let the observers of a prepared model see `batches` un-augmented training batches (eval mode)."""
    from .. import data as data_mod

    was_training = model.training
    model.eval()
    device = _device_of(model)
    it = data_mod.batches(data, "train", batch_size, shuffle=False, augment=False, device=device,
                          channels_last=channels_last)
    for i, (images, _) in enumerate(it):
        if i >= batches:
            break
        model(images)
    model.train(was_training)


def convert(model: nn.Module, *, backend: str = "x86", allow_saturation: bool = False) -> nn.Module:
    """The real INT8 model of a QAT-prepared `model` (``convert_fx`` on a CPU copy; `model` is untouched).

    BatchNorm is folded into the conv weights, weights are quantized with their observers' per-channel
    scales (zero point 0), and conv/linear/add run as ``quantized::`` x86 kernels. Returned in eval
    mode, on the CPU, in contiguous memory format, with its backend and activation range recorded
    (:func:`int8_settings`; deploy files store them).

    Raises:
        ValueError: `model` is not QAT-prepared.
        ActivationRangeError: full-range activations on a CPU without AVX-512 VNNI, where the INT8
            kernels would give wrong outputs (:func:`check_activation_range`; `allow_saturation` overrides).
    """
    if _is_pt2e(model) and _pt2e().is_fake_quant(model):
        # PT2E: an INT8 graph for inductor's oneDNN kernels (x86), whose u8 x s8 arithmetic needs the same range.
        reduce_range = bool(activation_reduce_range(model))
        check_activation_range(reduce_range, "x86", allow_saturation=allow_saturation, where="quantize.convert")
        int8 = _pt2e().convert(model)
        int8.meta[_META_KEY] = {"backend": "x86", "reduce_range": reduce_range, "engine": "pt2e"}
        return int8
    from torch.ao.quantization.quantize_fx import convert_fx

    _use_backend(backend)
    if not is_fake_quant(model):
        raise ValueError("quantize.convert: the model is not QAT-prepared (run prepare_qat / stage Q first)")
    reduce_range = bool(activation_reduce_range(model))
    check_activation_range(reduce_range, backend, allow_saturation=allow_saturation, where="quantize.convert")
    twin = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format).eval()
    with _quiet():
        int8 = convert_fx(twin).eval()
    if reduce_range:
        _clamp_requantized_outputs(int8, quant_max=127)
    int8.meta[_META_KEY] = {"backend": backend, "reduce_range": reduce_range}
    return int8


def clamp_to_quant_max(x: torch.Tensor, quant_max: int) -> torch.Tensor:
    """`x` (a ``quint8`` tensor) with every value above integer `quant_max` set to it, qparams kept.

    Reads the scale and zero point at run time, so a deploy file's weights loaded into a skeleton
    (:func:`int8_skeleton`) clamp at their own range, not the skeleton's placeholder one.
    """
    return torch.clamp(x, max=(quant_max - x.q_zero_point()) * x.q_scale())


def _requantizing_functions() -> frozenset[Any]:
    """``call_function`` targets of a converted FX graph that requantize (write a tensor with new qparams)."""
    ops = torch.ops.quantized
    return frozenset({torch.quantize_per_tensor, ops.add, ops.add_relu, ops.mul, ops.mul_relu, ops.cat})


def _clamp_requantized_outputs(int8: nn.Module, *, quant_max: int) -> None:
    """Clamp every requantized activation of a converted FX graph to `quant_max`, as its fake-quant twin does.

    With 7-bit activations (0..127) QAT's fake-quant clamps each activation at 127, but the converted
    ``quantized::`` kernels (and ``quantize_per_tensor``) saturate at the uint8 limit 255: an
    activation beyond its calibrated range then reaches the next conv as up to 255, the input range
    that overflows the 16-bit pair sums of the AVX2 u8 x s8 kernels. Measured on AMD EPYC AVX2 with
    inputs 6x the calibration scale (ResNet-18, width 0.25): logit SQNR against fake-quant -1.7 dB
    without the clamp, 14.1 dB with it (``tests/test_stages.py``). Pass-through ops (pooling,
    flatten, relu) keep their input's qparams and need none.
    """
    graph = int8.graph
    functions = _requantizing_functions()
    for node in list(graph.nodes):
        if node.op == "call_module":
            module = int8.get_submodule(node.target)
            requantizes = type(module).__module__.startswith("torch.ao.nn.quantized") and hasattr(module, "scale")
        else:
            requantizes = node.op == "call_function" and node.target in functions
        if not requantizes:
            continue
        with graph.inserting_after(node):
            clamped = graph.call_function(clamp_to_quant_max, (node, quant_max))
        node.replace_all_uses_with(clamped, delete_user_cb=lambda user: user is not clamped)
    graph.lint()
    int8.recompile()


def int8_skeleton(model: nn.Module, *, backend: str = "x86", reduce_range: bool = True,
                  input_shape: tuple[int, ...] = (1, 3, 32, 32), allow_saturation: bool = False) -> nn.Module:
    """An FX INT8 module with the structure :func:`convert` gives for this architecture, to load a state dict into.

    Prepares and converts a freshly built FP32 `model` with the same qconfig; its quantized values are
    placeholders until ``load_state_dict`` (used by :func:`pqd_lib.deploy.load_deploy` for FX deploy
    files, which store a state dict; a PT2E INT8 graph is saved and loaded as a ``torch.export`` program).
    `allow_saturation` as in :func:`convert`.
    """
    prepared = prepare_qat(model.cpu(), backend=backend, reduce_range=reduce_range,
                           example_inputs=(torch.zeros(*input_shape),), engine="fx")
    with torch.no_grad(), _quiet():
        prepared.eval()(torch.zeros(*input_shape))  # gives the observers a range: no inf scales
    return convert(prepared, backend=backend, allow_saturation=allow_saturation)


def is_fake_quant(model: nn.Module) -> bool:
    """True for a QAT-prepared model (it contains fake-quant modules), FX or PT2E."""
    if _is_pt2e(model):
        return _pt2e().is_fake_quant(model)
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def int8_layers(model: nn.Module) -> dict[str, Any]:
    """Every quantized conv/linear layer of an INT8 model (FX or PT2E), by qualified name: the one reader of
    INT8 weights that sizes, proxies and sparsity use.

    Values are :class:`pqd_lib.stages.quantize_pt2e.Int8Layer` (integer weights, number of weight
    scales, float bias, the state-dict keys the layer accounts for). Empty for FP32 and fake-quant models.
    """
    if _is_pt2e(model):
        return _pt2e().int8_layers(model)
    layer_type = _pt2e().Int8Layer
    out = {}
    for name, m in model.named_modules():
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if not callable(w) or isinstance(w, torch.Tensor):
            continue
        try:
            t = w()
        except Exception:  # a module whose weight() is not the quantized accessor
            continue
        if not (isinstance(t, torch.Tensor) and t.is_quantized):
            continue
        per_channel = t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                                      torch.per_channel_affine_float_qparams)
        bias = b() if callable(b) and not isinstance(b, torch.Tensor) else b
        prefix = f"{name}." if name else ""
        # The module's output scale/zero point are activation parameters, not the layer's.
        keys = frozenset(set(m.state_dict(prefix=prefix)) - {f"{prefix}scale", f"{prefix}zero_point"})
        out[name] = layer_type(values=t.int_repr(), qparams=t.q_per_channel_scales().numel() if per_channel else 1,
                               bias=bias if isinstance(bias, torch.Tensor) else None, state_keys=keys)
    return out


def int8_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The integer weights of every quantized conv/linear layer, by qualified name (FX or PT2E INT8 model)."""
    return {name: layer.values for name, layer in int8_layers(model).items()}


def is_int8(model: nn.Module) -> bool:
    """True for a converted model with quantized conv/linear weights."""
    return bool(int8_weights(model))


def engine_of(model: nn.Module) -> str | None:
    """The Q engine that made a QAT-prepared or INT8 `model`: ``"pt2e"`` (an exported graph) or ``"fx"``;
    None for any other model (FP32, pruned)."""
    if _is_pt2e(model):
        return "pt2e" if _pt2e().is_fake_quant(model) or _pt2e().is_int8(model) else None
    return "fx" if is_fake_quant(model) or is_int8(model) else None


def deploys_compiled(model: nn.Module) -> bool:
    """True for a PT2E INT8 graph: its deploy form is compiled (:func:`compile_for_cpu`) or an ONNX runtime;
    eager it runs its INT8 arithmetic in FP32, a slow reference that latency must never time by default."""
    return _is_pt2e(model) and _pt2e().is_int8(model)


def compile_for_cpu(model: nn.Module) -> nn.Module:
    """``torch.compile`` of a deploy model for the CPU: a PT2E INT8 graph through
    :func:`pqd_lib.stages.quantize_pt2e.compile_int8` (inductor with freezing, the only way it reaches
    oneDNN's INT8 kernels), anything else through plain ``torch.compile``. Compiles on the first call."""
    if deploys_compiled(model):
        return _pt2e().compile_int8(model)
    return torch.compile(model)


@torch.no_grad()
def fidelity(fake_quant: nn.Module, int8: nn.Module, data: Any, *, batch_size: int = 512) -> dict[str, float]:
    """How closely the INT8 model reproduces its fake-quant twin on the test images.

    Returns top-1 of each, their top-1 agreement (%), and the SQNR of the INT8 logits against the
    fake-quant logits, ``10 log10(sum f^2 / sum (f - q)^2)`` in dB. The fake-quant model runs on its
    device with observers paused, the INT8 model on the CPU; both in eval mode.
    """
    from .. import data as data_mod

    dev = _device_of(fake_quant)
    was_training = fake_quant.training
    fake_quant.eval()
    int8.eval()
    agree = correct_f = correct_q = n = 0
    signal = noise = 0.0
    with observers_paused(fake_quant):
        for images, targets in data_mod.batches(data, "test", batch_size, shuffle=False, augment=False):
            f = fake_quant(images.to(dev)).float().cpu()
            q = int8(images).float()
            agree += int((f.argmax(1) == q.argmax(1)).sum())
            correct_f += int((f.argmax(1) == targets).sum())
            correct_q += int((q.argmax(1) == targets).sum())
            signal += float((f.double() ** 2).sum())
            noise += float(((f.double() - q.double()) ** 2).sum())
            n += len(targets)
    fake_quant.train(was_training)
    sqnr = math.inf if noise == 0 else 10.0 * math.log10(signal / noise)
    return {"agreement": 100.0 * agree / max(n, 1), "sqnr_db": sqnr,
            "fake_quant_top1": 100.0 * correct_f / max(n, 1), "int8_top1": 100.0 * correct_q / max(n, 1)}


def qat_schedule(model: nn.Module, total_steps: int, steps_per_epoch: int, *, freeze_observers_after: float,
                 freeze_bn_after: float) -> tuple[list[Callable[[], None]], list[Callable[[int], None]]]:
    """torchvision's QAT freezing recipe for one stage's training of a fake-quant model: its hooks.

    At the stage's start observers and BatchNorm statistics are (re-)enabled; observers freeze after
    ``round(freeze_observers_after * total_steps)`` optimiser steps and BN statistics after
    ``round(freeze_bn_after * total_steps)`` (torchvision freezes after whole epochs; steps keep the
    fractions meaningful in 1- or 2-epoch stages). Stage Q registers this in
    ``StageContext.stage_hooks``, so it also governs every later stage that trains the fake-quant
    model: kept frozen from the end of Q, BN statistics cannot follow what P (half the weights
    zeroed) or D (lr 0.01) do to the activations -- measured on the mini preset, D after Q fell
    from 61 % to 24 % top-1 in one epoch with everything frozen, and stayed at 61 % with this.
    Returns ``(after_step hooks, on_epoch_start hooks)`` for :func:`pqd_lib.train.fit`.
    """
    obs_at = round(freeze_observers_after * total_steps)
    bn_at = round(freeze_bn_after * total_steps)
    if total_steps > 0:  # a stage without steps leaves the model as it is
        if obs_at > 0:
            _enable_observers(model)
        if bn_at > 0:
            _update_bn_stats(model)
    state = {"t": 0, "obs": total_steps == 0, "bn": total_steps == 0}

    def sync() -> None:
        if not state["obs"] and state["t"] >= obs_at:
            freeze_observers(model)
            state["obs"] = True
        if not state["bn"] and state["t"] >= bn_at:
            freeze_bn_stats(model)
            state["bn"] = True

    def on_epoch_start(epoch: int) -> None:
        # Set from the epoch, not counted: a resumed fit starts at an epoch boundary.
        state["t"] = epoch * steps_per_epoch
        sync()

    def after_step() -> None:
        state["t"] += 1
        sync()

    return [after_step], [on_epoch_start]


def _enable_observers(model: nn.Module) -> None:
    if _is_pt2e(model):
        return _pt2e().enable_observers(model)
    from torch.ao.quantization import enable_observer

    model.apply(enable_observer)


def _update_bn_stats(model: nn.Module) -> None:
    if _is_pt2e(model):
        return _pt2e().update_bn_stats(model)
    from torch.ao.nn.intrinsic.qat import update_bn_stats

    model.apply(update_bn_stats)


def quantize(model: nn.Module, cfg: Any, data: Any, ctx: StageContext) -> nn.Module:
    """Stage Q (Zhou & Shen 2026): INT8 quantization-aware training; returns a NEW, QAT-prepared model.

    Prepares a copy of `model` (:func:`prepare_qat`), hands state kept on the old model to the new
    one (``ctx.on_new_model``: P's masks), then fine-tunes it for ``ctx.epochs`` epochs with the one
    training loop, freezing observers after ``freeze_observers_after`` and BN statistics after
    ``freeze_bn_after`` of the stage's optimiser steps (torchvision's QAT recipe, :func:`qat_schedule`,
    which every later stage's training of the fake-quant model follows too). From here on evaluation
    pauses the observers (``ctx.eval_context``) and training stays in FP32. Without training steps
    (0 epochs) it is post-training quantization: observers calibrated on a few training batches.
    The model stays fake-quantized so later stages can train it; :func:`convert` makes the INT8
    deploy form.

    Optimiser: ``cfg.quantize.lr`` (0.001, a hundredth of the baseline rate; see the module text),
    ``cfg.quantize.momentum``, ``cfg.quantize.weight_decay``.

    Raises:
        BackendError: ``cfg.quantize.backend`` is not a supported engine here (lists the available ones).
        ActivationRangeError: ``cfg.quantize.reduce_range`` is false on a CPU without AVX-512 VNNI, whose
            INT8 kernels would compute the deployed model wrongly (the message names the fix).
    """
    from .. import train

    qc = cfg.quantize
    # Before any work: fail in one line, nothing trained or written.
    check_backend(qc.backend)
    check_activation_range(qc.reduce_range, qc.backend)
    device = train.resolve_device(cfg.train.device)
    prepared = prepare_qat(model.to(device), backend=qc.backend, reduce_range=qc.reduce_range,
                           example_inputs=example_inputs(data, device), engine=qc.engine)
    ctx.replace_model(model, prepared)
    ctx.fake_quant = True
    ctx.eval_context = observers_paused
    ctx.stage_hooks.append(functools.partial(qat_schedule, freeze_observers_after=qc.freeze_observers_after,
                                             freeze_bn_after=qc.freeze_bn_after))

    per_epoch = max(1, train.steps_per_epoch(data.y_train.numel(), cfg.train.batch_size))
    total = ctx.epochs * per_epoch
    if total == 0 or round(qc.freeze_observers_after * total) == 0:
        calibrate(prepared, data, batch_size=cfg.train.batch_size, channels_last=cfg.train.channels_last)
    ctx.fit(prepared, data, cfg, lr=qc.lr, momentum=qc.momentum, weight_decay=qc.weight_decay)
    if total == 0:
        freeze_observers(prepared)  # post-training quantization: the calibrated ranges are final
        freeze_bn_stats(prepared)
    ctx.extra.update({"engine": qc.engine, "backend": qc.backend, "reduce_range": qc.reduce_range, "stage_steps": total,
                      "freeze_observers_step": round(qc.freeze_observers_after * total),
                      "freeze_bn_step": round(qc.freeze_bn_after * total)})
    return prepared
