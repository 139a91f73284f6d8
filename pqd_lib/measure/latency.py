"""The latency protocol: how every runtime figure of pqd is measured.

The paper's message is "judge compression by measured runtime, not proxies" (Zhou & Shen 2026), but
it does not say how latency was measured. This module is that statement; every field comes from
:class:`~pqd_lib.config.MeasureConfig` (defaults in brackets):

1. **Isolation** [``isolate=True``]: each model is timed in a freshly spawned Python process
   (``python -m pqd_lib.measure.latency <artifact> --json ...``) that loads the saved artifact, so
   the allocator, thread pools and caches of training (or of the previous model) do not leak in.
   One process per model and runtime; thread counts and batch sizes are swept inside it.
   ``isolate=False`` times in the calling process (fast tests, notebooks).
2. **Mode**: eval mode, under ``torch.inference_mode()``; inputs are seeded standard-normal images
   (values do not change the work done by dense or INT8 kernels).
3. **Threads** [``threads=None`` -> ``[1, os.cpu_count()]``]: ``torch.set_num_threads(n)`` for each
   n; for ONNX Runtime ``intra_op_num_threads = n``, ``inter_op_num_threads = 1``, sequential.
4. **Batch sizes** [``(1, 32)``].
5. **Warm-up** [``warmup=50``] untimed runs (oneDNN/fbgemm primitive creation, caches, allocator),
   then **timed runs** until *both* ``min_runs`` [300] runs and ``min_seconds`` [2.0] seconds are
   reached. Each run is timed alone with ``time.perf_counter`` (CUDA: synchronised).
6. **Statistics**: median (p50), p90, p99 (numpy's linear-interpolation percentiles), mean, sample
   standard deviation and the number of runs, in milliseconds, and images/s = batch / p50.
7. **Record**: every result carries the machine (CPU model, cores, AVX2/AVX-512/VNNI/BF16/AMX
   flags), torch / ONNX Runtime versions, the quantized engine, threads, batch size, runtime
   (``torch-eager``, ``torch-compile``, ``torch-sparse-csr``, ``onnxruntime``) and model form
   (``fp32``, ``fp32-sparse``, ``int8``), plus the child's pid and observed thread count and the
   1-minute load average when timing began (``load_avg_1m``): other processes distort timings,
   and with every core in use an OpenMP barrier waiting for a busy core costs tens of times.
8. **Failures** (an operator without an INT8 kernel, a crashed or hung child, a missing file) become
   an ``error`` field in the record, never a crashed sweep. Bad arguments (threads <= 0, an INT8
   model on CUDA) raise ``ValueError`` at once.

Artifacts the child loads: a pqd deploy file (``pqd_lib.deploy``: plain tensors read with
``weights_only=True``, the module rebuilt from its architecture -- FP32 and FX-converted INT8; the
format pipelines write), an ONNX file, or a ``torch.export`` program (``.pt2``). ``torch.export``
is no general answer: it fails on the FX-converted INT8 model (its packed weights are TorchScript
objects without ``__obj_flatten__``), and for FP32 the exported program is a different, slower
program than the eager module (ResNet-18 CIFAR, 1 thread: 20.7-28.7 ms vs 17.6-17.8 ms at batch 1).
A module given without an architecture name is therefore handed to its child as the pickled module
itself, in a private temporary directory (the child runs the very same eager code).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import MeasureConfig
from .._atomic import atomic_path
from .hardware import hardware_info

__all__ = [
    "RUNTIMES",
    "FORMS",
    "ArtifactError",
    "time_runs",
    "summarize",
    "measure_callable",
    "resolve_threads",
    "model_form",
    "artifact_form",
    "save_artifact",
    "load_artifact",
    "measure_latency",
    "main",
]

RUNTIMES = ("torch-eager", "torch-compile", "torch-sparse-csr", "onnxruntime")
FORMS = ("fp32", "fp32-sparse", "int8")
#: An FP32 model with at least this fraction of exactly-zero conv/linear weights is "fp32-sparse"
#: (freshly initialised weights have none; any pruning gives far more).
SPARSE_FORM_THRESHOLD = 0.01
# The child prints its records on one stdout line after this tag; other output (warnings) is ignored.
_RESULT_TAG = "PQD-LATENCY-RECORDS "
_INPUT_SEED = 0


class ArtifactError(ValueError):
    """A model artifact is missing, unreadable or of an unknown kind; the message names the path."""


# ---------------------------------------------------------------------------
# The statistics: pure functions with an injectable clock
# ---------------------------------------------------------------------------
def time_runs(fn: Callable[[], Any], *, warmup: int, min_runs: int, min_seconds: float,
              timer: Callable[[], float] = time.perf_counter) -> list[float]:
    """Protocol steps 5: `warmup` untimed calls of `fn`, then timed calls until both bounds are met.

    Each call is timed alone (``timer()`` before and after); timing stops after the first call at
    which at least `min_runs` calls were timed *and* at least `min_seconds` have passed since the
    first timed call began. Returns the durations in seconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = timer()
    while True:
        t0 = timer()
        fn()
        t1 = timer()
        times.append(t1 - t0)
        if len(times) >= min_runs and t1 - start >= min_seconds:
            return times


