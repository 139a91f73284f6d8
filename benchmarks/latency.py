"""Latency of ResNet-18 (CIFAR) in every deploy form pqd offers, against ONNX Runtime, on this machine.

    python benchmarks/latency.py            # the full run (~7.5 minutes on 2 quiet cores)
    python benchmarks/latency.py --quick    # fewer, shorter timings (~3 minutes): a smoke test, not a result

Every figure comes from ``pqd_lib.measure.latency.measure_latency`` -- the protocol of that module:
one fresh process per model and runtime loading the saved artifact, eval mode, inference mode,
fixed threads, warm-up, timed runs until both a run count and a time are reached, median/p90 --
with a shorter protocol than the library default so that the whole run fits in a few minutes
(printed in the header). Weights are random (latency does not depend on their values for dense and
INT8 kernels); activation ranges are calibrated on real CIFAR-10 images (the embedded subset).

Forms: FP32 eager (dense), FP32 pruned 50 % / 90 % (global magnitude pruning, first conv and
classifier dense, run by the same dense kernels), PyTorch INT8 (FX QAT-prepared then converted,
x86 engine), ONNX Runtime FP32, ONNX Runtime's own post-training INT8 (``quantize_static``, QDQ,
per-channel, U8S8) and pqd's QAT model exported to ONNX Runtime (learned scales as QDQ).
A second table sweeps sparsity 0-98 % with dense kernels and with the only maintained sparse CPU
kernel there is for this (torch's CSR sparse x dense matmul under an im2col convolution).

The last line is ``fp32/int8 = X, pqd-int8/ort-int8 = Y`` at batch 1, 1 thread: X = FP32 eager /
the fastest INT8 deploy path pqd offers for its QAT model (PyTorch INT8 or the QAT model on ONNX
Runtime), Y = that / ONNX Runtime's post-training INT8 of the FP32 model.
"""

from __future__ import annotations

import argparse
import copy
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
from pqd_lib.measure import hardware, latency, onnx_runtime  # noqa: E402
from pqd_lib.models import build  # noqa: E402
from pqd_lib.stages import prune as prune_stage  # noqa: E402
from pqd_lib.stages import quantize as quantize_stage  # noqa: E402

ARCH = {"name": "resnet18", "num_classes": 10, "width": 1.0}
SWEEP = (0.0, 0.5, 0.7, 0.9, 0.95, 0.98)


def protocols(quick: bool) -> dict[str, C.MeasureConfig]:
    """Batch 1 and batch 32 protocols; the batch-32 one needs fewer runs for the same precision."""
    threads = tuple(sorted({1, os.cpu_count() or 1}))
    if quick:
        return {"b1": C.MeasureConfig(threads=threads, batch_sizes=(1,), warmup=5, min_runs=20, min_seconds=0.3),
                "b32": C.MeasureConfig(threads=threads, batch_sizes=(32,), warmup=1, min_runs=3, min_seconds=0.3),
                "sweep": C.MeasureConfig(threads=threads, batch_sizes=(1,), warmup=3, min_runs=10, min_seconds=0.2)}
    return {"b1": C.MeasureConfig(threads=threads, batch_sizes=(1,), warmup=20, min_runs=100, min_seconds=1.0),
            "b32": C.MeasureConfig(threads=threads, batch_sizes=(32,), warmup=3, min_runs=15, min_seconds=2.0),
            "sweep": C.MeasureConfig(threads=threads, batch_sizes=(1,), warmup=10, min_runs=50, min_seconds=1.0)}


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


