"""OpenVINO as a second peer runtime and as a deploy target for pqd's own QAT model (optional extra).

OpenVINO reads ONNX files directly, so it runs the same files ONNX Runtime does, with no conversion
step and no further dependency:

* **pqd INT8 on OpenVINO**: the QDQ ONNX that :func:`pqd_lib.measure.onnx_runtime.export_qat_onnx`
  writes (learned scales, INT8 weights). OpenVINO turns each QuantizeLinear/DequantizeLinear pair
  into a FakeQuantize and its low-precision transformations run the convolutions in INT8.
* **Peer INT8 on OpenVINO**: the post-training INT8 of the FP32 model. OpenVINO's own PTQ tool is
  NNCF (``nncf.quantize``); it is a large dependency (networkx, scikit-learn, jsonschema, rich,
  ...) for what, at deploy time, is the same thing: a QDQ graph of calibrated scales. pqd feeds
  OpenVINO the QDQ model of ONNX Runtime's static PTQ (per-channel weights, per-tensor activations,
  calibrated on real images) instead: the same calibration for both peers, so a latency difference
  between ORT and OpenVINO is the runtime's, not the calibration's.
* FP32: the FP32 ONNX export.

Settings (the latency protocol's): ``INFERENCE_NUM_THREADS`` = the thread count measured,
``NUM_STREAMS = 1`` and ``PERFORMANCE_HINT = LATENCY`` (one request at a time), the input reshaped
to the static batch being timed before compiling (OpenVINO's dynamic-shape path is slower and is
not how a latency-bound deployment compiles), ``ENABLE_CPU_PINNING`` off (the protocol pins the
process itself; OpenVINO's own pinning would fight it). Compile time is measured and recorded,
never inside timed runs.

Installed with ``pip install 'pqd[openvino]'``; when it is missing, every entry point raises
:class:`RuntimeUnavailable` with that one line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXTRA", "RuntimeUnavailable", "require", "version", "compile_onnx", "predict"]

#: The optional-dependency group of pyproject.toml that installs OpenVINO.
EXTRA = "openvino"


class RuntimeUnavailable(ImportError):
    """A runtime that was asked for is not installed; the message names the extra that installs it."""


def require() -> Any:
    """The ``openvino`` module, or :class:`RuntimeUnavailable` naming the extra to install."""
    try:
        import openvino
    except ImportError:
        raise RuntimeUnavailable(f"runtime 'openvino' is not installed; install it with: pip install 'pqd[{EXTRA}]'") \
            from None
    return openvino


def version() -> str | None:
    """OpenVINO's version, or None when it is not installed (for hardware records)."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def compile_onnx(path: str | os.PathLike, *, threads: int, batch_size: int,
                 input_shape: tuple[int, ...] = (3, 32, 32)) -> tuple[Any, float]:
    """Read an ONNX file, fix its batch to `batch_size`, compile it for the CPU; return (request, compile seconds).

    The returned infer request runs one batch per ``request.infer({0: x})``.

    Raises:
        RuntimeUnavailable: OpenVINO is not installed.
        ValueError: ``threads`` or ``batch_size`` < 1, or a missing file (the message names it).
    """
    ov = require()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: {threads!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} must be an integer >= 1")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX model file not found")
    import openvino.properties as props
    import openvino.properties.hint as hints

    start = time.perf_counter()
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0].get_any_name(): [batch_size, *input_shape]})
    config = {props.inference_num_threads: threads, props.streams.num: 1,
              hints.performance_mode: hints.PerformanceMode.LATENCY, hints.enable_cpu_pinning: False}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return request, time.perf_counter() - start


def predict(path: str | os.PathLike, x: Any, *, threads: int = 1, batch_size: int = 100) -> np.ndarray:
    """Logits of an ONNX model run by OpenVINO on float images `x` (N, C, H, W), in batches."""
    x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    outs = []
    request = None
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        if request is None or len(chunk) != batch_size:
            request, _ = compile_onnx(path, threads=threads, batch_size=len(chunk), input_shape=tuple(x.shape[1:]))
        outs.append(np.array(request.infer({0: chunk})[0]))
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)
