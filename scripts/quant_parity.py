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
* QAT training throughput (images/s) of each engine: the Q stage's own epochs (as the pipeline
  runs them), and with ``--throughput`` a paired measurement -- both engines' prepared models from
  the same baseline train alternately in short blocks of optimiser steps (batch 128, real
  batches), ratio median over blocks, so a loaded machine slows both alike;
* with ``--full-range``, the issue-13 by-product: FX order Q with full-range activations forced
  through on a CPU without VNNI (0..255, the saturating kernels), to price 7-bit activations;
* with ``--latency``: FX INT8 (quantized x86 kernels, eager) against PT2E compiled, batch 1, 1
  thread, timed alternately in short blocks in this one process, reported only as a ratio, median
  over blocks, labelled (``--label``). The deploy latency comparison proper is
  ``scripts/pt2e_latency.py`` (the rounds protocol, fresh processes).

Usage::

    PQD_CACHE=/work/cache python scripts/quant_parity.py --root /work/data/cifar10-jpeg --seeds 0 1 2 \
        --full-range --throughput --out /tmp/parity.jsonl

``--table FILE...`` prints the parity table (per seed, order and engine, and paired over seeds) from
such JSON lines without running anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import copy
import json
import statistics
import sys
import time
from typing import Any

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


def qat_throughput(baseline, cfg, data, *, blocks: int = 4, steps: int = 3) -> dict[str, float]:
    """Training images/s of each engine's QAT model (FX, PT2E), measured alternately in blocks.

    Both engines prepare the same `baseline` with `cfg`'s quantization settings and train with SGD on
    the same un-augmented training batches (batch ``cfg.train.batch_size``), observers and BN
    updating, as in the first part of stage Q. One warm-up block each; then `blocks` blocks of
    `steps` optimiser steps, engines alternating (order rotated), so both see the same load.
    Returns images/s per engine (median over blocks) and the median of the per-block ratio.
    """
    from pqd_lib import data as data_mod
    from pqd_lib import train
    from pqd_lib.stages import quantize as Q

    ex = Q.example_inputs(data)
    prepared = {e: Q.prepare_qat(copy.deepcopy(baseline).cpu(), reduce_range=cfg.quantize.reduce_range,
                                 example_inputs=ex, engine=e) for e in ("fx", "pt2e")}
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = [b for _, b in zip(range(steps), data_mod.batches(data, "train", cfg.train.batch_size, shuffle=False,
                                                              augment=False))]
    optimizers = {e: train.make_optimizer(m, lr=cfg.quantize.lr, momentum=cfg.quantize.momentum,
                                          weight_decay=cfg.quantize.weight_decay, nesterov=cfg.train.nesterov)
                  for e, m in prepared.items()}

    def block(engine: str) -> float:
        model, opt = prepared[engine], optimizers[engine]
        model.train()
        start = time.perf_counter()
        images = 0
        for x, y in batches:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(y)
        return images / (time.perf_counter() - start)

    for e in prepared:
        block(e)  # warm-up
    rates: dict[str, list[float]] = {"fx": [], "pt2e": []}
    ratios = []
    for b in range(blocks):
        order = ("fx", "pt2e") if b % 2 == 0 else ("pt2e", "fx")
        r = {e: block(e) for e in order}
        for e in order:
            rates[e].append(r[e])
        ratios.append(r["pt2e"] / r["fx"])
    return {"fx_images_per_s": statistics.median(rates["fx"]), "pt2e_images_per_s": statistics.median(rates["pt2e"]),
            "pt2e_over_fx": statistics.median(ratios), "blocks": blocks, "steps_per_block": steps,
            "batch_size": cfg.train.batch_size}


@contextlib.contextmanager
def saturation_forced():
    """Within the block pqd believes the CPU has AVX-512 VNNI, so a full-range model trains and converts
    here: the by-product of issue 13 measures what the saturating kernels do to it (never a deploy setting)."""
    from pqd_lib import hardware

    original = hardware.has_int8_vnni
    hardware.has_int8_vnni = lambda: True
    try:
        yield
    finally:
        hardware.has_int8_vnni = original


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