def qat_prepared(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """The FX QAT-prepared model with observers calibrated on `images`, then frozen (as after stage Q)."""
    prepared = quantize_stage.prepare_qat(model)
    with torch.no_grad():
        for i in range(0, len(images), 64):
            prepared(images[i:i + 64])  # train mode: observers and BN statistics see real images
    quantize_stage.freeze_observers(prepared)
    quantize_stage.freeze_bn_stats(prepared)
    # Pruned zeros survive: BN folding scales them, symmetric weight quantization has zero point 0.
    return prepared.eval()


def run(model_or_path, cfgs, *, runtime=None, label, form=None):
    rows = []
    for cfg in cfgs:
        for r in latency.measure_latency(model_or_path, cfg, runtime=runtime, form=form):
            r["label"] = label
            rows.append(r)
    return rows


def fmt_row(r) -> str:
    if r.get("error"):
        return f"{r['label']:34s} {r['runtime']:16s} {r['threads']:>3} {r['batch_size']:>5}   ERROR: {r['error'][:90]}"
    return (f"{r['label']:34s} {r['runtime']:16s} {r['threads']:>3} {r['batch_size']:>5} {r['latency_ms_p50']:9.2f} "
            f"{r['latency_ms_p90']:9.2f} {r['images_per_s']:9.1f} {r['runs']:5d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter timings (a smoke test)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sparsity sweep")
    parser.add_argument("--sweep-only", action="store_true", help="only the sparsity sweep (no last line)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="also append every latency record to this pqd results store")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the 1-minute load average to drop below 0.5")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    deadline = time.time() + args.wait_quiet
    while hasattr(os, "getloadavg") and os.getloadavg()[0] >= 0.5 and time.time() < deadline:
        time.sleep(5)
    t_start = time.time()
    cfgs = protocols(args.quick)
    info = hardware.hardware_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print("# pqd latency benchmark" + (" (--quick: not a result)" if args.quick else ""))
    print(f"machine: {hardware.describe(info)}")
    print(f"cpu capability: {info['torch_cpu_capability']}; load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] >= 0.5:
        print("WARNING: other processes are running; timings are distorted, those using all cores most "
              "(an OpenMP barrier waits for a busy core)")
    for name, cfg in cfgs.items():
        print(f"protocol {name}: threads {list(cfg.threads)}, warm-up {cfg.warmup}, >= {cfg.min_runs} runs and "
              f">= {cfg.min_seconds} s, one fresh process per model and runtime")
    torch.manual_seed(0)
    images, source = real_images(256)
    print(f"model: ResNet-18 CIFAR (width 1.0, 10 classes, random weights); calibration: {source}")
    print()

    dense = build(**ARCH).eval()
    with torch.no_grad():  # BN running statistics of real images, so activations have realistic ranges
        dense.train()
        for i in range(0, len(images), 64):
            dense(images[i:i + 64])
        dense.eval()
    rows: list[dict] = []

    def p50(label, threads, batch):
        for r in rows:
            if r["label"] == label and r["threads"] == threads and r["batch_size"] == batch and not r.get("error"):
                return r["latency_ms_p50"]
        return float("nan")

    with tempfile.TemporaryDirectory(prefix="pqd-bench-") as work:
        work = Path(work)
        if not args.sweep_only:
            rows += deploy_forms(dense, images, work, cfgs)
            print_forms(rows, p50, cfgs)
        if not args.no_sweep:
            rows += sparsity_sweep(dense, images, work, cfgs["sweep"])

    errors = [r for r in rows if r.get("error")]
    if args.results_dir is not None:
        from pqd_lib import results

        for r in rows:
            results.append(results.make_record(None, benchmark="benchmarks/latency.py", backbone=ARCH["name"],
                                               width=ARCH["width"], quick=args.quick, **r), args.results_dir)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"({len(errors)} failed measurements; load average at end: {load[0]:.2f}; total {time.time() - t_start:.0f} s)")
    if not args.sweep_only:
        fp32 = p50("FP32 eager (dense)", 1, 1)
        pqd = min(p50("PyTorch INT8 (FX, x86)", 1, 1), p50("ORT INT8 (pqd QAT export)", 1, 1))
        ort = p50("ORT INT8 (static PTQ, U8S8)", 1, 1)
        print(f"fp32/int8 = {fp32 / pqd:.2f}, pqd-int8/ort-int8 = {pqd / ort:.2f}")
    return 0


def deploy_forms(dense, images, work: Path, cfgs) -> list[dict]:
    """Every deploy form of the dense model (and two pruned ones), each timed at batch 1 and 32."""
    paths = {}
    for s in (0.0, 0.5, 0.9):
        paths[s] = latency.save_artifact(pruned(dense, s), work / f"fp32_s{int(s * 100)}.pt", arch=ARCH)
    prepared = qat_prepared(dense, images)
    paths["int8"] = latency.save_artifact(quantize_stage.convert(prepared), work / "int8.pt", arch=ARCH)
    t = time.time()
    paths["ort_fp32"] = onnx_runtime.export_onnx(dense, work / "fp32.onnx")
    paths["ort_int8"] = onnx_runtime.quantize_static_onnx(paths["ort_fp32"], work / "ort_int8.onnx", images)
    paths["qat_onnx"] = onnx_runtime.export_qat_onnx(prepared, work / "qat.onnx")
    print(f"(artifacts written; ONNX export + quantization took {time.time() - t:.0f} s)\n")
    both = [cfgs["b1"], cfgs["b32"]]
    rows = []
    rows += run(paths[0.0], both, label="FP32 eager (dense)")
    rows += run(paths[0.5], both, label="FP32 50% sparse (dense kernels)")
    rows += run(paths[0.9], both, label="FP32 90% sparse (dense kernels)")
    rows += run(paths["int8"], both, label="PyTorch INT8 (FX, x86)")
    rows += run(paths["ort_fp32"], both, label="ORT FP32")
    rows += run(paths["ort_int8"], both, label="ORT INT8 (static PTQ, U8S8)")
    rows += run(paths["qat_onnx"], both, label="ORT INT8 (pqd QAT export)")
    return rows


def print_forms(rows, p50, cfgs) -> None:
    """The deploy-form table and the ratios between forms, per threads x batch."""
    header = f"{'model':34s} {'runtime':16s} {'thr':>3} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'img/s':>9} {'runs':>5}"
    print("## Deploy forms")
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["threads"])):
        print(fmt_row(r))
    print()
    print("## Ratios (p50)")
    print(f"{'thr':>3} {'batch':>5} {'FP32/PyTorch-INT8':>18} {'FP32/pqd-INT8':>14} {'PyTorch-INT8/ORT-INT8':>22} "
          f"{'pqd-QAT-on-ORT/ORT-INT8':>24} {'ORT-FP32/ORT-INT8':>18}")
    for b in (1, 32):
        for n in cfgs["b1"].threads:
            fp32, pt8 = p50("FP32 eager (dense)", n, b), p50("PyTorch INT8 (FX, x86)", n, b)
            ort8, qat8 = p50("ORT INT8 (static PTQ, U8S8)", n, b), p50("ORT INT8 (pqd QAT export)", n, b)
            best = min(pt8, qat8)
            print(f"{n:>3} {b:>5} {fp32 / pt8:18.2f} {fp32 / best:14.2f} {pt8 / ort8:22.2f} {qat8 / ort8:24.2f} "
                  f"{p50('ORT FP32', n, b) / ort8:18.2f}")
    print()


