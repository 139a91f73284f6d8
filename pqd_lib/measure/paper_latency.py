"""Claim C6: the paper's "0.99-1.42 ms CPU latency", measured for its three backbones at full width.

    python -m pqd_lib.measure.paper_latency --results-dir reports/results      # ~10-15 min on 2 quiet cores
    python -m pqd_lib.measure.paper_latency --quick --backbones resnet18       # a smoke test, not a result

The paper (Zhou & Shen 2026, abstract) reports "0.99-1.42 ms CPU latency" for the deploy models of
ResNet-18, WRN-28-10 and VGG-16-BN on CIFAR, without batch size, threads or CPU. Latency needs no
training: dense and INT8 kernels do the same work whatever the weights, so each backbone is built at
full width with random weights, its BN statistics and INT8 activation ranges calibrated on a few
images, and converted to every INT8 deploy form pqd offers for the Q engine (``quantize.engine``,
default the config's): the PyTorch INT8 model -- FX's on torch eager (quantized x86 kernels), or
PT2E's ``torch.export`` program under ``torch.compile`` (its deploy runtime; eager it would run its
INT8 arithmetic in FP32) -- and its QDQ ONNX export on ONNX Runtime and (with the ``openvino``
extra) OpenVINO.

Each is timed with the rounds protocol (:mod:`pqd_lib.measure.rounds`; the PyTorch INT8 model is
the reference; records say the ``runtime`` and ``engine``) at batch 1 with 1 thread and with all cores; where no form of a backbone reaches
1.42 ms at batch 1, also at batch 32, whose time per image is the throughput reading of the
paper's number. One record per (backbone, form, threads, batch) of kind :data:`KIND` goes to the
results store; :func:`pqd_lib.claims.c6` decides the claim from them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import MeasureConfig, QuantizeConfig
from .rounds import Candidate, compare

__all__ = ["KIND", "BACKBONES", "PAPER_MS", "measure_c6", "main"]

#: Record kind of these measurements (the claims read it).
KIND = "c6-latency"
#: The paper's three backbones.
BACKBONES = ("resnet18", "vgg16_bn", "wrn28_10")
#: The upper end of the paper's stated latency range.
PAPER_MS = 1.42


def _protocol(quick: bool, threads: int, batch: int) -> MeasureConfig:
    if quick:
        return MeasureConfig(threads=(threads,), batch_sizes=(batch,), warmup=2, rounds=3, block_seconds=0.05,
                             max_reruns=0)
    return MeasureConfig(threads=(threads,), batch_sizes=(batch,), warmup=5 if batch > 1 else 20, rounds=7,
                         block_seconds=0.3, max_reruns=3)


def _int8_forms(name: str, work: Path, num_classes: int, with_openvino: bool, engine: str) -> list[Candidate]:
    """The INT8 deploy forms of one backbone at full width: PyTorch INT8 first (the reference), then ONNX."""
    from ..deploy import save_artifact
    from ..models import build
    from ..stages import quantize as quantize_stage
    from . import onnx_runtime
    from .runtimes import default_runtime

    torch.manual_seed(0)
    arch = {"name": name, "num_classes": num_classes, "width": 1.0}
    model = build(**arch)
    images = torch.randn(32, 3, 32, 32)
    reduce_range = QuantizeConfig().reduce_range
    prepared = quantize_stage.prepare_qat(model, reduce_range=reduce_range, engine=engine)
    with torch.no_grad():
        prepared(images)  # BN statistics and activation ranges of some inputs (values do not change the work)
    quantize_stage.freeze_observers(prepared)
    quantize_stage.freeze_bn_stats(prepared)
    prepared.eval()
    fields = {"backbone": name, "width": 1.0, "num_classes": num_classes, "engine": engine}
    int8 = save_artifact(quantize_stage.convert(prepared), work / f"{name}.pt", arch=arch, reduce_range=reduce_range)
    runtime = default_runtime(int8)  # torch-compile for PT2E's program, torch-eager for FX's deploy file
    out = [Candidate(f"{name} PyTorch INT8" + (" (compiled)" if runtime == "torch-compile" else ""), int8, runtime,
                     fields=fields)]
    qat = onnx_runtime.export_qat_onnx(prepared, work / f"{name}.onnx")
    out.append(Candidate(f"{name} ORT INT8 (QDQ)", qat, "onnxruntime", fields=fields))
    if with_openvino:
        out.append(Candidate(f"{name} OpenVINO INT8 (QDQ)", qat, "openvino", fields=fields))
    return out


def measure_c6(results_dir: str | os.PathLike | None = None, *, backbones: Sequence[str] = BACKBONES,
               num_classes: int = 10, quick: bool = False, engine: str | None = None,
               log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Time every INT8 deploy form of each backbone at full width (module docstring); return the records.

    `engine`: the Q engine (``"fx"`` or ``"pt2e"``); None = the config's default. With `results_dir`,
    each record is also appended to that results store (kind :data:`KIND`).
    """
    engine = engine or QuantizeConfig().engine
    from . import openvino_runtime

    with_openvino = openvino_runtime.version() is not None
    cores = os.cpu_count() or 1
    all_records: list[dict[str, Any]] = []
    for name in backbones:
        with tempfile.TemporaryDirectory(prefix=f"pqd-c6-{name}-") as work:
            t = time.time()
            forms = _int8_forms(name, Path(work), num_classes, with_openvino, engine)
            log(f"{name}: {len(forms)} INT8 deploy forms built and exported in {time.time() - t:.0f} s")
            ref, cands = forms[0], forms[1:]
            records = []
            for threads in sorted({1, cores}):
                records += compare(cands, ref, _protocol(quick, threads, 1), log=log)
            best = min((r["latency_ms_p50"] for r in records if not r.get("error")), default=float("inf"))
            if best > PAPER_MS:
                log(f"{name}: fastest at batch 1 {best:.2f} ms > {PAPER_MS} ms: also batch 32")
                for threads in sorted({1, cores}):
                    records += compare(cands, ref, _protocol(quick, threads, 32), log=log)
            for r in records:
                r["per_image_ms"] = r["latency_ms_p50"] / r["batch_size"] if r.get("latency_ms_p50") else None
                r["quick"] = quick
            all_records += records
            if results_dir is not None:
                from .. import results

                for r in records:
                    results.append(results.make_record(None, **r, kind=KIND, dataset=f"cifar{num_classes}", notebook=None,
                                                       record_id=f"c6-{r['label']}-{r['threads']}t-{r['batch_size']}b"
                                                       .replace(" ", "_").replace("(", "").replace(")", "")),
                                   results_dir, replace=True)
    return all_records


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: measure C6 and print one line per record (and append them with ``--results-dir``)."""
    parser = argparse.ArgumentParser(prog="python -m pqd_lib.measure.paper_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=None, help="append the records to this results store")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--quick", action="store_true", help="3 short rounds: a smoke test, not a result")
    parser.add_argument("--engine", choices=["fx", "pt2e"], default=None,
                        help="the Q engine whose INT8 forms are timed (default: the config's)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    start = time.time()
    records = measure_c6(args.results_dir, backbones=args.backbones, quick=args.quick, engine=args.engine, log=print)
    for r in records:
        if r.get("error"):
            print(f"{r['label']:32s} {r['threads']:>2}T b{r['batch_size']:<3} ERROR {r['error'][:100]}")
        else:
            print(f"{r['label']:32s} {r['threads']:>2}T b{r['batch_size']:<3} p50 {r['latency_ms_p50']:9.3f} ms  "
                  f"per image {r['per_image_ms']:8.3f} ms  compile {r['compile_s']:.1f} s  "
                  f"rounds {r['rounds_used']}/{r['rounds_run']}")
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