def _run(baseline, cfg, data, order: str, *, force_saturation: bool = False) -> tuple[dict, Any, Any, dict]:
    """One pipeline run of `order`; returns (last record, deploy model, fake-quant model, Q-stage record)."""
    from pqd_lib import pipeline

    captured = {}
    original = pipeline.deploy_form

    def grab(model, **kw):
        captured["fake_quant"] = model
        return original(model, **kw)

    pipeline.deploy_form = grab
    try:
        with saturation_forced() if force_saturation else contextlib.nullcontext():
            start = time.perf_counter()
            deploy, recs = pipeline.run_stages(baseline, cfg, data, order=order, progress=False,
                                               extra_record={"data_source": data.source})
            wall = time.perf_counter() - start
    finally:
        pipeline.deploy_form = original
    q_record = next(r for r in recs if r.get("stage") == "Q")
    return {**recs[-1], "wall_s": wall}, deploy, captured["fake_quant"], q_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="CIFAR-10 image folder (data.source folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--orders", nargs="+", default=["Q", "PQ"])
    parser.add_argument("--engines", nargs="+", default=["fx", "pt2e"], choices=["fx", "pt2e"])
    parser.add_argument("--reduce-range", choices=["true", "false"], default="true",
                        help="activation range for both engines (true = 0..127)")
    parser.add_argument("--full-range", action="store_true",
                        help="also FX order Q with 0..255 activations forced through (issue 13's 7-bit cost)")
    parser.add_argument("--throughput", action="store_true", help="paired QAT training throughput, per seed")
    parser.add_argument("--latency", action="store_true", help="in-process FX/PT2E-compiled latency ratio")
    parser.add_argument("--eval-images", type=int, default=500,
                        help="test images the pipeline's own per-epoch/stage evaluations use (reported numbers "
                             "always use the whole test set)")
    parser.add_argument("--preset", default="mini")
    parser.add_argument("--label", default="loaded machine", help="how the latency ratio was measured")
    parser.add_argument("--out", help="append every JSON line to this file too")
    parser.add_argument("--table", nargs="+", metavar="JSONL", help="only print the table of these result files")
    parser.add_argument("--baseline-seed", type=int, default=None,
                        help="start every seed's stages from this seed's baseline and data (QAT-seed replicates: "
                             "the seed then varies only the stages' own randomness, not the baseline)")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="train the FP32 baseline this many epochs instead of the preset's (a quicker, "
                             "weaker baseline; the parity is between engines from the same one)")
    args = parser.parse_args(argv)
    if args.table:
        rows = [json.loads(line) for f in args.table for line in open(f) if line.strip()]
        print_table(rows)
        return 0
    if not args.root:
        parser.error("--root is required unless --table is given")

    from pqd_lib import config as C, data as data_mod, train
    from pqd_lib.stages import prune as P
    from pqd_lib.stages import quantize as Q
    from pqd_lib.stages import quantize_pt2e as Q2

    torch.set_num_threads(1)
    out = open(args.out, "a") if args.out else None

    def emit(row: dict) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    caps = {k: v for k, v in torch.cpu.get_capabilities().items() if v is True or not isinstance(v, bool)}
    emit({"cpu_capabilities": caps, "torch": torch.__version__})
    for seed in args.seeds:
        train_override = {} if args.baseline_epochs is None else {"train": {"epochs": args.baseline_epochs}}
        base_seed = seed if args.baseline_seed is None else args.baseline_seed
        base_cfg = C.preset(args.preset, data={"source": "folder", "root": args.root}, seed=base_seed,
                            **train_override)
        data = data_mod.load(base_cfg.data, seed=base_seed, cache_dir=base_cfg.cache_path)
        baseline, info = train.train_baseline(base_cfg, data, progress=False)
        cfg = dataclasses.replace(base_cfg, seed=seed)
        rr = args.reduce_range == "true"
        # The pipeline's own evaluations (per epoch, per stage, deploy) run on a class-balanced subset of
        # the test set: they do not change the trained model (observers paused, no RNG drawn), and on the
        # full test set they would cost several times the training. Every reported number is measured
        # once below, on all test images.
        run_data = data if args.eval_images is None else data.subset(train=None, test=args.eval_images, seed=0)
        runs = [(order, engine, rr) for order in args.orders for engine in args.engines]
        if args.full_range and rr:
            runs.append(("Q", "fx", False))
        deployed = {}
        for order, engine, reduce_range in runs:
            c = C.with_section(cfg, "quantize", engine=engine, reduce_range=reduce_range)
            r, deploy, fake, q_rec = _run(baseline, c, run_data, order, force_saturation=not reduce_range)
            kept, checked = zeros_kept(P.masks(fake), Q.int8_weights(deploy)) if "P" in order else (None, 0)
            q_hist = q_rec.get("history") or []
            row = {"seed": seed, "baseline_seed": base_seed, "order": order, "engine": engine,
                   "reduce_range": reduce_range,
                   "baseline_top1": info["test"]["top1"], "test_images": len(data.y_test),
                   "pipeline_eval_images": len(run_data.y_test)}
            if engine == "fx":
                fid = Q.fidelity(fake, deploy, data, batch_size=c.train.eval_batch_size)
                row.update({"fake_quant_top1": fid["fake_quant_top1"], "int8_top1": fid["int8_top1"],
                            "agreement": fid["agreement"], "sqnr_db": fid["sqnr_db"]})
            else:  # the eager INT8 reference graph on the pipeline's evaluation images only (slow, not deployed)
                row.update({"eager_int8_top1_eval_subset": r["deploy_top1"],
                            "eager_agreement_eval_subset": r["int8_agreement"],
                            "eager_sqnr_db_eval_subset": r["int8_sqnr_db"]})
            row.update({"zeros_kept": kept,
                   "zeros_checked": checked, "deploy_sparsity": r["deploy_sparsity"],
                   "q_stage_cached": q_rec.get("cached_stage"),
                   "q_train_images_per_s": [round(h["images_per_s"], 1) for h in q_hist if "images_per_s" in h],
                   "q_stage_wall_s": round(q_rec.get("wall_s", float("nan")), 1),
                   "convert_s": round(r["convert_s"], 1), "wall_s": round(r["wall_s"])})
            if engine == "pt2e":
                compiled = Q2.compile_int8(deploy)
                start = time.perf_counter()
                with torch.no_grad():
                    compiled(torch.zeros(1, 3, 32, 32))
                row["compile_s_batch1"] = round(time.perf_counter() - start, 1)
                with torch.no_grad():
                    fid = Q.fidelity(fake, compiled, data, batch_size=c.train.eval_batch_size)
                # The deploy form's numbers are the engine's: INT8 = torch.compile'd graph, on all test images.
                row.update({"fake_quant_top1": fid["fake_quant_top1"], "int8_top1": fid["int8_top1"],
                            "agreement": fid["agreement"], "sqnr_db": fid["sqnr_db"], "int8_form": "compiled"})
                deployed[(order, "pt2e")] = compiled
            elif reduce_range == rr:
                deployed[(order, "fx")] = deploy
            emit(row)
        if args.throughput:
            c = C.with_section(cfg, "quantize", reduce_range=rr)
            emit({"seed": seed, "kind": "qat_throughput", **qat_throughput(baseline, c, data)})
        if args.latency:
            for order in args.orders:
                if (order, "fx") in deployed and (order, "pt2e") in deployed:
                    ratio = latency_ratio(deployed[(order, "fx")], deployed[(order, "pt2e")])
                    emit({"seed": seed, "order": order, "kind": "latency",
                          "latency_pt2e_compiled_over_fx": round(ratio, 3), "measured": args.label,
                          "batch": 1, "threads": 1})
    if out:
        out.close()
    return 0


