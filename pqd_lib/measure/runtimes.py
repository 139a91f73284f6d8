"""The runtimes a deploy form can be timed on: one registry, one way to get the call that is timed.

:func:`prepare` loads a model (a module, a pqd deploy file, an ONNX file) for one runtime, thread
count and batch size, and returns a :class:`Prepared`: the zero-argument call the protocols time,
the model's form and weight sparsity, and the seconds spent compiling (``torch.compile``'s first
call, an ONNX Runtime session, an OpenVINO compile) -- measured here, never inside timed runs.

==================  =====================================================================
runtime             what runs
==================  =====================================================================
torch-eager         the module as it is (FP32, or the FX-converted INT8 model of the reference engine)
torch-compile       ``torch.compile`` of it (``quantize.compile_for_cpu``; compiled by a first call before timing;
                    the default runtime of a PT2E INT8 graph, the default engine's deploy form)
torch-sparse-csr    every conv/linear as a CSR sparse x dense matmul (``sparse_kernels``)
onnxruntime         an ONNX file on ONNX Runtime's CPU provider (``onnx_runtime.session``)
openvino            an ONNX file on OpenVINO's CPU plugin (optional extra; ``openvino_runtime``)
==================  =====================================================================

Torch's thread count is process state: callers set it (``torch.set_num_threads``) around
:func:`prepare` and the timing; the ONNX Runtime and OpenVINO thread pools are set here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["RUNTIMES", "ONNX_RUNTIMES", "Prepared", "check_runtime", "default_runtime", "prepare", "inputs"]

RUNTIMES = ("torch-eager", "torch-compile", "torch-sparse-csr", "onnxruntime", "openvino")
#: Runtimes that read ONNX files.
ONNX_RUNTIMES = ("onnxruntime", "openvino")
_INPUT_SEED = 0


@dataclass(frozen=True)
class Prepared:
    """A model made ready to time: ``call()`` runs one batch; the rest describes it."""

    call: Callable[[], Any]
    form: str
    sparsity: float
    compile_s: float
    threads_observed: int


def check_runtime(runtime: str) -> str:
    """`runtime` itself, or a one-line ``ValueError`` listing the valid runtime names."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: {runtime!r} does not exist; choose one of {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        from .openvino_runtime import require

        require()  # one line naming the extra to install when it is missing
    return runtime


def default_runtime(source: Any) -> str:
    """``onnxruntime`` for an ``.onnx`` path; ``torch-compile`` for a PT2E INT8 graph (a module, or a ``.pt2``
    program saved with its settings), whose eager form is a slow reference (``quantize.deploys_compiled``);
    else ``torch-eager``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() == ".onnx":
            return "onnxruntime"
        if path.suffix.lower() == ".pt2" and path.is_file():
            from ..stages.quantize_pt2e import read_program_settings

            return "torch-compile" if read_program_settings(path).get("engine") == "pt2e" else "torch-eager"
        return "torch-eager"
    from ..stages.quantize import deploys_compiled

    return "torch-compile" if isinstance(source, nn.Module) and deploys_compiled(source) else "torch-eager"


def inputs(batch: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The seeded standard-normal batch every protocol times (values do not change dense/INT8 work)."""
    g = torch.Generator().manual_seed(_INPUT_SEED)
    return torch.randn(batch, *input_shape, generator=g)


def prepare(source: nn.Module | Path, runtime: str, *, threads: int, batch_size: int,
            input_shape: tuple[int, ...] = (3, 32, 32), device: str = "cpu", form: str | None = None,
            trusted: bool = False) -> Prepared:
    """Load `source` for `runtime` at `threads` x `batch_size`; return the timed call and what it is.

    Raises:
        ValueError: an unknown runtime (the message lists the valid ones); an ONNX runtime given a
            module.
        RuntimeUnavailable: ``openvino`` requested but not installed (names the extra).
        ArtifactError / OnnxError: a missing or unreadable file (the message names it).
    """
    check_runtime(runtime)
    x = inputs(batch_size, input_shape)
    if runtime in ONNX_RUNTIMES:
        from .onnx_runtime import onnx_form, onnx_sparsity

        if not isinstance(source, Path):
            raise ValueError(f"runtime {runtime!r} needs the path of an ONNX file, not a module")
        feed = x.numpy()
        if runtime == "onnxruntime":
            from .onnx_runtime import session

            start = time.perf_counter()
            sess = session(source, threads=threads)
            compile_s = time.perf_counter() - start
            named = {sess.get_inputs()[0].name: feed}

            def call() -> Any:
                return sess.run(None, named)
        else:
            from .openvino_runtime import compile_onnx

            request, compile_s = compile_onnx(source, threads=threads, batch_size=batch_size,
                                              input_shape=input_shape)

            def call() -> Any:
                return request.infer({0: feed})
        return Prepared(call, form or onnx_form(source), onnx_sparsity(source), compile_s, threads)

    from ..deploy import load_artifact, model_form
    from .proxies import weight_sparsity

    model = load_artifact(source, trusted=trusted) if isinstance(source, Path) else source
    sparsity, detected = weight_sparsity(model), form or model_form(model)
    with contextlib.suppress(NotImplementedError):  # a torch.export module is in eval mode already
        model = model.eval()
    start = time.perf_counter()
    if runtime == "torch-sparse-csr":
        from .sparse_kernels import to_csr_kernels

        model = to_csr_kernels(model)
    if device != "cpu":
        model = model.to(device)
    x = x.to(device)
    compile_s = 0.0
    if runtime == "torch-compile":
        from ..stages.quantize import compile_for_cpu

        model = compile_for_cpu(model)  # a PT2E INT8 graph needs inductor's freezing to reach INT8 kernels
        with torch.inference_mode():
            model(x)  # compiles: its time is the compile time, never a timed run
        compile_s = time.perf_counter() - start
    cuda = str(device).startswith("cuda")

    def call() -> Any:
        with torch.inference_mode():
            out = model(x)
        if cuda:
            torch.cuda.synchronize()
        return out

    return Prepared(call, detected, sparsity, compile_s, torch.get_num_threads())
