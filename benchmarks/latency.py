"""Latency of ResNet-18 (CIFAR, full width) in every deploy form pqd offers, against ONNX Runtime and OpenVINO.

    python benchmarks/latency.py            # the full run, batch 1 (~4-5 minutes on 2 quiet cores, estimated)
    python benchmarks/latency.py --quick    # 5 short rounds: a smoke test, not a result
    python benchmarks/latency.py --batch32  # also batch 32 (~3-4 more minutes)
    python benchmarks/latency.py --sweep    # also the sparsity sweep (dense vs CSR kernels; ~3 more minutes)
    python benchmarks/latency.py --engine fx  # PyTorch INT8 from the FX reference path instead of PT2E

Every figure comes from the rounds protocol of ``pqd_lib.measure.rounds`` (its docstring states it):
one fresh, kept-alive process per model, pinned to one core for 1-thread runs, with the thread
environment set before torch is imported; after loading (compile times recorded, never timed) and
block calibration, >= 15 rounds each time one short block of every model in rotated order between
two blocks of a fixed reference model (FP32 eager); a model's figure is its median over rounds of
latency / the same round's reference, with a bootstrap 95 % CI; blocks during which other processes
used CPU (``/proc/stat``) or the reference drifted are marked and re-run. Ratios between models of
the same comparison are meaningful even on a loaded machine; absolute milliseconds are not.

Weights are random (latency does not depend on their values for dense and INT8 kernels);
activation ranges are calibrated on real CIFAR-10 images (the embedded subset).

Models: FP32 eager (the reference), three *identical* FP32 architectures (dense, 50 % and 90 %
zeros, all run by dense kernels: the same work, so their spread is the protocol's own noise), the
PyTorch INT8 model of the Q engine (``--engine``, default the config's ``quantize.engine``, PT2E: its
converted ``torch.export`` program under ``torch.compile``, its deploy runtime -- eager it would run its
INT8 arithmetic in FP32; ``fx``: the FX reference path's converted model on torch eager, quantized x86
kernels), and the ONNX files: FP32, ONNX Runtime's own
post-training static INT8 (QDQ, per-channel, U8S8) and pqd's QAT model exported as QDQ, each on ONNX
Runtime and (with the ``openvino`` extra) on OpenVINO.

The last line, at batch 1 and 1 thread, is
``fp32/int8 = X, pqd-int8/fastest-peer-int8 = Y, identical-spread = Z %``: X = FP32 eager / the
fastest INT8 path pqd offers for its own QAT model (PyTorch INT8, or its QDQ export on ONNX Runtime
or OpenVINO), Y = that / the fastest post-training INT8 of the FP32 model on a peer runtime (ONNX
Runtime's or OpenVINO's), Z = max/min - 1 of the three identical models, all from one run.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pqd_lib import config as C  # noqa: E402
from pqd_lib import data as D  # noqa: E402
from pqd_lib.deploy import save_artifact  # noqa: E402
from pqd_lib import hardware  # noqa: E402
from pqd_lib.measure import onnx_runtime, openvino_runtime, rounds  # noqa: E402
from pqd_lib.measure.rounds import Candidate  # noqa: E402
from pqd_lib.measure.runtimes import default_runtime  # noqa: E402
from pqd_lib.models import build  # noqa: E402
from pqd_lib.stages import prune as prune_stage  # noqa: E402
from pqd_lib.stages import quantize as quantize_stage  # noqa: E402

ARCH = {"name": "resnet18", "num_classes": 10, "width": 1.0}
SWEEP = (0.0, 0.5, 0.7, 0.9, 0.95, 0.98)
REFERENCE = "FP32 eager (reference)"
IDENTICAL = ("FP32 identical, dense", "FP32 identical, 50% zeros", "FP32 identical, 90% zeros")
# The PyTorch INT8 row's runtime column says how it ran (torch-compile for PT2E, torch-eager for FX).
PQD_INT8 = ("PyTorch INT8", "ORT INT8 (pqd QAT)", "OpenVINO INT8 (pqd QAT)")
PEER_INT8 = ("ORT INT8 (static PTQ)", "OpenVINO INT8 (static PTQ)")


def protocol(quick: bool, threads: tuple[int, ...], batch: int) -> C.MeasureConfig:
    """The rounds protocol of this benchmark: the library's defaults, shortened for --quick."""
    if quick:
        return C.MeasureConfig(threads=threads, batch_sizes=(batch,), warmup=3, rounds=5, block_seconds=0.05,
                               max_reruns=2)
    return C.MeasureConfig(threads=threads, batch_sizes=(batch,), warmup=10 if batch > 1 else 30, rounds=15,
                           block_seconds=0.2, max_reruns=5)