def print_table(rows: list[dict]) -> None:
    """The parity table (per seed and order: FX, PT2E eager and compiled, FX full range) and paired summaries."""
    runs = [r for r in rows if "engine" in r]
    by = {(r["seed"], r["order"], r["engine"], r["reduce_range"]): r for r in runs}
    keys = sorted({(r["seed"], r["order"]) for r in runs}, key=lambda k: (k[1] != "Q", k[1], k[0]))
    print("seed order | FX fq / int8 / agree / SQNR | PT2E fq / int8 (compiled) / agree / SQNR "
          "| d int8 pp (PT2E - FX) | zeros kept FX / PT2E | Q-stage img/s FX / PT2E")
    deltas: dict[str, list[float]] = {}
    for seed, order in keys:
        rrs = {r["reduce_range"] for r in runs if r["seed"] == seed and r["order"] == order}
        rr = True if True in rrs else False
        fx, pt = by.get((seed, order, "fx", rr)), by.get((seed, order, "pt2e", rr))
        if not fx or not pt:
            continue
        d = pt["int8_top1"] - fx["int8_top1"]
        deltas.setdefault(order, []).append(d)
        ips = lambda r: "/".join(f"{v:.0f}" for v in r["q_train_images_per_s"]) or "cached"  # noqa: E731
        print(f"{seed} {order:3s} | {fx['fake_quant_top1']:.2f} / {fx['int8_top1']:.2f} / {fx['agreement']:.2f} / "
              f"{fx['sqnr_db']:.1f} | {pt['fake_quant_top1']:.2f} / {pt['int8_top1']:.2f} / {pt['agreement']:.2f} / "
              f"{pt['sqnr_db']:.1f} | {d:+.2f} | {fx['zeros_kept']} / {pt['zeros_kept']} "
              f"| {ips(fx)} / {ips(pt)}")
    for order, ds in deltas.items():
        spread = f", sd {statistics.stdev(ds):.2f}" if len(ds) > 1 else ""
        print(f"order {order}: PT2E compiled - FX INT8 top-1 over {len(ds)} seeds: mean {statistics.mean(ds):+.2f} pp"
              f"{spread}, range {min(ds):+.2f} .. {max(ds):+.2f}")
    full = [r for r in runs if r["engine"] == "fx" and r["reduce_range"] is False]
    if full:
        print("\nissue 13: FX order Q, 0..127 vs 0..255 forced (saturating kernels, no VNNI): "
              "fake-quant top-1 | INT8 top-1 | agreement | SQNR")
        costs = []
        for f in sorted(full, key=lambda r: r["seed"]):
            s = by.get((f["seed"], "Q", "fx", True))
            if not s:
                continue
            costs.append(f["fake_quant_top1"] - s["fake_quant_top1"])
            print(f"seed {f['seed']}: {s['fake_quant_top1']:.2f} vs {f['fake_quant_top1']:.2f} | {s['int8_top1']:.2f} vs "
                  f"{f['int8_top1']:.2f} | {s['agreement']:.2f} vs {f['agreement']:.2f} | {s['sqnr_db']:.1f} vs "
                  f"{f['sqnr_db']:.1f} dB")
        if costs:
            print(f"fake-quant top-1 gained by 0..255 over 0..127: mean {statistics.mean(costs):+.2f} pp over {len(costs)} seeds")
    for r in rows:
        if r.get("kind") == "qat_throughput":
            print(f"seed {r['seed']} paired QAT training: FX {r['fx_images_per_s']:.0f} img/s, PT2E "
                  f"{r['pt2e_images_per_s']:.0f} img/s, PT2E/FX {r['pt2e_over_fx']:.2f} (median of {r['blocks']} blocks)")


if __name__ == "__main__":
    sys.exit(main())