def summarize(times_s: Sequence[float], batch_size: int = 1) -> dict[str, Any]:
    """Protocol step 6: p50/p90/p99/mean/std (ms, numpy linear percentiles; std with ddof=1), runs, images/s.

    Returns ``latency_ms_p50``, ``latency_ms_p90``, ``latency_ms_p99``, ``latency_ms_mean``,
    ``latency_ms_std``, ``runs``, ``timed_seconds`` (sum of the timed runs) and ``images_per_s``
    (``batch_size`` / p50).
    """
    if len(times_s) == 0:
        raise ValueError("summarize: no timed runs")
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p99": p99,
        "latency_ms_mean": float(ms.mean()),
        "latency_ms_std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "runs": int(len(ms)),
        "timed_seconds": float(ms.sum() / 1e3),
        "images_per_s": float(batch_size * 1e3 / p50) if p50 > 0 else float("inf"),
    }


def measure_callable(fn: Callable[[], Any], *, warmup: int, min_runs: int, min_seconds: float,
                     batch_size: int = 1, timer: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """:func:`time_runs` then :func:`summarize`: the protocol's statistics of any callable."""
    times = time_runs(fn, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, timer=timer)
    return summarize(times, batch_size)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------
def resolve_threads(threads: Sequence[int] | int | None) -> list[int]:
    """The thread counts to time: None -> ``[1, os.cpu_count()]`` (one entry when that is 1).

    Raises:
        ValueError: a count that is not an integer >= 1 (the message names ``threads``).
    """
    if threads is None:
        cores = os.cpu_count() or 1
        return [1] if cores == 1 else [1, cores]
    values = [threads] if isinstance(threads, int) else list(threads)
    if not values:
        raise ValueError("threads: empty; give thread counts >= 1 (or None for [1, all cores])")
    for n in values:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"threads: {n!r} is not allowed; thread counts must be integers >= 1")
    return [int(n) for n in values]


def _check_positive(name: str, values: Sequence[Any], minimum: int = 1) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{name}: {v!r} is not allowed; must be an integer >= {minimum}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name}: empty")
    return out


def _validated(cfg: MeasureConfig) -> MeasureConfig:
    resolve_threads(cfg.threads)
    _check_positive("batch_sizes", cfg.batch_sizes)
    _check_positive("warmup", [cfg.warmup], minimum=0)
    _check_positive("min_runs", [cfg.min_runs])
    if not cfg.min_seconds >= 0:
        raise ValueError(f"min_seconds: {cfg.min_seconds!r} must be >= 0")
    return cfg


