"""One model's latency, in a fresh process: the single-model protocol of pqd.

Comparisons between models (identical models, deploy forms, runtimes, orders) use the rounds
protocol of :mod:`pqd_lib.measure.rounds`, which interleaves all models of a comparison with a
reference model; this module times *one* model and reports its absolute figures. Every field comes
from :class:`~pqd_lib.config.MeasureConfig` (defaults in brackets):

1. **Isolation** [``isolate=True``]: the model is timed in a freshly spawned Python process
   (``python -m pqd_lib.measure.latency <artifact> --json ...``) that loads the saved artifact, so
   the allocator, thread pools and caches of training (or of the previous model) do not leak in.
   One process per model and runtime; thread counts and batch sizes are swept inside it.
   ``isolate=False`` times in the calling process (fast tests, notebooks).
2. **Mode**: eval mode, under ``torch.inference_mode()``; inputs are seeded standard-normal images
   (values do not change the work done by dense or INT8 kernels).
3. **Threads** [``threads=None`` -> ``[1, os.cpu_count()]``]: ``torch.set_num_threads(n)`` for each
   n; ONNX Runtime ``intra_op_num_threads = n`` (inter-op 1, sequential); OpenVINO
   ``INFERENCE_NUM_THREADS = n`` (one stream). The runtimes: :mod:`pqd_lib.measure.runtimes`.
4. **Batch sizes** [``(1, 32)``].
5. **Warm-up** [``warmup=50``] untimed runs, then **timed runs** until *both* ``min_runs`` [300]
   runs and ``min_seconds`` [2.0] seconds are reached (:mod:`pqd_lib.measure.timing`). Compile
   time (``torch.compile``, ONNX Runtime session, OpenVINO compile) is recorded as ``compile_s``,
   never timed as a run.
6. **Statistics**: median (p50), p90, p99, mean, sample standard deviation and the number of runs,
   in milliseconds, and images/s = batch / p50.
7. **Record**: every result carries the machine (:func:`pqd_lib.hardware.hardware_info`),
   threads, batch size, runtime and model form, the child's pid and observed thread count and the
   1-minute load average when timing began.
8. **Failures** (an operator without an INT8 kernel, a crashed or hung child, a missing file)
   become records with an ``error`` field (:func:`error_records`, the one way such a row is
   built), never a crashed sweep. Bad arguments (threads <= 0, an unknown runtime, an INT8 model on
   CUDA, OpenVINO not installed) raise at once with one line.

Artifacts the child loads are those of :mod:`pqd_lib.deploy` (``save_artifact``/``load_artifact``).
A module given without an architecture name is handed to its child as the pickled module itself,
in a private temporary directory (the child runs the very same eager code).
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

import torch
from torch import nn

from ..config import MeasureConfig
from ..deploy import (PICKLE_SUFFIX, ArtifactError, artifact_form, artifact_kind, load_artifact, model_form,
                      save_artifact, save_pickled_module)
from ..hardware import hardware_info
from .runtimes import ONNX_RUNTIMES, RUNTIMES, check_runtime, default_runtime, prepare
from .timing import check_positive, measure_callable, resolve_threads, summarize, time_runs

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
    "error_records",
    "measure_latency",
    "child_env",
    "main",
]

FORMS = ("fp32", "fp32-sparse", "int8")
# The child prints its records on one stdout line after this tag; other output (warnings) is ignored.
_RESULT_TAG = "PQD-LATENCY-RECORDS "


def validated(cfg: MeasureConfig) -> MeasureConfig:
    """`cfg` itself after checking every protocol value (a ``ValueError`` naming the bad field)."""
    resolve_threads(cfg.threads)
    check_positive("batch_sizes", cfg.batch_sizes)
    check_positive("warmup", [cfg.warmup], minimum=0)
    check_positive("min_runs", [cfg.min_runs])
    if not cfg.min_seconds >= 0:
        raise ValueError(f"min_seconds: {cfg.min_seconds!r} must be >= 0")
    return cfg


def _int8_on_cuda(device: str) -> ValueError:
    return ValueError(f"device: {device!r}: INT8 runs on CPU (x86 kernels); PyTorch has no CUDA kernels for "
                      "pqd's INT8 models (FX- or PT2E-converted). Measure it with device='cpu'.")


def error_records(message: str, *, runtime: str, device: str, threads: Sequence[int], batch_sizes: Sequence[int],
                  isolated: bool, form: str | None = None, artifact: str | None = None,
                  **fields: Any) -> list[dict[str, Any]]:
    """The one way a failed measurement becomes records: one per (threads, batch), ``error`` = `message`.

    Each carries the machine (``hardware_info``) and no timing fields, so a sweep goes on and the
    failure shows in the results instead of stopping them.
    """
    hw = hardware_info()
    return [{"runtime": runtime, "device": device, "isolated": isolated, "artifact": artifact, "form": form,
             **fields, "threads": n, "batch_size": b, **hw, "error": message}
            for n in threads for b in batch_sizes]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


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


def _measure_here(source: nn.Module | Path, *, runtime: str, device: str, cfg: MeasureConfig,
                  input_shape: tuple[int, ...], form: str | None, isolated: bool, trusted: bool = False,
                  timer: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Time `source` in this process for every (threads, batch); one record each, errors recorded."""
    threads = resolve_threads(cfg.threads)
    artifact = str(source) if isinstance(source, Path) else None
    base: dict[str, Any] = {"runtime": runtime, "device": device, "isolated": isolated, "pid": os.getpid(),
                            "artifact": artifact, "input_shape": "x".join(str(s) for s in input_shape),
                            "warmup": cfg.warmup, "min_runs": cfg.min_runs, "min_seconds": cfg.min_seconds,
                            "form": form, "model_sparsity": None}
    # Load once up front: a missing or corrupt file fails every configuration with the same message.
    try:
        if runtime in ONNX_RUNTIMES or not isinstance(source, Path):
            loaded = source
        else:
            loaded = load_artifact(source, trusted=trusted)
    except Exception as exc:
        return error_records(_first_line(exc), runtime=runtime, device=device, threads=threads,
                             batch_sizes=cfg.batch_sizes, isolated=isolated, form=form, artifact=artifact)
    # The caller's module is put in eval mode for timing and given back in the mode it came in.
    was_training = source.training if isinstance(source, nn.Module) else None
    records: list[dict[str, Any]] = []
    for n in threads:
        for b in cfg.batch_sizes:
            record = {**base, "threads": n, "batch_size": b}
            # Other processes on the machine distort timings (badly with all cores in use): say so.
            record["load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            try:
                with _torch_threads(n):
                    ready = prepare(loaded, runtime, threads=n, batch_size=b, input_shape=input_shape,
                                    device=device, form=form)
                    stats = measure_callable(ready.call, warmup=cfg.warmup, min_runs=cfg.min_runs,
                                             min_seconds=cfg.min_seconds, batch_size=b, timer=timer)
                record.update(stats, form=ready.form, model_sparsity=ready.sparsity, compile_s=ready.compile_s,
                              threads_observed=ready.threads_observed, error=None)
            except Exception as exc:  # an operator without a kernel, out of memory, a compile failure
                record = error_records(_first_line(exc), runtime=runtime, device=device, threads=[n],
                                       batch_sizes=[b], isolated=isolated, form=form, artifact=artifact,
                                       pid=os.getpid())[0]
                records.append(record)
                continue
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
    """Time one model under the single-model protocol (module docstring); one record per runtime x threads x batch.

    The same function measures FP32, pruned FP32 (dense kernels: ``torch-eager``; CSR kernels:
    ``torch-sparse-csr``), INT8 (FX-converted: ``torch-eager``; PT2E: ``torch-compile``) and ONNX models
    (``onnxruntime``, ``openvino``); with ``compile=True`` a ``torch-compile`` record follows each
    eager one. To compare models, use :func:`pqd_lib.measure.rounds.compare` instead.

    Args:
        model: an ``nn.Module``, or the path of an artifact: a pqd deploy file, a ``.pt2`` export,
            or a ``.onnx`` file. An isolated module is first saved to a temporary file: a deploy
            file when `arch` (or ``model.pqd_arch``) names its architecture, else the pickled module
            itself (its class must be importable in a fresh process).
        cfg: the protocol; None = ``MeasureConfig()`` defaults.
        runtime: one of :data:`RUNTIMES`; None = the model's deploy runtime
            (:func:`~pqd_lib.measure.runtimes.default_runtime`: ``onnxruntime`` for ``.onnx`` paths,
            ``torch-compile`` for a PT2E INT8 graph or ``.pt2`` program, else ``torch-eager``).
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
        ValueError: threads <= 0 (or another bad protocol value), an unknown runtime (the message
            lists the valid ones) or form, an INT8 model or ONNX runtime on a CUDA device, an
            unknown override.
        RuntimeUnavailable: ``runtime="openvino"`` without OpenVINO installed (names the extra).
    """
    cfg = cfg if cfg is not None else MeasureConfig()
    known = {f.name for f in dataclasses.fields(MeasureConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"measure_latency: unknown option(s) {', '.join(unknown)}; MeasureConfig fields: "
                         f"{', '.join(sorted(known))}")
    cfg = validated(dataclasses.replace(cfg, **overrides))
    is_path = not isinstance(model, nn.Module)
    path = Path(model) if is_path else None
    runtime = check_runtime(runtime or default_runtime(path if is_path else model))
    if form is not None and form not in FORMS:
        raise ValueError(f"form: {form!r} is not allowed; choose one of {', '.join(FORMS)}")
    if device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"device: {device!r} is not allowed; use 'cpu' or 'cuda[:N]'")
    cuda = str(device).startswith("cuda")
    if cuda and runtime in ONNX_RUNTIMES:
        raise ValueError(f"device: {device!r}: {runtime} is measured on the CPU only")
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
                    path = save_pickled_module(model, Path(work) / f"model{PICKLE_SUFFIX}")
            except Exception as exc:
                message = f"could not save the model for the child process ({_first_line(exc)})"
                return [r for rt in runtimes
                        for r in error_records(message, runtime=rt, device=device, threads=resolve_threads(cfg.threads),
                                               batch_sizes=cfg.batch_sizes, isolated=True, form=form)]
        records = []
        for rt in runtimes:
            records += _run_child(path, runtime=rt, device=device, cfg=cfg, input_shape=input_shape, form=form,
                                  timeout_s=timeout_s, temporary=not is_path)
        return records


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a latency child: this package importable, thread pools sized before torch loads.

    With `threads`, ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set to it: they must be set before
    torch (or ONNX Runtime, OpenVINO) is imported, which only a fresh process guarantees.
    """
    env = dict(os.environ)
    # The child imports this very package, wherever it lives (installed or a source checkout).
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def _run_child(path: Path, *, runtime: str, device: str, cfg: MeasureConfig, input_shape: tuple[int, ...],
               form: str | None, timeout_s: float | None, temporary: bool) -> list[dict[str, Any]]:
    threads = resolve_threads(cfg.threads)
    cmd = [sys.executable, "-m", "pqd_lib.measure.latency", str(path), "--json", "--runtime", runtime,
           "--device", device, "--threads", *map(str, threads), "--batch-sizes", *map(str, cfg.batch_sizes),
           "--warmup", str(cfg.warmup), "--min-runs", str(cfg.min_runs), "--min-seconds", str(cfg.min_seconds),
           "--input-shape", *map(str, input_shape)]
    if form is not None:
        cmd += ["--form", form]
    if temporary and artifact_kind(path) == "pickle":
        cmd += ["--trusted-pickle"]
    if timeout_s is None:
        timeout_s = 600.0 + 4.0 * len(threads) * len(cfg.batch_sizes) * (cfg.min_seconds + 1.0)

    def failed(message: str) -> list[dict[str, Any]]:
        return error_records(message, runtime=runtime, device=device, threads=threads, batch_sizes=cfg.batch_sizes,
                             isolated=True, form=form, artifact=None if temporary else str(path))

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=child_env(threads[0] if len(threads) == 1 else None))
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
    parser.add_argument("--runtime", default=None, help=f"one of {', '.join(RUNTIMES)}")
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
    try:
        runtime = check_runtime(args.runtime or default_runtime(args.artifact))
        cfg = validated(MeasureConfig(threads=tuple(args.threads) if args.threads else None,
                                      batch_sizes=tuple(args.batch_sizes), warmup=args.warmup,
                                      min_runs=args.min_runs, min_seconds=args.min_seconds, isolate=False))
    except (ValueError, ImportError) as exc:
        parser.exit(2, f"error: {exc}\n")
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