def real_images(n: int) -> tuple[torch.Tensor, str]:
    """`n` normalised training images of the embedded CIFAR-10 subset (random ones if it cannot be read)."""
    try:
        splits = D.load(C.DataConfig(source="embedded"))
        return D.normalize(splits.x_train[:n], splits.mean, splits.std), f"{n} embedded CIFAR-10 images"
    except Exception as exc:  # the benchmark is about latency; say so and go on
        return torch.randn(n, 3, 32, 32), f"{n} random images (embedded data unavailable: {exc})"


def pruned(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    """A copy with global magnitude pruning of all convs but the first and not the classifier (PruneConfig defaults)."""
    out = copy.deepcopy(model)
    if sparsity > 0:
        prune_stage.update_masks(prune_stage.prunable_layers(out), sparsity, scope="global")
        prune_stage.remove_masks(out)
    return out.eval()


def qat_prepared(model: torch.nn.Module, images: torch.Tensor, reduce_range: bool, engine: str) -> torch.nn.Module:
    """The QAT-prepared model of `engine` with observers calibrated on `images`, then frozen (as after stage Q)."""
    prepared = quantize_stage.prepare_qat(model, reduce_range=reduce_range, engine=engine)
    with torch.no_grad():
        for i in range(0, len(images), 64):
            prepared(images[i:i + 64])  # train mode: observers and BN statistics see real images
    quantize_stage.freeze_observers(prepared)
    quantize_stage.freeze_bn_stats(prepared)
    return prepared.eval()


def artifacts(dense: torch.nn.Module, images: torch.Tensor, work: Path, with_openvino: bool,
              engine: str) -> tuple[list, Candidate]:
    """Every deploy form as a saved artifact: (candidates, reference); the PyTorch INT8 one from `engine`."""
    reduce_range = C.QuantizeConfig().reduce_range  # the library default, recorded in the INT8 artifact
    paths = {REFERENCE: save_artifact(dense, work / "fp32.pt", arch=ARCH)}
    for label, s in zip(IDENTICAL, (0.0, 0.5, 0.9)):
        paths[label] = save_artifact(pruned(dense, s), work / f"fp32_s{int(s * 100)}.pt", arch=ARCH)
    prepared = qat_prepared(dense, images, reduce_range, engine)
    paths[PQD_INT8[0]] = save_artifact(quantize_stage.convert(prepared), work / "int8.pt", arch=ARCH,
                                       reduce_range=reduce_range)
    t = time.time()
    fp32_onnx = onnx_runtime.export_onnx(dense, work / "fp32.onnx")
    ptq = onnx_runtime.quantize_static_onnx(fp32_onnx, work / "ort_int8.onnx", images)
    qat = onnx_runtime.export_qat_onnx(prepared, work / "qat.onnx")
    print(f"(artifacts written; ONNX export + ONNX Runtime quantization took {time.time() - t:.0f} s)")
    cands = [Candidate(label, paths[label]) for label in IDENTICAL]
    cands.append(Candidate(PQD_INT8[0], paths[PQD_INT8[0]], default_runtime(paths[PQD_INT8[0]]), fields={"engine": engine}))
    cands += [Candidate("ORT FP32", fp32_onnx, "onnxruntime"), Candidate(PEER_INT8[0], ptq, "onnxruntime"),
              Candidate(PQD_INT8[1], qat, "onnxruntime")]
    if with_openvino:
        cands += [Candidate("OpenVINO FP32", fp32_onnx, "openvino"), Candidate(PEER_INT8[1], ptq, "openvino"),
                  Candidate(PQD_INT8[2], qat, "openvino")]
    return cands, Candidate(REFERENCE, paths[REFERENCE])


def fmt(r: dict) -> str:
    head = f"{r['label']:30s} {r['runtime']:12s} {r['threads']:>3} {r['batch_size']:>5}"
    if r.get("error"):
        return f"{head}   ERROR: {r['error'][:100]}"
    return (f"{head} {r['relative_to_reference']:7.3f} [{r['relative_ci_low']:.3f}, {r['relative_ci_high']:.3f}] "
            f"{r['latency_ms_p50']:9.2f} {r['latency_ms_p90']:9.2f} {r['images_per_s']:9.1f} {r['compile_s']:8.2f} "
            f"{r['rounds_used']:>3}/{r['rounds_run']:<3} {r['rounds_marked']:>3}")


HEADER = (f"{'model':30s} {'runtime':12s} {'thr':>3} {'batch':>5} {'rel':>7} {'95% CI':>16} {'p50 ms':>9} "
          f"{'p90 ms':>9} {'img/s':>9} {'compile':>8} {'used/run':>7} {'marked':>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 short rounds (a smoke test, not a result)")
    parser.add_argument("--sweep", action="store_true", help="also the sparsity sweep (dense vs CSR kernels)")
    parser.add_argument("--batch32", action="store_true", help="also compare the INT8 paths at batch 32")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="also append every latency record to this pqd results store")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-minute load average to drop below 0.5")
    parser.add_argument("--engine", choices=["pt2e", "fx"], default=C.QuantizeConfig().engine,
                        help="the Q engine of the PyTorch INT8 model (default: the config's, %(default)s; "
                             "fx = the deprecated reference path)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    deadline = time.time() + args.wait_quiet
    while hasattr(os, "getloadavg") and os.getloadavg()[0] >= 0.5 and time.time() < deadline:
        time.sleep(5)
    t_start = time.time()
    info = hardware.hardware_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    with_openvino = openvino_runtime.version() is not None
    print("# pqd latency benchmark" + (" (--quick: not a result)" if args.quick else ""))
    print(f"machine: {hardware.describe(info)}")
    print(f"cpu capability: {info.get('torch_cpu_capability')}; load average at start: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"openvino: {openvino_runtime.version() or 'not installed (pip install pqd[openvino])'}")
    b1 = protocol(args.quick, threads, 1)
    print(f"protocol: rounds protocol, threads {list(threads)}, >= {b1.rounds} rounds of {b1.block_seconds} s blocks "
          f"(re-runs <= {b1.max_reruns}), warm-up {b1.warmup} calls, reference = {REFERENCE}")
    torch.manual_seed(0)
    images, source = real_images(256)
    print(f"model: ResNet-18 CIFAR (width 1.0, 10 classes, random weights); calibration: {source}; "
          f"Q engine: {args.engine}\n")

    dense = build(**ARCH).eval()
    with torch.no_grad():  # BN running statistics of real images, so activations have realistic ranges
        dense.train()
        for i in range(0, len(images), 64):
            dense(images[i:i + 64])
        dense.eval()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pqd-bench-") as work:
        work = Path(work)
        cands, ref = artifacts(dense, images, work, with_openvino, args.engine)
        rows += rounds.compare(cands, ref, b1, log=lambda s: print("  " + s))
        if args.batch32:
            keep = {"ORT FP32", *PEER_INT8, *PQD_INT8}
            rows += rounds.compare([c for c in cands if c.label in keep], ref, protocol(args.quick, threads, 32),
                                   log=lambda s: print("  " + s))
        print("\n## Deploy forms (rel = latency / FP32 eager of the same round, median over rounds)")
        print(HEADER)
        print("-" * len(HEADER))
        for r in sorted(rows, key=lambda r: (r["batch_size"], r["threads"])):
            print(fmt(r))
        print()
        if args.sweep:
            rows += sparsity_sweep(dense, images, work, protocol(args.quick, threads, 1), args.engine)

    def rel(label: str, n: int = 1, batch: int = 1) -> float:
        for r in rows:
            if r["label"] == label and r["threads"] == n and r["batch_size"] == batch and not r.get("error"):
                return r["relative_to_reference"]
        return math.nan

    spreads = {n: rounds.identical_spread([r for r in rows if r["threads"] == n and r["batch_size"] == 1], IDENTICAL)
               for n in threads}
    print("## Identical models (3 x FP32 ResNet-18 with 0 / 50 / 90 % zeros, dense kernels: the same work)")
    print("spread (max/min - 1 of their relative latencies): "
          + ", ".join(f"{n} thread(s) {100 * s:.1f} %" if s is not None else f"{n} thread(s) n/a"
                      for n, s in spreads.items()))
    for n in threads:
        best = min(PQD_INT8, key=lambda label: rel(label, n) if not math.isnan(rel(label, n)) else math.inf)
        peer = min(PEER_INT8, key=lambda label: rel(label, n) if not math.isnan(rel(label, n)) else math.inf)
        print(f"{n} thread(s), batch 1: fastest pqd INT8 = {best} ({rel(best, n):.3f}), fastest peer INT8 = "
              f"{peer} ({rel(peer, n):.3f})")

    errors = [r for r in rows if r.get("error")]
    if args.results_dir is not None:
        from pqd_lib import results

        for r in rows:
            results.append(results.make_record(None, benchmark="benchmarks/latency.py", backbone=ARCH["name"],
                                               width=ARCH["width"], quick=args.quick, **r), args.results_dir)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"({len(errors)} failed measurements; load average at end: {load[0]:.2f}; total {time.time() - t_start:.0f} s)")
    pqd = min((rel(label) for label in PQD_INT8 if not math.isnan(rel(label))), default=math.nan)
    peer = min((rel(label) for label in PEER_INT8 if not math.isnan(rel(label))), default=math.nan)
    z = spreads.get(1)
    print(f"fp32/int8 = {rel(REFERENCE) / pqd:.2f}, pqd-int8/fastest-peer-int8 = {pqd / peer:.2f}, "
          f"identical-spread = {100 * z if z is not None else math.nan:.1f} %")
    return 0


def sparsity_sweep(dense, images, work: Path, cfg, engine: str) -> list[dict]:
    """Latency vs sparsity at batch 1: dense FP32 kernels, CSR sparse kernels, dense INT8 kernels (of `engine`'s
    INT8 model, on its deploy runtime), in one comparison."""
    print("## Sparsity sweep (batch 1; global magnitude pruning of all but the first conv and the classifier)")
    reduce_range = C.QuantizeConfig().reduce_range
    cands = []
    for s in SWEEP:
        model = pruned(dense, s)
        path = save_artifact(model, work / f"sweep_{int(s * 100)}.pt", arch=ARCH)
        int8 = save_artifact(quantize_stage.convert(qat_prepared(model, images[:64], reduce_range, engine)),
                             work / f"sweep_int8_{int(s * 100)}.pt", arch=ARCH, reduce_range=reduce_range)
        fields = {"sparsity_target": s}
        cands += [Candidate(f"{s:.0%} FP32 dense kernels", path, fields=fields),
                  Candidate(f"{s:.0%} FP32 CSR kernels", path, "torch-sparse-csr", fields=fields),
                  Candidate(f"{s:.0%} INT8 dense kernels", int8, default_runtime(int8), fields={**fields, "engine": engine})]
    ref = Candidate(REFERENCE, work / "fp32.pt")
    rows = rounds.compare(cands, ref, cfg, log=lambda s: print("  " + s))
    threads = list(cfg.threads)
    kinds = ("FP32 dense kernels", "FP32 CSR kernels", "INT8 dense kernels")
    print(f"{'sparsity':>8} " + " ".join(f"{k.split(' kernels')[0] + f' {n}T':>20}" for n in threads for k in kinds)
          + "   (latency / FP32 dense eager of the same round)")
    for s in SWEEP:
        cells = []
        for n in threads:
            for kind in kinds:
                r = next(r for r in rows if r["label"] == f"{s:.0%} {kind}" and r["threads"] == n)
                cells.append(f"{'ERR' if r.get('error') else format(r['relative_to_reference'], '.3f'):>20}")
        measured = next(r for r in rows if r["label"] == f"{s:.0%} FP32 dense kernels").get("model_sparsity")
        print(f"{s:8.0%} " + " ".join(cells) + f"   (weights zero: {measured or 0:.1%})")
    print()
    return rows


if __name__ == "__main__":
    sys.exit(main())
