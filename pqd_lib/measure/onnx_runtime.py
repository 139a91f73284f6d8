"""ONNX Runtime as the peer deployment runtime: FP32 export, its own INT8, and our QAT model on it.

Three ONNX models per network, all timed by :func:`pqd_lib.measure.latency.measure_latency` under
the same protocol as PyTorch (``runtime="onnxruntime"``):

* FP32: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter; needs onnxscript).
* ORT INT8 (post-training): ONNX Runtime's static quantization of that FP32 graph
  (``onnxruntime.quantization.quantize_static``), QDQ format, per-channel INT8 weights, per-tensor
  *unsigned* INT8 activations, MinMax calibration on real, normalised training images fed through a
  ``CalibrationDataReader``, after ORT's recommended ``quant_pre_process``. Weights are signed
  (U8S8, the fast path of ORT's x86 kernels; signed activations measured 2.6x slower) only where
  the CPU has AVX-512 VNNI; elsewhere unsigned (U8U8), chosen by measured agreement: without VNNI
  ORT's U8S8 kernels add pairs of u8 x s8 products in saturating 16-bit registers, as its docs warn.
  Measured on AMD EPYC AVX2 (ResNet-18 width 0.125, embedded CIFAR-10, FP32 top-1 43.0 %, 1,000
  test images), integer kernels against the same file run op by op in float (``session(...,
  optimize=False)``), agreement / logit SQNR, and the model's top-1:
  U8S8 per-channel 84.2 % / 14.3 dB, 39.8 % (QOperator format the same); U8S8 per-tensor 93.4 % /
  19.8 dB, 42.2 %; U8S8 with ORT's ``reduce_range`` (7-bit weights) 99.7 % / 47.1 dB, 42.9 %;
  U8U8 99.9 % / 48.3 dB, 43.2 %; S8S8 99.8 % / 54.6 dB, 42.9 %.
* pqd INT8 (our QAT model on ORT), :func:`export_qat_onnx` for either Q engine. PT2E
  (``quantize.engine: pt2e``): the converted INT8 graph's ``torch.export`` program goes through the
  dynamo exporter as QDQ with INT8 weight constants. FX: the QAT-prepared model is lowered by torch.ao to its
  *decomposed reference* form (``_convert_to_reference_decomposed_fx``: BN folded into the conv
  weights, ``quantized_decomposed.quantize/dequantize_per_tensor|channel`` ops carrying the learned
  scales and zero points) and exported with the dynamo exporter, which writes them as
  QuantizeLinear/DequantizeLinear pairs -- the same QDQ layout ``quantize_static`` writes, so ORT
  fuses both into the same integer kernels. The weights' QuantizeLinear(+Clip) on float
  initializers are then folded into INT8 initializers (:func:`fold_weight_quantizers`), so the file
  holds INT8 weights (4x smaller) exactly equal to the PyTorch INT8 model's.

  What does not work (torch 2.14.1, checked): the TorchScript exporter (``dynamo=False``) on the
  prepared model stops at ``aten::fused_moving_avg_obs_fake_quant`` (the op of torch's default QAT
  fake-quant, "not supported" at any opset) and on the reference model at ``torch.qscheme``; the
  dynamo exporter on the prepared model fails in decomposition, and ``torch.export`` of the
  converted INT8 model fails on its packed-parameter script objects.

  With pqd's default activation range 0..127 (``reduce_range``) ONNX QuantizeLinear to uint8
  would saturate at 255 (the exporter drops the range), keeping activations above
  ``(127 - zero_point) * scale`` that fake-quant clips: :func:`clip_activation_range` adds an
  integer Clip to 0..127 after every activation QuantizeLinear, so the file computes what the QAT
  model computes (its ``pqd_reduce_range`` metadata records the range). Weights, scales and zero
  points are identical to the PyTorch INT8 model's (checked); the outputs still differ by the
  runtimes' requantisation rounding, as any two INT8 runtimes do. (The PyTorch INT8 model of
  ``convert`` keeps quint8 0..255 outputs too: on activations past the trained range it differs
  from fake-quant the same way; measured -1.3 dB on the test of this clip.) A full-range (0..255) QAT model saturates ORT's kernels
  on a CPU without VNNI just as torch's (measured on AMD EPYC AVX2, QAT of the model of the
  post-training figures above: ORT integer kernels vs the float run of the same file 84.4 % /
  14.4 dB with 0..255, 96.9 % / 31.8 dB with 0..127).

Sessions follow the latency protocol: ``intra_op_num_threads`` = the thread count being measured,
``inter_op_num_threads = 1``, sequential execution, all graph optimisations, CPU provider only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_path
from .. import hardware

__all__ = [
    "OnnxError",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_onnx",
    "export_qat_onnx",
    "fold_weight_quantizers",
    "clip_activation_range",
    "calibration_images",
    "quantize_static_onnx",
    "session",
    "predict",
    "read_metadata",
    "onnx_form",
    "onnx_sparsity",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class OnnxError(ValueError):
    """An ONNX file is missing or unreadable, or an export/quantization step failed; names the path."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter/quantizer chatter (stdout progress lines, deprecation warnings, info logs) for one call."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def _dynamic_batch() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _set_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    _strip_debug_info(model)
    _merge_metadata(model, metadata)
    onnx.save(model, str(path))


