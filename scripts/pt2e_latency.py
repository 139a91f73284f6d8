"""Deploy latency of stage Q's two engines under the rounds protocol: issue 14's latency criterion.

    python scripts/pt2e_latency.py                 # mini width (0.25), batch 1, 1 and 2 threads (~5 min quiet)
    python scripts/pt2e_latency.py --width 1.0     # full-width ResNet-18
    python scripts/pt2e_latency.py --quick         # 5 short rounds: a smoke test, not a result

PT2E reaches parity only if its deploy latency is no worse than FX's fastest path "under the same
protocol". Both engines QAT-prepare the same ResNet-18 CIFAR (random weights; BN statistics and
activation ranges calibrated on real CIFAR-10 images, then frozen, as after stage Q; dense and INT8
kernels do the same work whatever the values), convert, and write their deploy forms:

* FX: the pqd deploy file on torch eager (quantized x86 kernels), and its QDQ ONNX export
  (``measure.onnx_runtime.export_qat_onnx``) on ONNX Runtime and (with the extra) OpenVINO;
* PT2E: the ``torch.export`` program (``deploy.save_artifact``: ``.pt2``, no pickled code) under
  ``torch.compile`` with inductor's freezing (``quantize.compile_for_cpu``: oneDNN INT8 kernels), and
  its QDQ ONNX export (the same ``export_qat_onnx``) on ONNX Runtime and OpenVINO.

All are timed with ``pqd_lib.measure.rounds.compare`` against FP32 eager (the reference): fresh
pinned processes, compile/session time recorded apart (``compile``), >= 15 rotated rounds, relative
latency median with bootstrap CI. The last line is
``pt2e-fastest/fx-fastest = R1 (1 thread), R2 (2 threads)`` from one run (parity: R <= 1.0, within
the CIs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.latency import HEADER, fmt, protocol, qat_prepared, real_images  # noqa: E402
from pqd_lib import config as C  # noqa: E402
from pqd_lib import hardware  # noqa: E402
from pqd_lib.deploy import save_artifact  # noqa: E402
from pqd_lib.measure import onnx_runtime, openvino_runtime, rounds  # noqa: E402
from pqd_lib.measure.rounds import Candidate  # noqa: E402
from pqd_lib.models import build  # noqa: E402
from pqd_lib.stages import quantize as quantize_stage  # noqa: E402

REFERENCE = "FP32 eager (reference)"
FX = ("FX INT8 torch eager", "FX QDQ ONNX Runtime", "FX QDQ OpenVINO")
PT2E = ("PT2E INT8 torch.compile", "PT2E QDQ ONNX Runtime", "PT2E QDQ OpenVINO")


def artifacts(arch: dict, images: torch.Tensor, work: Path, with_openvino: bool) -> tuple[list, Candidate]:
    """Both engines' deploy forms as saved artifacts: (candidates, reference)."""
    torch.manual_seed(0)
    dense = build(**arch).eval()
    reduce_range = C.QuantizeConfig().reduce_range
    ref = Candidate(REFERENCE, save_artifact(dense, work / "fp32.pt", arch=arch))
    t = time.time()
    fx = qat_prepared(dense, images, reduce_range, "fx")
    fx_int8 = save_artifact(quantize_stage.convert(fx), work / "fx_int8.pt", arch=arch, reduce_range=reduce_range)
    fx_onnx = onnx_runtime.export_qat_onnx(fx, work / "fx_qat.onnx")
    print(f"(FX: prepare, convert, ONNX export {time.time() - t:.0f} s)")
    t = time.time()
    pt = quantize_stage.convert(qat_prepared(dense, images, reduce_range, "pt2e"))
    pt_program = save_artifact(pt, work / "pt2e_int8.pt2", arch=arch)
    pt_onnx = onnx_runtime.export_qat_onnx(pt, work / "pt2e_int8.onnx")
    print(f"(PT2E: prepare, convert, torch.export + ONNX export {time.time() - t:.0f} s)")
    cands = [Candidate(FX[0], fx_int8), Candidate(FX[1], fx_onnx, "onnxruntime"),
             Candidate(PT2E[0], pt_program, "torch-compile"), Candidate(PT2E[1], pt_onnx, "onnxruntime")]
    if with_openvino:
        cands += [Candidate(FX[2], fx_onnx, "openvino"), Candidate(PT2E[2], pt_onnx, "openvino")]
    return cands, ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.25, help="ResNet-18 width (0.25 = the mini/standard grid)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="5 short rounds: a smoke test, not a result")
    args = parser.parse_args()
    arch = {"name": "resnet18", "num_classes": 10, "width": args.width}
    with_openvino = openvino_runtime.version() is not None
    images, source = real_images(256)
    print(f"machine: {hardware.describe()}\n"
          f"model: ResNet-18 CIFAR width {args.width}, random weights; calibration: {source}; "
          f"OpenVINO {'yes' if with_openvino else 'not installed'}\n")
    with tempfile.TemporaryDirectory(prefix="pqd-pt2e-latency-") as tmp:
        cands, ref = artifacts(arch, images, Path(tmp), with_openvino)
        cfg = protocol(args.quick, tuple(args.threads), 1)
        print(HEADER)
        rows = rounds.compare(cands, ref, cfg, log=lambda s: print("  " + s))
    for r in rows:
        print(fmt(r))
    ratios = []
    for threads in args.threads:
        rel = {r["label"]: r["relative_to_reference"] for r in rows
               if r["threads"] == threads and not r.get("error")}
        fx = min((rel[k], k) for k in FX if k in rel)
        pt = min((rel[k], k) for k in PT2E if k in rel)
        print(f"{threads} thread(s): fastest FX = {fx[1]} ({fx[0]:.3f}), fastest PT2E = {pt[1]} ({pt[0]:.3f})")
        ratios.append(f"{pt[0] / fx[0]:.3f} ({threads} thread{'s' if threads > 1 else ''})")
    print("pt2e-fastest/fx-fastest = " + ", ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
