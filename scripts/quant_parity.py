"""Parity of stage Q's two engines: torch.ao FX (the reference) against torchao PT2E (issue 14).

For each seed of the ``mini`` preset (ResNet-18 width 0.25, CIFAR-10): one FP32 baseline (shared
through ``PQD_CACHE``), then the orders ``Q`` and ``PQ`` through the real pipeline with
``quantize.engine`` = ``fx`` and ``pt2e`` and the same activation range. Prints one JSON line per
run and a parity table:

* INT8 top-1 of each engine's deploy form (parity: within +-0.3 pp), for PT2E both the eager
  reference graph and the ``torch.compile``d one (the form that is deployed);
* INT8-vs-fake-quant top-1 agreement (>= 99 %) and logit SQNR;
* zeros kept: every weight P masked is the integer 0 in the INT8 model (PQ runs);
* compile time of the PT2E deploy form, measured on its own;
* latency, batch 1, 1 thread: FX INT8 (quantized x86 kernels, eager) against PT2E compiled, timed
  alternately in short blocks in this one process, reported only as a ratio, median over blocks.
  On a machine others are using, label it so ("loaded machine"); absolute times are not printed.

Usage::

    PQD_CACHE=/work/cache python scripts/quant_parity.py --root /work/data/cifar10-jpeg --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


def _time_block(model, x, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        model(x)
    return (time.perf_counter() - start) / runs


@torch.no_grad()
def latency_ratio(fx_int8, pt2e_compiled, *, blocks: int = 15, runs: int = 20) -> float:
    """Median over alternating blocks of (PT2E compiled time / FX INT8 time), batch 1, this process's threads."""
    x = torch.randn(1, 3, 32, 32)
    for m in (fx_int8, pt2e_compiled):
        _time_block(m, x, runs)  # warm-up (the compiled model was compiled before)
    ratios = []
    for b in range(blocks):
        order = (fx_int8, pt2e_compiled) if b % 2 == 0 else (pt2e_compiled, fx_int8)
        t = {id(m): _time_block(m, x, runs) for m in order}
        ratios.append(t[id(pt2e_compiled)] / t[id(fx_int8)])
    return statistics.median(ratios)


def zeros_kept(masks: dict[str, torch.Tensor], int8: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """Whether every masked weight is the integer 0 in the INT8 weights; and how many were checked."""
    checked = 0
    for name, mask in masks.items():
        if name not in int8 or int8[name].shape != mask.shape:
            return False, checked
        pruned = ~mask.cpu()
        if bool((int8[name][pruned] != 0).any()):
            return False, checked
        checked += int(pruned.sum())
    return checked > 0, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="CIFAR-10 image folder (data.source folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", nargs="+", default=["Q", "PQ"])
    parser.add_argument("--reduce-range", choices=["true", "false"], default="true",
                        help="activation range for both engines (true = 0..127)")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--label", default="loaded machine", help="how the latency ratio was measured")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="train the FP32 baseline this many epochs instead of the preset's (a quicker, "
                             "weaker baseline; the parity is between engines from the same one)")
    args = parser.parse_args(argv)

    from pqd_lib import config as C, data as data_mod, pipeline, train
    from pqd_lib.stages import prune as P
    from pqd_lib.stages import quantize as Q
    from pqd_lib.stages import quantize_pt2e as Q2

    torch.set_num_threads(1)
    caps = {k: v for k, v in torch.cpu.get_capabilities().items() if v is True or not isinstance(v, bool)}
    print(json.dumps({"cpu_capabilities": caps, "torch": torch.__version__}), flush=True)
    rows = []
    for seed in args.seeds:
        train_override = {} if args.baseline_epochs is None else {"train": {"epochs": args.baseline_epochs}}
        cfg = C.preset(args.preset, data={"source": "folder", "root": args.root}, seed=seed, **train_override)
        data = data_mod.load(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_path)
        baseline, info = train.train_baseline(cfg, data, progress=False)
        for order in args.orders:
            deployed = {}
            for engine in ("fx", "pt2e"):
                c = C.with_section(cfg, "quantize", engine=engine, reduce_range=args.reduce_range == "true")
                captured = {}
                original = pipeline.deploy_form

                def grab(model, **kw):
                    captured["fake_quant"] = model
                    return original(model, **kw)

                pipeline.deploy_form = grab
                try:
                    start = time.perf_counter()
                    deploy, recs = pipeline.run_stages(baseline, c, data, order=order, progress=False,
                                                       extra_record={"data_source": data.source})
                    wall = time.perf_counter() - start
                finally:
                    pipeline.deploy_form = original
                r = recs[-1]
                fake = captured["fake_quant"]
                kept, checked = zeros_kept(P.masks(fake), Q.int8_weights(deploy)) if "P" in order else (None, 0)
                row = {"seed": seed, "order": order, "engine": engine, "baseline_top1": info["test"]["top1"],
                       "fake_quant_top1": r["fake_quant_top1"], "int8_top1": r["deploy_top1"],
                       "agreement": r["int8_agreement"], "sqnr_db": r["int8_sqnr_db"], "zeros_kept": kept,
                       "zeros_checked": checked, "deploy_sparsity": r["deploy_sparsity"],
                       "convert_s": round(r["convert_s"], 1), "wall_s": round(wall)}
                if engine == "pt2e":
                    compiled = Q2.compile_int8(deploy)
                    start = time.perf_counter()
                    with torch.no_grad():
                        compiled(torch.zeros(1, 3, 32, 32))
                    row["compile_s_batch1"] = round(time.perf_counter() - start, 1)
                    with torch.no_grad():
                        fid = Q.fidelity(fake, compiled, data, batch_size=c.train.eval_batch_size)
                    row.update({"compiled_int8_top1": fid["int8_top1"], "compiled_agreement": fid["agreement"],
                                "compiled_sqnr_db": fid["sqnr_db"]})
                    deployed["pt2e"] = compiled
                else:
                    deployed["fx"] = deploy
                rows.append(row)
                print(json.dumps(row), flush=True)
            ratio = latency_ratio(deployed["fx"], deployed["pt2e"])
            print(json.dumps({"seed": seed, "order": order, "latency_pt2e_compiled_over_fx": round(ratio, 3),
                              "measured": args.label, "batch": 1, "threads": 1}), flush=True)
            rows[-1]["latency_pt2e_compiled_over_fx"] = round(ratio, 3)

    print("\nseed order | FX int8 | PT2E int8 (eager / compiled) | d pp | agree FX / PT2E eager / compiled "
          "| zeros kept | PT2E/FX latency")
    by = {(r["seed"], r["order"], r["engine"]): r for r in rows}
    for seed in args.seeds:
        for order in args.orders:
            fx, pt = by.get((seed, order, "fx")), by.get((seed, order, "pt2e"))
            if not fx or not pt:
                continue
            print(f"{seed} {order:3s} | {fx['int8_top1']:.2f} | {pt['int8_top1']:.2f} / {pt['compiled_int8_top1']:.2f} "
                  f"| {pt['compiled_int8_top1'] - fx['int8_top1']:+.2f} | {fx['agreement']:.2f} / {pt['agreement']:.2f} / "
                  f"{pt['compiled_agreement']:.2f} | {fx['zeros_kept']} / {pt['zeros_kept']} "
                  f"| {pt.get('latency_pt2e_compiled_over_fx')} ({args.label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