def sparsity_sweep(dense, images, work: Path, cfg) -> list[dict]:
    """Latency vs sparsity at batch 1: dense FP32 kernels, CSR sparse kernels, dense INT8 kernels."""
    print("## Sparsity sweep (batch 1; global magnitude pruning of all but the first conv and the classifier)")
    rows = []
    for s in SWEEP:
        model = pruned(dense, s)
        path = latency.save_artifact(model, work / f"sweep_{int(s * 100)}.pt", arch=ARCH)
        int8 = latency.save_artifact(quantize_stage.convert(qat_prepared(model, images[:64])),
                                     work / f"sweep_int8_{int(s * 100)}.pt", arch=ARCH)
        for label, p, rt in ((f"{s:.0%} FP32 dense kernels", path, "torch-eager"),
                             (f"{s:.0%} FP32 CSR kernels", path, "torch-sparse-csr"),
                             (f"{s:.0%} INT8 dense kernels", int8, "torch-eager")):
            for r in latency.measure_latency(p, cfg, runtime=rt):
                r["label"], r["sparsity_target"] = label, s
                rows.append(r)
    threads = list(cfg.threads)
    print(f"{'sparsity':>8} " + " ".join(f"{k + f' {n}T':>17}" for n in threads for k in ("FP32-dense", "FP32-CSR", "INT8-dense"))
          + "   (p50 ms)")
    for s in SWEEP:
        cells = []
        for n in threads:
            for kind in ("FP32 dense kernels", "FP32 CSR kernels", "INT8 dense kernels"):
                r = next(r for r in rows if r["sparsity_target"] == s and r["threads"] == n and r["label"].endswith(kind))
                cells.append(f"{'ERR' if r.get('error') else format(r['latency_ms_p50'], '.2f'):>17}")
        measured = next(r for r in rows if r["sparsity_target"] == s)["model_sparsity"]
        print(f"{s:8.0%} " + " ".join(cells) + f"   (weights zero: {measured:.1%})")
    print()
    return rows


if __name__ == "__main__":
    sys.exit(main())