def _int8_on_cuda(device: str) -> ValueError:
    return ValueError(f"device: {device!r}: INT8 runs on CPU (x86/fbgemm kernels); PyTorch has no CUDA kernels for "
                      "the FX-converted INT8 model. Measure it with device='cpu'.")


# ---------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------
def _is_int8(model: nn.Module) -> bool:
    from ..stages.quantize import is_int8  # the one home of INT8 knowledge (FX and PT2E models)

    return is_int8(model)


def model_form(model: nn.Module) -> str:
    """``"int8"`` (quantized conv/linear weights), ``"fp32-sparse"`` (>= 1 % exact-zero weights) or ``"fp32"``."""
    from .proxies import weight_sparsity

    if _is_int8(model):
        return "int8"
    return "fp32-sparse" if weight_sparsity(model) >= SPARSE_FORM_THRESHOLD else "fp32"


def save_artifact(model: nn.Module, path: str | os.PathLike, *, arch: dict[str, Any] | None = None,
                  backend: str | None = None, reduce_range: bool | None = None,
                  input_shape: tuple[int, ...] = (3, 32, 32)) -> Path:
    """Save `model` so that a latency child can load it; return the path actually written.

    * With `arch` (``{"name", "num_classes", "width"}`` of ``pqd_lib.models``), or a model carrying
      ``pqd_arch``: a pqd deploy file (``pqd_lib.deploy.save_deploy``), FP32 or INT8. For INT8,
      `backend`/`reduce_range` are those it was quantized with (default: what
      ``stages.quantize.convert`` recorded on the model; the deploy file stores them).
    * FP32 without an architecture name: a ``torch.export`` program; the suffix becomes ``.pt2``.
      It loads anywhere without pickled code, but it is *not* the same program as the eager module:
      measured 15-60 % slower than eager for ResNet-18 CIFAR (decomposed aten graph), so
      :func:`measure_latency` does not use it for the modules it is given (see there).

    Raises:
        ValueError: an INT8 model without `arch` (it can only be rebuilt from its architecture).
    """
    path = Path(path)
    arch = arch or getattr(model, "pqd_arch", None)
    int8 = _is_int8(model)
    if arch is not None:
        from .. import deploy

        return deploy.save_deploy(model, path, arch=dict(arch), form="int8" if int8 else "fp32",
                                  backend=backend, reduce_range=reduce_range,
                                  input_shape=(1, *input_shape))
    if int8:
        raise ValueError("save_artifact: an INT8 model is rebuilt from its architecture in the child; pass "
                         "arch={'name', 'num_classes', 'width'} (torch.export cannot save FX-converted INT8 models)")
    path = path.with_suffix(".pt2")
    model = model.cpu().eval()
    with torch.no_grad():
        # Batch 2 in the example: with 1 the exporter specialises the batch axis to a constant.
        program = torch.export.export(model, (torch.zeros(2, *input_shape),),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    with atomic_path(path, keep_suffix=True) as tmp:  # torch.export wants the .pt2 suffix
        torch.export.save(program, str(tmp))
    return path


_PICKLE_SUFFIX = ".module.pt"


def _artifact_kind(path: Path) -> str:
    if path.name.endswith(_PICKLE_SUFFIX):
        return "pickle"
    return {".onnx": "onnx", ".pt2": "export"}.get(path.suffix.lower(), "deploy")


def _save_pickled_module(model: nn.Module, path: Path) -> Path:
    """The whole module, code references included (``torch.save(model)``), for this run's child only.

    The faithful artifact for a module that cannot be rebuilt from a registry name: the child runs
    the very same eager module. Written into a private temporary directory and loaded only by a child
    told so (``--trusted-pickle``); user-supplied files are never unpickled.
    """
    torch.save(model.cpu().eval(), path)
    return path


def artifact_form(path: str | os.PathLike) -> str:
    """The form of a saved artifact without building the model (reads metadata / the state dict).

    Raises:
        ArtifactError: missing or unreadable file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    kind = _artifact_kind(path)
    if kind == "onnx":
        from .onnx_runtime import OnnxError, onnx_form

        try:
            return onnx_form(path)
        except OnnxError as exc:
            raise ArtifactError(str(exc)) from None
    if kind in ("export", "pickle"):
        # A path reaching here comes from the caller: a whole-module pickle is refused (it would
        # run code); only measure_latency's own temporary pickles are loaded, in its child process.
        return model_form(load_artifact(path))
    from .. import deploy

    try:
        info = deploy.read_deploy_info(path)
    except deploy.DeployError as exc:
        raise ArtifactError(str(exc)) from None
    return info["form"]


def load_artifact(path: str | os.PathLike, *, trusted: bool = False) -> nn.Module:
    """Load a torch artifact written by :func:`save_artifact` (CPU, eval mode); no pickled code runs.

    `trusted` allows the whole-module pickle (``*.module.pt``) that :func:`measure_latency` writes
    for its own child process; never set it for files from elsewhere.

    Raises:
        ArtifactError: missing file, corrupt file, an untrusted pickle, or an ONNX file (run by ONNX
            Runtime, not torch); the message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    kind = _artifact_kind(path)
    if kind == "onnx":
        raise ArtifactError(f"{path}: an ONNX model runs with runtime='onnxruntime', not in torch")
    if kind == "pickle":
        if not trusted:
            raise ArtifactError(f"{path}: a pickled module runs code when loaded; only measure_latency's own "
                                "temporary files are loaded this way")
        try:
            return torch.load(path, map_location="cpu", weights_only=False).eval()
        except Exception as exc:
            raise ArtifactError(f"{path}: could not load the pickled module ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if kind == "export":
        try:
            # Exported in eval mode; the unlifted module refuses .eval()/.train() calls.
            return torch.export.load(str(path)).module()
        except Exception as exc:
            raise ArtifactError(f"{path}: not a readable torch.export program ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    from .. import deploy

    try:
        return deploy.load_deploy(path)
    except deploy.DeployError as exc:
        raise ArtifactError(str(exc)) from None


# ---------------------------------------------------------------------------
# Timing one model in this process
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(batch: int, input_shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(_INPUT_SEED)
    return torch.randn(batch, *input_shape, generator=g)


def _torch_runner(model: nn.Module, runtime: str, device: str) -> Callable[[torch.Tensor], Callable[[], Any]]:
    """For one loaded model: a function of the input returning the zero-argument call that is timed."""
    with contextlib.suppress(NotImplementedError):  # a torch.export module is in eval mode already
        model = model.eval()
    if runtime == "torch-sparse-csr":
        from .sparse_kernels import to_csr_kernels

        model = to_csr_kernels(model)
    if device != "cpu":
        model = model.to(device)
    if runtime == "torch-compile":
        model = torch.compile(model)  # compiled by the first call: the warm-up pays for it
    cuda = device.startswith("cuda")

    def bind(x: torch.Tensor) -> Callable[[], Any]:
        x = x.to(device)
        if cuda:
            def call() -> Any:
                out = model(x)
                torch.cuda.synchronize()
                return out
            return call
        return lambda: model(x)

    return bind


def _measure_here(source: nn.Module | Path, *, runtime: str, device: str, cfg: MeasureConfig,
                  input_shape: tuple[int, ...], form: str | None, isolated: bool, trusted: bool = False,
                  timer: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Time `source` in this process for every (threads, batch); one record each, errors recorded."""
    threads = resolve_threads(cfg.threads)
    base: dict[str, Any] = {"runtime": runtime, "device": device, "isolated": isolated, "pid": os.getpid(),
                            "artifact": str(source) if isinstance(source, Path) else None,
                            "input_shape": "x".join(str(s) for s in input_shape), "warmup": cfg.warmup,
                            "min_runs": cfg.min_runs, "min_seconds": cfg.min_seconds, "form": form,
                            "model_sparsity": None}
    records: list[dict[str, Any]] = []

    def fail(message: str, pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        hw = hardware_info()
        return [{**base, "threads": n, "batch_size": b, **hw, "error": message} for n, b in pairs]

    pairs = [(n, b) for n in threads for b in cfg.batch_sizes]
    # The caller's module is put in eval mode for timing and given back in the mode it came in.
    was_training = source.training if isinstance(source, nn.Module) else None
    try:
        if runtime == "onnxruntime":
            from .onnx_runtime import onnx_form, onnx_sparsity, session

            if not isinstance(source, Path):
                raise ArtifactError("runtime 'onnxruntime' needs the path of an ONNX file")
            session(source, threads=1)  # fails early, naming the path, for a missing or corrupt file
            base["form"] = form or onnx_form(source)
            base["model_sparsity"] = onnx_sparsity(source)
            model = None
        else:
            model = load_artifact(source, trusted=trusted) if isinstance(source, Path) else source
            from .proxies import weight_sparsity

            base["form"] = form or model_form(model)
            base["model_sparsity"] = weight_sparsity(model)
            bind = _torch_runner(model, runtime, device)
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {exc}", pairs)

    for n in threads:
        sess = None
        for b in cfg.batch_sizes:
            record = {**base, "threads": n, "batch_size": b}
            # Other processes on the machine distort timings (badly with all cores in use): say so.
            record["load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            try:
                if runtime == "onnxruntime":
                    if sess is None:
                        sess = session(source, threads=n)
                    feed = {sess.get_inputs()[0].name: _inputs(b, input_shape).numpy()}
                    stats = measure_callable(lambda: sess.run(None, feed), warmup=cfg.warmup, min_runs=cfg.min_runs,
                                             min_seconds=cfg.min_seconds, batch_size=b, timer=timer)
                    observed = n  # ORT's pool size is the option we set; it cannot be read back
                else:
                    with _torch_threads(n), torch.inference_mode():
                        observed = torch.get_num_threads()
                        stats = measure_callable(bind(_inputs(b, input_shape)), warmup=cfg.warmup,
                                                 min_runs=cfg.min_runs, min_seconds=cfg.min_seconds,
                                                 batch_size=b, timer=timer)
                record.update(stats)
                record["threads_observed"] = observed
                record["error"] = None
            except Exception as exc:  # an operator without a kernel, out of memory, a compile failure
                record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"
            record.update(hardware_info())
            records.append(record)
    if was_training is not None:
        source.train(was_training)
    return records


# ---------------------------------------------------------------------------
# The public function
# ---------------------------------------------------------------------------
def measure_latency(model: nn.Module | str | os.PathLike, cfg: MeasureConfig | None = None, *,
                    runtime: str | None = None, device: str = "cpu", arch: dict[str, Any] | None = None,
                    form: str | None = None, input_shape: tuple[int, ...] = (3, 32, 32),
                    timeout_s: float | None = None, **overrides: Any) -> list[dict[str, Any]]:
    """Time one model under the latency protocol (module docstring); return one record per runtime x threads x batch.

    The same function measures FP32, pruned FP32 (dense kernels: ``torch-eager``; CSR kernels:
    ``torch-sparse-csr``), INT8 (the FX-converted model, ``torch-eager``) and ONNX models
    (``onnxruntime``); with ``compile=True`` a ``torch-compile`` record follows each eager one.

    Args:
        model: an ``nn.Module``, or the path of an artifact: a pqd deploy file, a ``.pt2`` export,
            or a ``.onnx`` file. An isolated module is first saved to a temporary file: a deploy
            file when `arch` (or ``model.pqd_arch``) names its architecture, else the pickled module
            itself (its class must be importable in a fresh process).
        cfg: the protocol; None = ``MeasureConfig()`` defaults.
        runtime: ``torch-eager`` (default; ``onnxruntime`` for ``.onnx`` paths), ``torch-sparse-csr``,
            ``torch-compile`` or ``onnxruntime``.
        device: ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (FP32 torch runtimes only).
        arch: ``{"name", "num_classes", "width"}`` of a registry model, to save the module as a deploy file.
        form: override the detected form (``fp32``, ``fp32-sparse``, ``int8``).
        input_shape: one image's shape (C, H, W).
        timeout_s: limit per child process; None = 10 minutes plus 4 x the protocol's minimum time
            per configuration. A child past it is killed and its records get an ``error``.
        overrides: any :class:`MeasureConfig` field, e.g. ``threads=(1,)``, ``isolate=False``,
            ``compile=True``, ``min_runs=20``.

    Returns:
        A list of flat dicts (see module docstring, step 7); failed measurements have ``error`` set
        and no timing fields.

    Raises:
        ValueError: threads <= 0 (or another bad protocol value), an unknown runtime or form, an
            INT8 model or ONNX runtime on a CUDA device, an unknown override.
    """
    cfg = cfg if cfg is not None else MeasureConfig()
    known = {f.name for f in dataclasses.fields(MeasureConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"measure_latency: unknown option(s) {', '.join(unknown)}; MeasureConfig fields: "
                         f"{', '.join(sorted(known))}")
    cfg = _validated(dataclasses.replace(cfg, **overrides))
    is_path = not isinstance(model, nn.Module)
    path = Path(model) if is_path else None
    if runtime is None:
        runtime = "onnxruntime" if path is not None and path.suffix.lower() == ".onnx" else "torch-eager"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime: {runtime!r} is not allowed; choose one of {', '.join(RUNTIMES)}")
    if form is not None and form not in FORMS:
        raise ValueError(f"form: {form!r} is not allowed; choose one of {', '.join(FORMS)}")
    if device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"device: {device!r} is not allowed; use 'cpu' or 'cuda[:N]'")
    cuda = str(device).startswith("cuda")
    if cuda and runtime == "onnxruntime":
        raise ValueError(f"device: {device!r}: ONNX Runtime is measured with its CPU execution provider only")
    if cuda and runtime == "torch-sparse-csr":
        raise ValueError(f"device: {device!r}: the CSR kernels measured here are the CPU ones")
    if cuda:
        detected = form
        if detected is None:
            try:
                detected = model_form(model) if not is_path else artifact_form(path)
            except ArtifactError:
                detected = None  # reported as an error record below
        if detected == "int8":
            raise _int8_on_cuda(device)
    runtimes = [runtime] + (["torch-compile"] if cfg.compile and runtime == "torch-eager" else [])

    if not cfg.isolate:
        source = path if is_path else model
        return [r for rt in runtimes
                for r in _measure_here(source, runtime=rt, device=device, cfg=cfg, input_shape=input_shape,
                                       form=form, isolated=False)]

    with tempfile.TemporaryDirectory(prefix="pqd-latency-") as work:
        if not is_path:
            try:
                if arch is not None or getattr(model, "pqd_arch", None) is not None:
                    path = save_artifact(model, Path(work) / "model.pt", arch=arch, input_shape=input_shape)
                else:
                    path = _save_pickled_module(model, Path(work) / f"model{_PICKLE_SUFFIX}")
            except Exception as exc:
                pairs = [(n, b) for n in resolve_threads(cfg.threads) for b in cfg.batch_sizes]
                return [{"runtime": rt, "device": device, "threads": n, "batch_size": b, "isolated": True,
                         "form": form, **hardware_info(),
                         "error": f"could not save the model for the child process ({type(exc).__name__}: {exc})"}
                        for rt in runtimes for n, b in pairs]
        records = []
        for rt in runtimes:
            records += _run_child(path, runtime=rt, device=device, cfg=cfg, input_shape=input_shape, form=form,
                                  timeout_s=timeout_s, temporary=not is_path)
        return records


def _run_child(path: Path, *, runtime: str, device: str, cfg: MeasureConfig, input_shape: tuple[int, ...],
               form: str | None, timeout_s: float | None, temporary: bool) -> list[dict[str, Any]]:
    threads = resolve_threads(cfg.threads)
    pairs = [(n, b) for n in threads for b in cfg.batch_sizes]
    cmd = [sys.executable, "-m", "pqd_lib.measure.latency", str(path), "--json", "--runtime", runtime,
           "--device", device, "--threads", *map(str, threads), "--batch-sizes", *map(str, cfg.batch_sizes),
           "--warmup", str(cfg.warmup), "--min-runs", str(cfg.min_runs), "--min-seconds", str(cfg.min_seconds),
           "--input-shape", *map(str, input_shape)]
    if form is not None:
        cmd += ["--form", form]
    if temporary and _artifact_kind(path) == "pickle":
        cmd += ["--trusted-pickle"]
    env = dict(os.environ)
    # The child imports this very package, wherever it lives (installed or a source checkout).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if timeout_s is None:
        timeout_s = 600.0 + 4.0 * len(pairs) * (cfg.min_seconds + 1.0)

    def failed(message: str) -> list[dict[str, Any]]:
        hw = hardware_info()
        return [{"runtime": runtime, "device": device, "threads": n, "batch_size": b, "isolated": True,
                 "artifact": None if temporary else str(path), "form": form, **hw, "error": message}
                for n, b in pairs]

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return failed(f"latency child timed out after {timeout_s:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            records = json.loads(line[len(_RESULT_TAG):])
            if temporary:
                for r in records:
                    r["artifact"] = None
            return records
    tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-500:]
    return failed(f"latency child exited with code {proc.returncode} without results: {tail}")


# ---------------------------------------------------------------------------
# The child process (and a command line for people)
# ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pqd_lib.measure.latency ARTIFACT [--threads 1 2] [--batch-sizes 1 32] ... [--json]``.

    Times one saved model in this (fresh) process under the protocol and prints a table, or with
    ``--json`` one line ``PQD-LATENCY-RECORDS [...]`` that :func:`measure_latency` reads.
    """
    d = MeasureConfig()
    parser = argparse.ArgumentParser(prog="python -m pqd_lib.measure.latency",
                                     description="Time a saved model under pqd's latency protocol.")
    parser.add_argument("artifact", type=Path, help="pqd deploy file, .pt2 export, or .onnx")
    parser.add_argument("--runtime", choices=RUNTIMES, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(d.batch_sizes))
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--min-runs", type=int, default=d.min_runs)
    parser.add_argument("--min-seconds", type=float, default=d.min_seconds)
    parser.add_argument("--input-shape", type=int, nargs="+", default=[3, 32, 32])
    parser.add_argument("--form", choices=FORMS, default=None)
    parser.add_argument("--json", action="store_true", help="print records as one tagged JSON line")
    parser.add_argument("--trusted-pickle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = _validated(MeasureConfig(threads=tuple(args.threads) if args.threads else None,
                                   batch_sizes=tuple(args.batch_sizes), warmup=args.warmup, min_runs=args.min_runs,
                                   min_seconds=args.min_seconds, isolate=False))
    runtime = args.runtime or ("onnxruntime" if args.artifact.suffix.lower() == ".onnx" else "torch-eager")
    records = _measure_here(args.artifact, runtime=runtime, device=args.device, cfg=cfg,
                            input_shape=tuple(args.input_shape), form=args.form, isolated=True,
                            trusted=args.trusted_pickle)
    if args.json:
        print(_RESULT_TAG + json.dumps(records, default=str), flush=True)
        return 0
    for r in records:
        if r.get("error"):
            print(f"{r['runtime']:16s} {r['form'] or '?':11s} threads {r['threads']:2d} batch {r['batch_size']:3d}  "
                  f"ERROR {r['error']}")
        else:
            print(f"{r['runtime']:16s} {r['form']:11s} threads {r['threads']:2d} batch {r['batch_size']:3d}  "
                  f"p50 {r['latency_ms_p50']:9.3f} ms  p90 {r['latency_ms_p90']:9.3f} ms  "
                  f"{r['images_per_s']:9.1f} img/s  ({r['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