def _strip_debug_info(model: Any) -> None:
    """Drop per-node debug metadata (the dynamo exporter stores Python stack traces: ~20 % of a small file)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def _merge_metadata(model: Any, metadata: dict[str, Any]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text


def _atomic_onnx(write: Any, path: Path) -> Path:
    """Run ``write(tmp_path)`` then rename over `path`: readers never see half a file."""
    with atomic_path(path, keep_suffix=True) as tmp:
        write(tmp)
    return path


def export_onnx(model: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...] = (3, 32, 32),
                metadata: dict[str, Any] | None = None) -> Path:
    """Export an FP32 `model` (eval mode, CPU) to one self-contained ONNX file with a dynamic batch axis.

    Uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``); input ``"input"`` of shape
    ``(batch, *input_shape)``, output ``"logits"``. `metadata` (plain values) is stored in the
    model's ``metadata_props``, with ``pqd_form`` = ``"fp32"``.

    Raises:
        OnnxError: the export failed (the message names `path` and the exporter's error).
    """
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    example = (torch.zeros(2, *input_shape),)

    def write(tmp: Path) -> None:
        with _quiet(), torch.no_grad():
            torch.onnx.export(model, example, str(tmp), dynamo=True, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=_dynamic_batch())
        _set_metadata(tmp, {"pqd_form": "fp32", **(metadata or {})})

    try:
        return _atomic_onnx(write, path)
    except Exception as exc:
        raise OnnxError(f"{path}: ONNX export failed ({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip() and "This is step" not in line:
            return line.strip()[:300]
    return text[:300]


def export_qat_onnx(model: nn.Module, path: str | os.PathLike, *, input_shape: tuple[int, ...] = (3, 32, 32),
                    metadata: dict[str, Any] | None = None) -> Path:
    """Export pqd's QAT model to ONNX QDQ with its learned scales and INT8 weights, whichever the Q engine.

    `model` is a QAT-prepared (fake-quant) model of either engine, or a PT2E INT8 graph (the deploy
    form of ``quantize.engine: pt2e``); it is left untouched.

    * FX: a copy in eval mode is lowered with
      ``torch.ao.quantization.quantize_fx._convert_to_reference_decomposed_fx`` (BN folded, weights
      and activations as decomposed quantize/dequantize ops) and exported with the dynamo exporter;
      :func:`fold_weight_quantizers` then stores the weights as INT8 initializers.
    * PT2E: the INT8 graph (``quantize.convert`` of a prepared model) is exported from its
      ``torch.export`` program (:func:`pqd_lib.stages.quantize_pt2e.write_onnx`); its weights are
      INT8 constants already.

    Both then get :func:`clip_activation_range` when the activations are 7-bit (``reduce_range``).
    Metadata: ``pqd_form`` = ``"int8"``, ``pqd_source`` = ``"qat"``, ``pqd_engine`` (``"fx"`` or
    ``"pt2e"``), ``pqd_reduce_range`` (the activation range it was trained with).

    Raises:
        OnnxError: `model` is neither QAT-prepared nor a PT2E INT8 graph, or the lowering/export failed.
    """
    from ..stages import quantize as quantize_stage

    path = Path(path)
    pt2e_int8 = quantize_stage.deploys_compiled(model)  # a PT2E INT8 graph
    if not (pt2e_int8 or quantize_stage.is_fake_quant(model)):
        raise OnnxError(f"{path}: export_qat_onnx needs the QAT-prepared (fake-quant) model or a PT2E INT8 graph, "
                        "not an FP32 or FX-converted INT8 one")
    engine = quantize_stage.engine_of(model)
    if pt2e_int8:
        reduce_range = (quantize_stage.int8_settings(model) or {}).get("reduce_range")
    else:
        reduce_range = quantize_stage.activation_reduce_range(model)

    def write(tmp: Path) -> None:
        import onnx

        with _quiet(), torch.no_grad():
            if engine == "pt2e":
                from ..stages import quantize_pt2e

                int8 = model if pt2e_int8 else quantize_stage.convert(model)
                quantize_pt2e.write_onnx(int8, tmp, input_shape=(1, *input_shape), input_name=INPUT_NAME,
                                         output_name=OUTPUT_NAME)
            else:
                _export_fx_reference(model, tmp, input_shape)
        exported = onnx.load(str(tmp))
        _strip_debug_info(exported)
        fold_weight_quantizers(exported)
        if reduce_range:
            clip_activation_range(exported, 0, 127)
        _merge_metadata(exported, {"pqd_form": "int8", "pqd_source": "qat", "pqd_engine": engine,
                                   "pqd_reduce_range": reduce_range, **(metadata or {})})
        onnx.save(exported, str(tmp))

    try:
        return _atomic_onnx(write, path)
    except Exception as exc:
        raise OnnxError(f"{path}: QAT model export to ONNX failed ({type(exc).__name__}: {_first_line(exc)})") from exc


def _export_fx_reference(prepared: nn.Module, tmp: Path, input_shape: tuple[int, ...]) -> None:
    """The FX path of :func:`export_qat_onnx`: torch.ao's decomposed reference model, dynamo-exported to `tmp`."""
    from torch.ao.quantization import disable_observer
    from torch.ao.quantization.quantize_fx import _convert_to_reference_decomposed_fx

    twin = copy.deepcopy(prepared).cpu().to(memory_format=torch.contiguous_format).eval()
    # Lowering runs the weight fake-quants; an enabled observer would move the learned scales.
    twin.apply(disable_observer)
    reference = _convert_to_reference_decomposed_fx(twin)
    torch.onnx.export(reference, (torch.zeros(2, *input_shape),), str(tmp), dynamo=True, external_data=False,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=_dynamic_batch())


def _quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear on constants: round half to even, saturate to the zero point's type."""
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    info = np.iinfo(zero_point.dtype)
    # x * (1/scale) in float32, as torch's quantize_per_channel does: the same integers as the torch INT8 model.
    q = np.rint(x * (np.float32(1.0) / scale)) + zero_point.astype(np.int64)
    return np.clip(q, info.min, info.max).astype(zero_point.dtype)


def fold_weight_quantizers(model: Any) -> int:
    """Replace QuantizeLinear(+Clip) on constant float weights by INT8 initializers, in place; return the count.

    The dynamo export of a reference-quantized model quantizes float weights at run time
    (``QuantizeLinear(W) -> Clip -> DequantizeLinear``); ORT would fold this at session start, but
    the file would hold float weights. Folding here makes the file hold the INT8 weights, in the
    same ``initializer -> DequantizeLinear`` form as ``quantize_static`` writes.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}

    def const(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = constants.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    remove: list[Any] = []
    new_inits: list[Any] = []
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        w, scale, zp = (const(i) for i in node.input[:3])
        if w is None or scale is None or zp is None or w.ndim < 2:
            continue  # an activation quantizer, or a weight that is not a constant
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = _quantize_linear(w.astype(np.float32), scale.astype(np.float32), zp, axis if axis >= 0 else axis + w.ndim)
        out, drop = node.output[0], [node]
        users = consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Clip":
            clip = users[0]
            lo = const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
            hi = const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
            q = np.clip(q, lo if lo is not None else q.min(), hi if hi is not None else q.max()).astype(q.dtype)
            out = clip.output[0]
            drop.append(clip)
        new_inits.append(numpy_helper.from_array(q, name=out))
        remove.extend(drop)
        folded += 1
    for n in remove:
        graph.node.remove(n)
    graph.initializer.extend(new_inits)
    # Float weights now unused (the exporter keeps them as initializers of the removed nodes).
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for t in list(graph.initializer):
        if t.name not in used:
            graph.initializer.remove(t)
    return folded


def clip_activation_range(model: Any, quant_min: int, quant_max: int) -> int:
    """Clip every activation QuantizeLinear's uint8 output to ``quant_min..quant_max``, in place; return the count.

    ONNX's QuantizeLinear has no range of its own: to uint8 it saturates at 0..255. A QAT model with
    7-bit activations (``reduce_range``: 0..127) was trained with fake-quant that clamps at 127, and
    the exporter drops that range, so on inputs that drive an activation past its trained range the
    file computed something else than the model (measured: 5.6 dB logit SQNR against fake-quant).
    An integer ``Clip`` (opset 12+ takes uint8) right after the QuantizeLinear restores the clamp
    exactly, and keeps ONNX Runtime's QDQ fusion: its node-unit selectors match ``DQ -> op -> Q`` and
    a ``DequantizeLinear`` of any producer, so the convolution still runs as ``QLinearConv`` and the
    clip is one uint8 elementwise pass per activation (checked: the optimized graph keeps every
    QLinearConv; OpenVINO keeps its u8 convolutions). A float ``Clip`` *before* the QuantizeLinear
    would be exact too but would sit between the convolution and its Q, which unfuses it.
    Weight QuantizeLinears (folded into INT8 initializers by :func:`fold_weight_quantizers`) are left alone.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    constant = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    inits = {t.name: t for t in graph.initializer}
    low, high = "pqd_activation_qmin", "pqd_activation_qmax"
    clipped = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in constant or len(node.input) < 3:
            continue
        zero_point = inits.get(node.input[2])
        if zero_point is None or zero_point.data_type != TensorProto.UINT8:
            continue  # only uint8 activations have the 0..255 vs 0..127 gap
        out = node.output[0]
        raw = f"{out}_unclipped"
        node.output[0] = raw
        graph.node.insert(list(graph.node).index(node) + 1,
                          helper.make_node("Clip", [raw, low, high], [out], name=f"{node.name or out}_activation_range"))
        clipped += 1
    if clipped and low not in inits:
        graph.initializer.extend([numpy_helper.from_array(np.array(quant_min, dtype=np.uint8), name=low),
                                  numpy_helper.from_array(np.array(quant_max, dtype=np.uint8), name=high)])
    return clipped


def calibration_images(data: Any, n: int) -> np.ndarray:
    """The first `n` training images of a :class:`~pqd_lib.data.DataSplits`, normalised, as float32 NCHW.

    The first `n` (not a random draw) so that calibration is the same on every run; CIFAR's
    training order is already shuffled across classes.
    """
    from .. import data as data_mod

    x = data.x_train[:n].cpu()
    return data_mod.normalize(x, data.mean, data.std).numpy().astype(np.float32)


def quantize_static_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: Any, *,
                         batch_size: int = 32, per_channel: bool = True, activation_type: str = "QUInt8",
                         weight_type: str | None = None, metadata: dict[str, Any] | None = None) -> Path:
    """ONNX Runtime's own post-training static INT8 of an FP32 ONNX model (QDQ, per-channel), calibrated on images.

    Args:
        fp32_path: from :func:`export_onnx`.
        out_path: where the INT8 model goes.
        calibration: normalised float images (N, C, H, W) (tensor or array), e.g.
            :func:`calibration_images` with ``MeasureConfig.calibration_images`` images.
        batch_size: images per calibration batch fed by the ``CalibrationDataReader``.
        per_channel, activation_type, weight_type: ``quantize_static`` settings; the defaults are
            per-channel weights, unsigned activations, and signed weights (U8S8, the fast x86
            combination) where the CPU has AVX-512 VNNI, unsigned (U8U8) elsewhere, where U8S8
            saturates (see the module text). The types used are stored in the file's metadata.

    Raises:
        OnnxError: missing input file, no calibration images, or quantization failed.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise OnnxError(f"{fp32_path}: FP32 ONNX model not found")
    if weight_type is None:
        weight_type = "QInt8" if hardware.has_int8_vnni() else "QUInt8"
    images = calibration.detach().cpu().numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    if images.ndim != 4 or len(images) == 0:
        raise OnnxError(f"{out_path}: calibration needs normalised images (N, C, H, W), got shape {images.shape}")
    images = images.astype(np.float32)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([images[i:i + batch_size] for i in range(0, len(images), batch_size)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    def write(tmp: Path) -> None:
        import onnx

        with tempfile.TemporaryDirectory() as work, _quiet():
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre))
            quantize_static(str(pre), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=getattr(QuantType, activation_type),
                            weight_type=getattr(QuantType, weight_type))
        model = onnx.load(str(tmp))
        _merge_metadata(model, {"pqd_form": "int8", "pqd_source": "ort-static",
                                "pqd_calibration_images": len(images), "pqd_activation_type": activation_type,
                                "pqd_weight_type": weight_type, **(metadata or {})})
        onnx.save(model, str(tmp))

    try:
        return _atomic_onnx(write, out_path)
    except Exception as exc:
        raise OnnxError(f"{out_path}: ONNX Runtime static quantization failed "
                        f"({type(exc).__name__}: {_first_line(exc)})") from exc


def session(path: str | os.PathLike, *, threads: int = 1, optimize: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU with the protocol's options.

    ``intra_op_num_threads = threads`` (the measured thread count), ``inter_op_num_threads = 1``,
    sequential execution, all graph optimisations (ORT's default level, which fuses QDQ pairs into
    integer kernels). ``optimize=False`` disables them: every QuantizeLinear, DequantizeLinear and
    float op then runs as written -- the exact float simulation of the INT8 graph that its integer
    kernels are checked against (never timed).

    Raises:
        ValueError: ``threads <= 0``.
        OnnxError: the file is missing or not a loadable ONNX model (the message names it).
    """
    import onnxruntime as ort

    if isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0:
        raise ValueError(f"threads: {threads!r} must be an integer >= 1")
    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"{path}: ONNX model file not found")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer otherwise
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise OnnxError(f"{path}: not a loadable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None


def predict(model: Any, x: Any, *, batch_size: int = 256, threads: int | None = None) -> np.ndarray:
    """Logits of an ONNX model (path or session) on float images `x` (N, C, H, W), in batches."""
    sess = model if hasattr(model, "run") else session(model, threads=threads or (os.cpu_count() or 1))
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    x = x.astype(np.float32)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (values as stored: strings, JSON for non-strings).

    Raises:
        OnnxError: missing or unreadable file.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxError(f"{path}: ONNX model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise OnnxError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {_first_line(exc)})") from None
    return {p.key: p.value for p in model.metadata_props}


def onnx_form(path: str | os.PathLike) -> str:
    """``"int8"`` or ``"fp32"`` (``"fp32-sparse"`` when >= 1 % of its weights are zero), from metadata or the graph."""
    import onnx

    meta = read_metadata(path)
    form = meta.get("pqd_form")
    if form is None:
        model = onnx.load(str(path))
        quant_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"}
        form = "int8" if any(n.op_type in quant_ops for n in model.graph.node) else "fp32"
    if form == "fp32" and onnx_sparsity(path) >= 0.01:
        return "fp32-sparse"
    return form


def onnx_sparsity(path: str | os.PathLike) -> float:
    """Fraction of exact zeros over the weight initializers (rank >= 2) of an ONNX model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = zeros = 0
    for t in model.graph.initializer:
        if len(t.dims) >= 2:
            a = numpy_helper.to_array(t)
            total += a.size
            zeros += int(np.count_nonzero(a == 0))
    return zeros / total if total else 0.0
