"""Projected time of one seed's `standard` grid (``pqd grid``), from measured throughput of each kind of stage.

    python benchmarks/grid_time.py [--images 2560] [--threads 2] [--fp32-ips 357]

What trains in one seed (``pqd_lib.grid.run_seed``, stage epochs P/Q/D = 1/2/2 by stage, shared
prefixes trained once; tests/test_grid.py checks which stages train) is counted by kind of training:

* FP32, cross-entropy: P alone at 50/70/90 %, D → P (P after D) -- 4 epochs;
* FP32, distillation (teacher forward + student): D alone, D at alpha 0, P → D -- 6 epochs;
* fake-quant (QAT), cross-entropy: Q in Q alone, P → Q, P → D → Q, D → P → Q, D → Q (5 x 2), and P
  after Q in Q → P → D, Q → D → P, D → Q → P, each at both learning-rate settings (6 x 1) -- 16 epochs;
* fake-quant, distillation: D after Q in P → Q → D, Q → P → D, Q → D → P at both settings, and the C4
  control's D -- 14 epochs;

each on 45,000 images, plus the evaluations (every epoch on the 5,000 validation images, after each
stage on validation and the 10,000 test images, and the deploy model's three test passes).

This script measures each kind's training images/s (``images_per_s`` of the stage's training
history) on a slice of the embedded CIFAR-10 images at the standard width, and the evaluation
images/s of an FP32, a fake-quant and an INT8 model, all in this process and on this machine. Two
projections are printed: from the throughput measured here, and from ``--fp32-ips`` (a quiet
machine's FP32 training throughput, by default issue 15's AVX2 pilot, 357 images/s) scaled by the
ratios measured here. The baseline (15 epochs) is not included: ``pqd grid`` finds it cached.
The last line reads ``seed = X h (measured here), Y h (at --fp32-ips)``.
"""

from __future__ import annotations

import argparse
import time

import torch

from pqd_lib import config as C
from pqd_lib import data as D
from pqd_lib import pipeline, train

#: Epochs of each kind of training in one seed's grid (module text), and the fit count (per-epoch validation passes).
EPOCHS = {"fp32 CE": 4, "fp32 KD": 6, "QAT CE": 16, "QAT KD": 14}
#: Pipeline runs in one seed's grid (each ends in a deploy model with three test passes), and stage evaluations.
RUNS, STAGES = 29, 57
TRAIN, VALIDATION, TEST = 45_000, 5_000, 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560, help="training images per measured epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp32-ips", type=float, default=357.0,
                        help="FP32 training images/s of a quiet machine (issue 15's AVX2 pilot: 357)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = C.preset("standard", data={"source": "embedded"}, seed=0,
                   pipeline={"epochs": (1, 1, 1), "validation_images": 0}, train={"epochs": 1})
    full = D.load(cfg.data, seed=0, cache_dir=cfg.cache_path)
    data = full.subset(train=args.images, test=1000, seed=0)
    from pqd_lib import models

    torch.manual_seed(0)
    start = models.build(cfg.model.name, num_classes=10, width=cfg.model.width)
    print(f"width {cfg.model.width}, batch {cfg.train.batch_size}, {args.threads} thread(s), "
          f"{args.images} images per measured epoch, capability {torch.backends.cpu.get_cpu_capability()}")
    ips: dict[str, float] = {}
    _, pqd = pipeline.run_stages(start, cfg, data, order="PQD", teacher=start, cache=False, progress=False)
    _, d = pipeline.run_stages(start, cfg, data, order="D", teacher=start, cache=False, progress=False)
    for kind, record in (("fp32 CE", pqd[0]), ("QAT CE", pqd[1]), ("QAT KD", pqd[2]), ("fp32 KD", d[0])):
        ips[kind] = record["history"][-1]["images_per_s"]
    int8, _ = pipeline.run_stages(start, cfg, data, order="Q", cache=False, progress=False)
    evals = {}
    for kind, m in (("fp32", start), ("INT8", int8)):
        t = time.perf_counter()
        n = train.evaluate(m, data, batch_size=cfg.train.eval_batch_size)["images"]
        evals[kind] = n / (time.perf_counter() - t)
    for kind, value in ips.items():
        print(f"train {kind:8s} {value:7.0f} images/s ({value / ips['fp32 CE']:.2f} x FP32 CE)")
    for kind, value in evals.items():
        print(f"eval  {kind:8s} {value:7.0f} images/s")
    # A fake-quant forward pass costs what QAT training costs relative to FP32 (the same observers run).
    evals["fake-quant"] = evals["fp32"] * ips["QAT CE"] / ips["fp32 CE"]

    def project(scale: float) -> float:
        training = sum(EPOCHS[k] * TRAIN / (ips[k] * scale) for k in EPOCHS)
        fit_evals = sum(EPOCHS.values()) * VALIDATION / (evals["fake-quant"] * scale)  # per-epoch validation passes
        stage_evals = STAGES * (VALIDATION + TEST) / (evals["fake-quant"] * scale)  # most stages are fake-quant
        deploy_evals = RUNS * 3 * TEST / (evals["INT8"] * scale)
        return training + fit_evals + stage_evals + deploy_evals

    here, quiet = project(1.0), project(args.fp32_ips / ips["fp32 CE"])
    print(f"seed = {here / 3600:.1f} h (measured here), {quiet / 3600:.1f} h (at {args.fp32_ips:g} FP32 images/s)")


if __name__ == "__main__":
    main()
