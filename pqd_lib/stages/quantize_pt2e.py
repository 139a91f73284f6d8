"""Q on the maintained path: torchao PT2E quantization-aware training (``torch.export`` -> prepare -> convert).

``torch.ao.quantization``'s FX graph mode (:mod:`pqd_lib.stages.quantize`'s reference path) is
deprecated in torch 2.14; its successor is torchao's PT2E flow (torchao 0.18.0):

1. ``torch.export.export(model, example_inputs)`` captures the network as one ATen graph (batch
   dimension dynamic, so the same graph trains at batch 128 and deploys at batch 1);
2. ``prepare_qat_pt2e(graph, X86InductorQuantizer().set_global(config))`` inserts fake-quants and
   rewrites conv-BN into the QAT form that folds BatchNorm into the weight before fake-quantizing it
   (Jacob et al. 2018, Sec. 3);
3. training as usual (the one loop of :mod:`pqd_lib.train`);
4. ``convert_pt2e`` gives the INT8 graph: weights stored as int8 tensors, quantize/dequantize ops
   around every quantized conv/linear/add. Eager, that graph runs in FP32 arithmetic (a correct
   reference, slow); :func:`compile_int8` lowers it with ``torch.compile`` (inductor, ``freezing``) to
   oneDNN INT8 kernels, and :mod:`pqd_lib.deploy` exports the same graph to ONNX (QDQ) and
   ``torch.export.save``.

The scheme is the FX path's, deliberately (:func:`quantization_config`): weights INT8 (-128..127)
per-output-channel symmetric (zero point 0, so a pruned 0 stays the integer 0), activations UINT8
per-tensor affine over 0..255, or 0..127 with `reduce_range` (the x86 setting for CPUs without VNNI).
As in the FX path the weight fake-quant is torchao's *unfused* ``FakeQuantize`` over a
``MovingAveragePerChannelMinMaxObserver``: the fused one that ``get_default_x86_inductor_quantization_config``
uses stores its symmetric scale as max|w| / 127 while ``convert_pt2e`` quantizes with the observer's
max|w| / 127.5 (the same mismatch as torch.ao's, measured there at 26 vs 30.5 dB logit SQNR).

Train/eval on an exported graph: ``model.train()`` cannot change an ATen graph's behaviour, so the
prepared model's ``train``/``eval`` are replaced (:func:`_set_mode`) by a switch of the ``training``
argument of its ``batch_norm`` (and ``dropout``) nodes -- what ``move_exported_model_to_train/eval``
achieve by pattern rewriting, and how torchao's QAT tutorial freezes BatchNorm. Frozen BatchNorm
(:func:`freeze_bn_stats`) keeps BN in its eval form also in training (running statistics used and
left alone), which is what torch.ao's ``freeze_bn_stats`` does to a fused ConvBn module.

Names survive export: the parameter of ``layer1.0.conv1`` is still ``layer1.0.conv1.weight`` on the
prepared graph, held by a plain container module of that name, so P's masks are re-attached by name
(:func:`pqd_lib.stages.prune.transfer_masks`) and :func:`weight_layers` finds the conv/linear
containers from the graph's ``nn_module_stack`` metadata.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "API",
    "SwitchableGraph",
    "quantization_config",
    "export_for_qat",
    "prepare_qat",
    "is_exported",
    "is_fake_quant",
    "is_int8",
    "weight_layers",
    "freeze_observers",
    "enable_observers",
    "freeze_bn_stats",
    "update_bn_stats",
    "fake_quants",
    "convert",
    "Int8Layer",
    "int8_layers",
    "int8_weights",
    "CompiledInt8",
    "compile_int8",
    "SETTINGS_FILE",
    "save_program",
    "register_int8_ops",
    "load_with_settings",
    "read_program_settings",
    "load_program",
    "write_onnx",
]

#: The torch/torchao functions and classes this module depends on, as (module, attribute): a test
#: imports every one, so an API that disappears fails by name rather than deep inside a stage.
API: tuple[tuple[str, str], ...] = (
    ("torch.export", "export"),
    ("torch.export", "Dim"),
    ("torch.export", "save"),
    ("torch.export", "load"),
    ("torch.onnx", "export"),
    ("torch._inductor.config", "patch"),  # private, used only by CompiledInt8 (see there)
    ("torch._inductor.config", "freezing"),
    ("torchao.quantization.pt2e.quantize_pt2e", "prepare_qat_pt2e"),
    ("torchao.quantization.pt2e.quantize_pt2e", "convert_pt2e"),
    ("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer", "X86InductorQuantizer"),
    ("torchao.quantization.pt2e.quantizer", "QuantizationConfig"),
    ("torchao.quantization.pt2e.quantizer", "QuantizationSpec"),
    ("torchao.quantization.pt2e", "FakeQuantize"),
    ("torchao.quantization.pt2e", "FakeQuantizeBase"),
    ("torchao.quantization.pt2e", "FusedMovingAvgObsFakeQuantize"),
    ("torchao.quantization.pt2e", "MovingAverageMinMaxObserver"),
    ("torchao.quantization.pt2e", "MovingAveragePerChannelMinMaxObserver"),
    ("torchao.quantization.pt2e", "PerChannelMinMaxObserver"),  # pqd_lib.controls.weight_quant_error
    ("torchao.quantization.pt2e", "disable_observer"),
    ("torchao.quantization.pt2e", "enable_observer"),
    ("torchao.quantization.pt2e", "move_exported_model_to_eval"),
    # private, used only by _conv_bn_patterns_of_present_convs (see there)
    ("torchao.quantization.pt2e.qat_utils", "_fuse_conv_bn_qat_helper"),
    ("torchao.quantization.pt2e.qat_utils", "_fold_conv_bn_qat_helper"),
    ("torchao.quantization.pt2e.qat_utils", "_get_aten_graph_module_for_pattern"),
)

_BATCH_NORM_OPS = ("aten.batch_norm.default", "aten._native_batch_norm_legit.default",
                   "aten.cudnn_batch_norm.default")
_DROPOUT_OPS = ("aten.dropout.default",)
# Quantize/dequantize ops of a converted graph (torchao registers them as quantized_decomposed).
_DEQUANT_PER_CHANNEL = "quantized_decomposed.dequantize_per_channel.default"
_CONV_LINEAR_OPS = ("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default", "aten.linear.default")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Key in the prepared graph's ``meta`` (which deepcopy keeps): True while BatchNorm statistics are frozen.
_BN_FROZEN = "pqd_bn_frozen"


def quantization_config(*, reduce_range: bool) -> Any:
    """The QAT ``QuantizationConfig`` for ``X86InductorQuantizer``: the FX path's scheme.

    Activations: UINT8 per-tensor affine, 0..255 (0..127 with `reduce_range`), fused moving-average
    min/max fake-quant (as torchao's x86 default). Weights: INT8 -128..127, per-output-channel
    symmetric, unfused ``FakeQuantize`` over ``MovingAveragePerChannelMinMaxObserver`` (see the module
    text for why not the fused one).
    """
    from torchao.quantization.pt2e import (FakeQuantize, FusedMovingAvgObsFakeQuantize, MovingAverageMinMaxObserver,
                                           MovingAveragePerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=127 if reduce_range else 255,
                           qscheme=torch.per_tensor_affine, is_dynamic=False,
                           observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
                               observer=MovingAverageMinMaxObserver))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False,
                              observer_or_fake_quant_ctr=FakeQuantize.with_args(
                                  observer=MovingAveragePerChannelMinMaxObserver))
    return QuantizationConfig(act, act, weight, None, is_qat=True)


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def export_for_qat(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """``torch.export`` a copy of `model` in training mode, batch dimension dynamic; returns its graph module.

    Raises:
        ValueError: the model cannot be exported (one line with torch's first reason; usual cause:
            Python control flow on tensor values in ``forward``).
    """
    model = copy.deepcopy(model).train()
    # At least 2 examples: export specialises a dimension of size 1 to the constant 1.
    inputs = tuple(x.expand(max(2, x.shape[0]), *x.shape[1:]).contiguous() for x in example_inputs)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception as exc:  # export raises many types; the first line is the reason
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"quantize: torch.export could not capture {type(model).__name__} for PT2E QAT "
                         f"({type(exc).__name__}: {first}); set quantize.engine: fx or make forward "
                         "free of data-dependent Python control flow") from None
    return program.module()


def is_exported(model: nn.Module) -> bool:
    """True for a graph captured by ``torch.export`` (prepared or converted by this module)."""
    # FX graph mode graphs call modules and torch functions; an exported graph calls ATen operators.
    return isinstance(model, torch.fx.GraphModule) and any(
        n.op == "call_function" and str(n.target).startswith("aten.") for n in model.graph.nodes)


def _set_mode(model: torch.fx.GraphModule, training: bool) -> torch.fx.GraphModule:
    """``train(mode)`` of an exported graph: sets the ``training`` argument of its BN and dropout nodes.

    BatchNorm stays in its eval form while :func:`freeze_bn_stats` holds. Module flags are set too,
    so ``model.training`` answers as for any module.
    """
    bn_training = training and not model.meta.get(_BN_FROZEN, False)
    changed = False
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        index = 5 if target in _BATCH_NORM_OPS else 2 if target in _DROPOUT_OPS else None
        want = bn_training if target in _BATCH_NORM_OPS else training
        if index is not None and len(node.args) > index and node.args[index] != want:
            args = list(node.args)
            args[index] = want
            node.args = tuple(args)
            changed = True
    if changed:
        model.recompile()
    for m in model.modules():
        m.training = training
    return model


class SwitchableGraph(torch.fx.GraphModule):
    """An exported graph whose ``train()``/``eval()`` switch its BatchNorm and dropout nodes (:func:`_set_mode`).

    PT2E replaces ``train``/``eval`` of a prepared graph by instance functions that raise; pqd's one
    training loop calls them, so :func:`prepare_qat` and :func:`convert` rebuild their graphs as this
    class (``GraphModule(root, graph)``, the public constructor). Being the class, not instance
    attributes, it survives ``copy.deepcopy`` (which keeps a graph's class, ``meta`` and state).
    """

    def train(self, mode: bool = True) -> SwitchableGraph:
        """Training mode: BatchNorm on batch statistics (unless frozen), dropout on."""
        return _set_mode(self, mode)

    def eval(self) -> SwitchableGraph:
        """Evaluation mode: BatchNorm on running statistics, dropout off."""
        return _set_mode(self, False)


def _make_switchable(model: torch.fx.GraphModule) -> SwitchableGraph:
    """`model` rebuilt as a :class:`SwitchableGraph` sharing its modules, parameters, buffers and ``meta``."""
    if isinstance(model, SwitchableGraph):
        return model
    switchable = SwitchableGraph(model, model.graph)
    for key, value in model.__dict__.items():
        # Plain attributes the generated code reads (export's input/output specs); not PT2E's raising train/eval.
        if key not in switchable.__dict__ and key not in ("train", "eval"):
            switchable.__dict__[key] = value
    switchable.meta.update(model.meta)
    switchable.training = model.training
    return switchable


def prepare_qat(model: nn.Module, *, reduce_range: bool,
                example_inputs: tuple[torch.Tensor, ...] | None = None) -> torch.fx.GraphModule:
    """PT2E QAT prepare of a copy of `model` (the input is left untouched); returns it in train mode.

    Exports the model (:func:`export_for_qat`), annotates it with ``X86InductorQuantizer`` and
    :func:`quantization_config`, and inserts fake-quants (``prepare_qat_pt2e``). Parameter names are
    kept (``layer1.0.conv1.weight``); buffers that the forward never reads (P's masks) are not: the
    caller carries them (``StageContext.on_new_model``).

    Raises:
        ValueError: `model` is already fake-quantized or converted, or cannot be exported.
    """
    register_int8_ops()  # the first torchao import of a PT2E flow, with its known import notice silenced
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    if is_fake_quant(model) or is_int8(model):
        raise ValueError("quantize: the model is already quantization-aware or INT8; Q runs at most once")
    if example_inputs is None:
        example_inputs = (torch.zeros(1, 3, 32, 32, device=_device_of(model)),)
    graph = export_for_qat(model, example_inputs)
    quantizer = X86InductorQuantizer().set_global(quantization_config(reduce_range=reduce_range))
    with _conv_bn_patterns_of_present_convs():
        prepared = prepare_qat_pt2e(graph, quantizer)
    prepared.meta[_BN_FROZEN] = False
    return _make_switchable(prepared).train()


def fake_quants(model: nn.Module) -> list[nn.Module]:
    """The torchao fake-quant modules of a prepared graph (weights and activations)."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    return [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]


def is_fake_quant(model: nn.Module) -> bool:
    """True for a PT2E QAT-prepared model (it contains torchao fake-quant modules)."""
    return bool(fake_quants(model))


def is_int8(model: nn.Module) -> bool:
    """True for a ``convert_pt2e`` graph: it dequantizes per-channel INT8 weights."""
    return isinstance(model, torch.fx.GraphModule) and any(
        n.op == "call_function" and str(n.target) == _DEQUANT_PER_CHANNEL for n in model.graph.nodes)


def _layer_of(node: torch.fx.Node) -> str | None:
    """The qualified name of the conv/linear module a conv/linear node was traced from."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    fqn, kind = list(stack.values())[-1]
    name = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
    if not any(name.endswith(f"{t.__module__}.{t.__qualname__}") or name.split(".")[-1] == t.__name__
               for t in _LAYER_TYPES):
        return None
    return fqn


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules holding conv/linear ``weight`` parameters of an exported graph, by qualified name.

    In ``named_modules`` order, like :func:`pqd_lib.stages.prune.prunable_layers` on an eager model
    (after export they are plain containers, not ``nn.Conv2d``: the graph records what they were).
    """
    traced = set()
    for node in model.graph.nodes:  # type: ignore[union-attr]
        if node.op == "call_function" and str(node.target) in _CONV_LINEAR_OPS:
            fqn = _layer_of(node)
            if fqn is not None:
                traced.add(_normalise(fqn))
    return {name: m for name, m in model.named_modules()
            if name in traced and isinstance(getattr(m, "weight", None), torch.Tensor)}


def _normalise(fqn: str) -> str:
    # nn_module_stack spells list/sequential indices as "layer1.0" already; strip export's "L['self']." forms.
    return fqn.replace("L['self'].", "").replace("L__self___", "")


def freeze_observers(model: nn.Module) -> None:
    """Stop updating quantization ranges (torchvision QAT recipe: after ``num_observer_update_epochs``)."""
    from torchao.quantization.pt2e import disable_observer

    model.apply(disable_observer)


def enable_observers(model: nn.Module) -> None:
    """Let every observer update its range again."""
    from torchao.quantization.pt2e import enable_observer

    model.apply(enable_observer)


def freeze_bn_stats(model: torch.fx.GraphModule) -> None:
    """Stop updating BatchNorm running statistics: BN normalises with them, in training too."""
    model.meta[_BN_FROZEN] = True
    _set_mode(model, model.training)


def update_bn_stats(model: torch.fx.GraphModule) -> None:
    """Undo :func:`freeze_bn_stats`: in training BN uses and updates batch statistics again."""
    model.meta[_BN_FROZEN] = False
    _set_mode(model, model.training)


def convert(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The INT8 graph of a PT2E QAT-prepared `model` (``convert_pt2e`` on a CPU copy; `model` is untouched).

    BatchNorm is folded into the conv weights, which are stored as INT8 tensors with their
    per-channel scales (zero point 0); activations are quantized/dequantized at every quantized op.
    Returned in eval mode on the CPU. Eager it runs the INT8 arithmetic in FP32 (a reference); use
    :func:`compile_int8` (or an ONNX runtime) for speed.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if not is_fake_quant(model):
        raise ValueError("quantize.convert: the model is not QAT-prepared (run prepare_qat / stage Q first)")
    twin = copy.deepcopy(model).cpu()
    _set_mode(twin, False)
    with _conv_bn_patterns_of_present_convs():
        converted = convert_pt2e(twin)
    _drop_unused_state(converted)
    return _make_switchable(converted).eval()


# The aten op (without overload) of each conv function torchao's conv-BN passes trace patterns from.
_PATTERN_CONV_OPS = {"conv1d": "aten.conv1d", "conv2d": "aten.conv2d", "conv_transpose1d": "aten.conv_transpose1d",
                     "conv_transpose2d": "aten.conv_transpose2d"}
# torchao's per-conv-kind helpers of its two conv-BN passes: QAT fusion (prepare) and BN folding (convert).
_PATTERN_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
# torchao's capture of one pattern as an ATen graph (a strict torch.export), called by those helpers.
_PATTERN_EXPORT = "_get_aten_graph_module_for_pattern"
# Patterns captured in this process, by what defines them (_pattern_key): torchao captures each afresh.
_PATTERN_GRAPHS: dict[tuple, torch.fx.GraphModule] = {}


def _pattern_key(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict[str, Any]) -> tuple | None:
    """What a captured pattern graph depends on, or None where it cannot be told (then it is not cached).

    torchao builds each pattern as a fresh closure (``_get_quantized_qat_conv_bn_pattern(is_per_channel,
    has_bias, ..., conv_fn, bn_is_training)``) wrapped in a stateless module (``WrapperModule(fn)``), so
    its identity is its code and the values it closes over (the conv function, flags, constants); the
    example inputs enter by shape and dtype only (an export traces no values: the patterns have no
    data-dependent control flow). A module with state of its own is not keyed.
    """
    def part(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return ("tensor", tuple(v.shape), v.dtype, v.device.type)
        if isinstance(v, (tuple, list)):
            return tuple(part(x) for x in v)
        hash(v)  # TypeError for an unhashable value: the key cannot be told
        return v

    fn = pattern
    if isinstance(pattern, nn.Module):
        fn = getattr(pattern, "fn", None)
        if fn is None or list(pattern.state_dict()) or list(pattern.children()):
            return None
    try:
        cells = tuple(part(c.cell_contents) for c in (fn.__closure__ or ()))
        return (type(pattern), fn.__code__, cells, part(example_inputs), bool(is_cuda),
                tuple(sorted((k, part(v)) for k, v in kwargs.items())))
    except (AttributeError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _conv_bn_patterns_of_present_convs() -> Iterator[None]:
    """Within the block torchao's conv-BN passes look only for the conv kinds the graph contains.

    ``prepare_qat_pt2e`` fuses conv-BN into the QAT form, and ``convert_pt2e`` folds it back, by
    subgraph rewriting for each of conv1d, conv2d, conv_transpose1d and conv_transpose2d, every
    pattern captured afresh by a strict ``torch.export`` (3 per conv kind in prepare, 24 in
    convert), whatever the model -- torchao knows (pytorch/pytorch#116440: "_fold_conv_bn_qat is
    taking a long time ... cache the patterns"). Measured (``scripts/pt2e_convert_time.py``, mini
    ResNet-18 width 0.25, 1 thread, AVX2 EPYC with a training job on the other core, two runs):
    plain ``convert_pt2e`` 120 s / 82 s, of which its 96 pattern exports 113 s / 76 s (cProfile);
    with this block 15.7 s / 9.5 s; prepare 7.0 s -> 2.9 s; prepared outputs, INT8 weights and INT8
    logits bit-identical. A pattern built on a conv op the graph
    does not contain cannot match, and the helpers do nothing else but dead-code elimination and
    dequantize-node bookkeeping that the next helper repeats, so skipping those kinds changes
    nothing but the time.

    The patterns that remain (3 in prepare, 16 in convert for a conv2d network) are the same in every
    call, so each is captured once per process and handed out as a copy (:data:`_PATTERN_GRAPHS`,
    keyed by :func:`_pattern_key`): measured on the AVX2 EPYC beside a training job, ResNet-18 width
    0.125, 1 thread, convert 8.8 s with no pattern captured yet, 1.0 s with all 27 captured (prepare
    7.8 -> 2.0 s); the warm convert's INT8 graph, weights and logits are the cold one's, bit for bit
    (``tests/test_quant_pt2e.py``). The helpers and the
    capture are private torchao functions, wrapped here only (the test of :data:`API` names them); one
    that disappears is left alone and costs only time.
    """
    from torchao.quantization.pt2e import qat_utils

    originals = {name: getattr(qat_utils, name) for name in (*_PATTERN_HELPERS, _PATTERN_EXPORT)
                 if hasattr(qat_utils, name)}

    def only_present(original: Any) -> Any:
        def helper(m: torch.fx.GraphModule, conv_fn: Any, *args: Any, **kwargs: Any) -> torch.fx.GraphModule:
            op = _PATTERN_CONV_OPS.get(getattr(conv_fn, "__name__", ""))
            present = {str(n.target).rsplit(".", 1)[0] for n in m.graph.nodes if n.op == "call_function"}
            if op is not None and op not in present:
                return m  # no node of this conv kind: none of its patterns can match
            return original(m, conv_fn, *args, **kwargs)

        return helper

    def captured_once(original: Any) -> Any:
        def capture(pattern: Any, example_inputs: tuple[Any, ...], is_cuda: bool = False,
                    **kwargs: Any) -> torch.fx.GraphModule:
            key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
            if key is None:
                return original(pattern, example_inputs, is_cuda, **kwargs)
            if key not in _PATTERN_GRAPHS:
                _PATTERN_GRAPHS[key] = original(pattern, example_inputs, is_cuda, **kwargs)
            return copy.deepcopy(_PATTERN_GRAPHS[key])  # the rewriter may touch the graph it is given

        return capture

    for name, original in originals.items():
        setattr(qat_utils, name, captured_once(original) if name == _PATTERN_EXPORT else only_present(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(qat_utils, name, original)


def _drop_unused_state(model: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the graph no longer reads, in place.

    ``convert_pt2e`` adds the INT8 weights as new attributes but leaves the float weights (and P's
    masks) registered: without this the state dict, and every size measured from it, would carry
    each weight twice.
    """
    used = {n.target for n in model.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]:
        if name not in used:
            owner, _, leaf = name.rpartition(".")
            delattr(model.get_submodule(owner) if owner else model, leaf)


@dataclass(frozen=True)
class Int8Layer:
    """One quantized conv/linear layer of an INT8 model (FX or PT2E), as sizes and proxies count it.

    Attributes:
        values: the integer weights (``torch.int8``), shaped like the float weight.
        qparams: number of weight scales (= zero points): output channels when per-channel, else 1.
        bias: the float bias (BN folded in), or None.
        state_keys: the model's state-dict keys this layer accounts for (weights, qparams, bias).
    """

    values: torch.Tensor
    qparams: int
    bias: torch.Tensor | None
    state_keys: frozenset[str]


def int8_layers(model: nn.Module) -> dict[str, Int8Layer]:
    """Every quantized conv/linear of a converted graph, by the layer's qualified name (``layer1.0.conv1``)."""
    state = set(model.state_dict())
    out: dict[str, Int8Layer] = {}
    for node in model.graph.nodes:  # type: ignore[union-attr]
        if node.op != "call_function" or str(node.target) != _DEQUANT_PER_CHANNEL:
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "get_attr"):
            continue
        values = _attr(model, source.target)
        if not (isinstance(values, torch.Tensor) and values.dtype == torch.int8):
            continue
        attrs = [a for a in node.args[1:3] if isinstance(a, torch.fx.Node) and a.op == "get_attr"]
        scales = _attr(model, attrs[0].target) if attrs else None
        users = [u for u in node.users if u.op == "call_function" and str(u.target) in _CONV_LINEAR_OPS]
        bias_node = users[0].args[2] if users and len(users[0].args) > 2 else None
        bias = None
        if isinstance(bias_node, torch.fx.Node) and bias_node.op == "get_attr":
            bias = _attr(model, bias_node.target)
            attrs.append(bias_node)
        fqn = _layer_of(users[0]) if users else None
        keys = frozenset(t for t in [source.target, *(a.target for a in attrs)] if t in state)
        out[_normalise(fqn) if fqn else str(source.target)] = Int8Layer(
            values=values, qparams=int(scales.numel()) if isinstance(scales, torch.Tensor) else 1,
            bias=bias if isinstance(bias, torch.Tensor) else None, state_keys=keys)
    return out


def int8_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The integer weights of every quantized conv/linear of a converted graph, by the layer's qualified name."""
    return {name: layer.values for name, layer in int8_layers(model).items()}


def _attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class CompiledInt8(nn.Module):
    """A converted graph under ``torch.compile`` (inductor, ``freezing``): oneDNN INT8 kernels on x86 CPUs.

    Inductor lowers the INT8 patterns (quantize -> conv -> dequantize) to packed oneDNN kernels only
    when it may treat the weights as constants, i.e. with its ``freezing`` option; set per call, not
    process-wide, so other compiled code is unaffected (``torch.compile(options={"freezing": True})``
    does not reach the freezing passes: measured on torch 2.14.1, compilation then fails in
    ``onednn.qconv_prepack``). ``torch._inductor.config.patch`` is the one private torch API pqd
    uses, here only; the test of :data:`API` names it. Each new input shape compiles once (tens of
    seconds): time the first call separately. Always runs without autograd.
    """

    def __init__(self, model: torch.fx.GraphModule) -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, backend="inductor", dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The INT8 logits of `x` from the compiled graph."""
        import torch._inductor.config as inductor_config

        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.compiled(x)


def compile_int8(model: torch.fx.GraphModule) -> CompiledInt8:
    """The deploy form of a converted graph on x86 CPUs: :class:`CompiledInt8` (compiles on first call)."""
    if not is_int8(model):
        raise ValueError("quantize.compile_int8: the model is not a converted PT2E INT8 graph (run convert first)")
    return CompiledInt8(model)


def _program(model: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> Any:
    """``torch.export`` of a converted graph with a dynamic batch dimension (its deploy program)."""
    example = torch.zeros(max(2, input_shape[0]), *input_shape[1:])
    return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))


#: Name of the JSON entry in a ``.pt2`` archive holding the quantization settings convert recorded.
SETTINGS_FILE = "pqd_quantize.json"


def save_program(model: torch.fx.GraphModule, path: Any, *, input_shape: tuple[int, ...] = (1, 3, 32, 32),
                 settings: dict[str, Any] | None = None) -> Any:
    """Atomically write a converted graph as a ``torch.export`` program (``.pt2``); returns the path.

    The archive holds the graph as serialized ATen operators and the plain tensors (INT8 weights,
    scales) as raw bytes: :func:`load_program` runs no pickled code. Batch size is free.
    `settings` (the backend and activation range convert recorded, ``quantize.int8_settings``) are
    stored beside it as JSON (:data:`SETTINGS_FILE`), so a loader can refuse a full-range model on a
    CPU that would compute it wrongly.
    """
    import json
    from pathlib import Path

    from .._atomic import atomic_path

    if not is_int8(model):
        raise ValueError("save_program: the model is not a converted PT2E INT8 graph (run convert first)")
    program = _program(model, input_shape)
    with atomic_path(path, keep_suffix=True) as tmp:
        torch.export.save(program, tmp, extra_files={SETTINGS_FILE: json.dumps(settings or {})})
    return Path(path)


class _TorchaoImportNotice(logging.Filter):
    """torchao 0.18 registers an Enum (``KernelPreference``) as a pytree constant on import, which torch
    2.14 logs as a deprecated registration (a ``W...`` line with a time and a process id in every notebook
    output). It is torchao's own call, not one pqd makes; only that line is dropped, only during the import."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is an Enum subclass and is now natively supported by torch.compile" not in record.getMessage()


def register_int8_ops() -> None:
    """Register the ``quantized_decomposed`` operators an INT8 program calls (quantize/dequantize per
    tensor/channel): torchao's PT2E modules register them on import. A fresh process must do this
    before ``torch.export.load`` of a converted graph, or loading fails on an unknown operator
    (measured: the latency worker's ``RuntimeError``)."""
    notice = _TorchaoImportNotice()
    logger = logging.getLogger("torch.utils._pytree")
    logger.addFilter(notice)
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  (registers the operators)
    finally:
        logger.removeFilter(notice)


def load_with_settings(path: Any) -> tuple[Any, dict[str, Any]]:
    """``(ExportedProgram, settings)`` of a ``.pt2`` file; settings as :func:`save_program` stored them (else {})."""
    import json

    register_int8_ops()
    extra = {SETTINGS_FILE: ""}
    with warnings.catch_warnings():
        # torch.export's archive reader warns for every program whose weights it reassembles (CPU weights
        # here, where its "not on CPU" caveat cannot apply): the same line under every load.
        warnings.filterwarnings("ignore", message=r"No complete tensor found in the group", category=UserWarning)
        program = torch.export.load(path, extra_files=extra)
    return program, json.loads(extra[SETTINGS_FILE] or "{}")


def read_program_settings(path: Any) -> dict[str, Any]:
    """The quantization settings :func:`save_program` stored (empty for a program saved without them)."""
    return load_with_settings(path)[1]


def load_program(path: Any) -> nn.Module:
    """The INT8 module saved by :func:`save_program` (CPU, inference only; compile it with :func:`compile_int8`)."""
    return load_with_settings(path)[0].module()


def write_onnx(model: torch.fx.GraphModule, path: Any, *, input_shape: tuple[int, ...] = (1, 3, 32, 32),
               input_name: str = "input", output_name: str = "logits") -> None:
    """Write a converted graph as ONNX with QuantizeLinear/DequantizeLinear pairs (QDQ) to `path`, batch dynamic.

    The raw export (torch's dynamo ONNX exporter on the same ``torch.export`` program as
    :func:`save_program`); ONNX Runtime and OpenVINO fuse the QDQ pairs into their INT8 kernels.
    Use :func:`pqd_lib.measure.onnx_runtime.export_qat_onnx`, which writes atomically and restores the
    7-bit activation range that ONNX's QuantizeLinear drops.
    """
    if not is_int8(model):
        raise ValueError("write_onnx: the model is not a converted PT2E INT8 graph (run convert first)")
    program = _program(model, input_shape)
    torch.onnx.export(program, (torch.zeros(*input_shape),), str(path), dynamo=True, external_data=False,
                      input_names=[input_name], output_names=[output_name])
