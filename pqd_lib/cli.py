"""The ``pqd`` command line.

    pqd train  [PARAMS.yaml] [--preset P] [--source S] [--set key=value ...]   train/cache the FP32 baseline
    pqd run    [PARAMS.yaml] [--order PQD] ...                                 run the ordered pipeline
    pqd batch  --backbone B --dataset D --preset P --seeds 0 1 2 [--commit]    run the notebooks with papermill
    pqd grid   --backbone B --dataset D --preset standard --seeds 0 [--commit] train each seed's whole grid, no timing
    pqd report [--results-dir reports/results] [--out reports]                 tables, figures, verdicts from records
    pqd retime [--backbone B --dataset D --preset P] [--plan]                  re-time old latencies on this machine

Every subcommand resolves a :class:`~pqd_lib.config.RunConfig` the same way as the notebooks
(``parameters/*.yaml`` + preset + overrides) and prints one-line errors for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from collections.abc import Sequence

from . import batch, pipeline, results, train
from . import config as config_mod

__all__ = ["main", "resolve_config"]


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", help="parameters/<backbone>_<dataset>.yaml (default: built-in defaults)")
    p.add_argument("--preset", choices=sorted(config_mod.PRESETS), help="how much to compute: smoke, mini or paper")
    p.add_argument("--source", choices=["torchvision", "folder", "embedded"],
                   help="data source (shorthand for --set data.source=...)")
    p.add_argument("--root", help="data root (shorthand for --set data.root=...)")
    p.add_argument("--seed", type=int, help="random seed (shorthand for --set seed=...)")
    p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def resolve_config(args: argparse.Namespace) -> config_mod.RunConfig:
    """The RunConfig described by the common command-line options."""
    cfg = config_mod.load(args.params, preset=args.preset)
    assignments = config_mod.parse_assignments(args.assignments)
    for key, value in (("data.source", args.source), ("data.root", args.root), ("seed", args.seed)):
        if value is not None:
            assignments.setdefault(key, value)
    return config_mod.apply_overrides(cfg, assignments) if assignments else cfg


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(config_mod.to_yaml(cfg), end="")
        return 0
    start = time.perf_counter()
    _, info = train.train_baseline(cfg)
    seconds = time.perf_counter() - start
    test = info["test"]
    status = "loaded from cache" if info["cached"] else f"trained in {seconds:.0f} s"
    print(f"baseline {cfg.model.name} (width {cfg.model.width}) on {cfg.data.dataset} [{cfg.data.source}]: "
          f"{status}; checkpoint {info['path']}")
    if info["history"]:
        last = info["history"][-1]
        print(f"epochs {len(info['history'])}, last epoch {last.get('images_per_s', float('nan')):.0f} images/s")
    print(f"test top-1 = {test['top1']:.2f} %  (top-5 {test['top5']:.2f} %, {test['images']} test images; "
          f"chance = {100 / cfg.num_classes:.0f} %)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.order:
        cfg = config_mod.apply_overrides(cfg, {"pipeline.order": args.order})
    if args.print_config:
        print(config_mod.to_yaml(cfg), end="")
        return 0
    _, records = pipeline.run(cfg)
    for rec in records:
        print(json.dumps({k: v for k, v in rec.items() if not isinstance(v, (list, dict))}, default=str))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    # Everything is checked before anything is created (no empty results or runs folders on bad input).
    notebooks = batch.notebook_names(batch.NOTEBOOKS_DIR, args.notebooks)
    runs = batch.plan(args.backbone, args.dataset, args.preset, args.seeds, data_source=args.source,
                      data_root=args.root, results_dir=args.results_dir, runs_dir=args.runs_dir,
                      cache_dir=args.cache_dir)
    if args.commit:
        batch.git_root(args.results_dir)  # one line before any notebook runs when there is no work tree
    result = batch.run_batch(runs, notebooks, progress=not args.no_progress,
                             after_run=batch.commit_run if args.commit else None,
                             keep_notebooks=args.keep_notebooks)
    return 0 if result.ok else 1


def _cmd_grid(args: argparse.Namespace) -> int:
    runs = batch.plan(args.backbone, args.dataset, args.preset, args.seeds, data_source=args.source,
                      data_root=args.root, results_dir=args.results_dir, runs_dir=args.runs_dir,
                      cache_dir=args.cache_dir, overrides=config_mod.parse_assignments(args.assignments))
    if args.commit:
        batch.git_root(args.results_dir)  # one line before anything trains when there is no work tree
    result = batch.run_grid(runs, latency=args.latency, progress=not args.no_progress,
                            after_run=batch.commit_run if args.commit else None)
    return 0 if result.ok else 1


def _cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import claims, report  # the [report] extra (matplotlib, seaborn, scipy): only this command needs it

    start = time.perf_counter()
    records = results.load_results(args.results_dir)
    written = report.write_reports(records, args.out, backbone=args.backbone, dataset=args.dataset,
                                   preset=args.preset, machine=args.machine)
    if written and not any((args.backbone, args.dataset, args.preset, args.machine)):
        # Every backbone, measured or not, at the top of the README: a reader sees all three at a glance.
        summary = report.backbone_summary(records, written, args.out)
        written[("summary",)] = [report.write_readme_summary(summary, Path(args.out) / "README.md",
                                                             c6_statement=claims.c6(records)[0]["statement"])]
    if not written:
        print(f"pqd report: no records under {args.results_dir} match the selection; fill the store with "
              "pqd batch (see reports/README.md)", file=sys.stderr)
        return 1
    for key, paths in written.items():
        if key == ("c6",):
            for row in claims.c6(records):
                print(f"C6 (every cell, per CPU class): {row['verdict']}: {paths[0]}")
            continue
        if key == ("summary",):
            print(f"cross-backbone summary (every backbone, measured or not): {paths[0]}")
            continue
        print(f"{' '.join(key)}: {len(paths)} files in {Path(paths[-1]).parent}/")
        # The verdicts as written (a cell's latency may come from re-timed records: pqd_lib.latency_source).
        table = next(p for p in paths if Path(p).name == "verdicts.csv")
        for row in pd.read_csv(table).itertuples():
            print(f"  {row.claim}  {row.verdict:<32}  {row.statement}")
    print(f"{len(records)} records read in {time.perf_counter() - start:.1f} s")
    return 0


def _cmd_retime(args: argparse.Namespace) -> int:
    import dataclasses

    from .measure import retime

    records = results.load_results(args.results_dir)
    for column, value in (("backbone", args.backbone), ("dataset", args.dataset), ("preset", args.preset),
                          ("machine", args.source_machine)):
        if value is not None:
            records = records[records[column] == value]
    if args.run_ids:
        records = records[records["run_id"].isin(args.run_ids)]
    if args.threads:
        records = records[records["threads"].isin(args.threads)]
    if args.batch_sizes:
        records = records[records["batch_size"].isin(args.batch_sizes)]
    # 10 warm-up calls, not 50: a full-width batch of 32 takes ~0.5 s per call, and the rounds keep every model warm.
    # 64 calibration images for ONNX Runtime's own INT8 (not 256): latency does not depend on the calibration.
    cfg = config_mod.MeasureConfig(warmup=10, calibration_images=64)
    if args.quick:  # a smoke test of the machinery: numbers worth nothing
        cfg = dataclasses.replace(cfg, rounds=3, block_seconds=0.02, warmup=2, max_reruns=0)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("rounds", args.rounds), ("block_seconds", args.block_seconds))
                                      if v is not None})
    needed = retime.plan(records)
    if not needed:
        print("pqd retime: no single-model-protocol latency in the selected records", file=sys.stderr)
        return 1
    signatures = {sig for sig, _, _ in needed}
    print(f"{len(records)} records selected: {sum(len(v) for v in needed.values())} latencies, "
          f"{len(signatures)} deploy signatures, {len(needed)} (signature, threads, batch) points; about "
          f"{retime.estimate_seconds(needed, cfg) / 60:.0f} min on a quiet machine "
          f"({cfg.rounds} rounds of {cfg.block_seconds:g} s blocks)")
    if args.plan:
        for (sig, threads, batch), recs in sorted(needed.items(), key=lambda kv: (kv[0][0].width, kv[0][1], kv[0][2],
                                                                                   kv[0][0].label)):
            print(f"  w{sig.width:g} {threads}t b{batch:<3} {sig.label:36s} shared by {len(recs)} record(s)", flush=True)
        return 0
    start = time.perf_counter()
    out = retime.retime(records, cfg, results_dir=None if args.dry_run else args.results_dir,
                        log=lambda s: print(s, flush=True))
    failed = [r for r in out if r.get("error")]
    print(f"{len(out)} re-timed records ({len(failed)} failed) in {time.perf_counter() - start:.0f} s"
          + ("" if args.dry_run else f", written to {args.results_dir}/{results.this_machine()}/"))
    for r in failed:
        print(f"  {r['model']} · {r['runtime']} {r['threads']}t b{r['batch_size']}: {r['error']}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pqd`` command."""
    parser = argparse.ArgumentParser(prog="pqd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or load from cache) the FP32 baseline and print its accuracy")
    _add_config_args(p_train)
    p_train.set_defaults(func=_cmd_train)
    p_run = sub.add_parser("run", help="run the ordered pipeline (e.g. --order PQD) from the cached baseline")
    _add_config_args(p_run)
    p_run.add_argument("--order", help="stage order over P, Q, D, e.g. PQD (shorthand for --set pipeline.order=...)")
    p_run.set_defaults(func=_cmd_run)
    p_batch = sub.add_parser("batch", help="run the numbered notebooks with papermill, one folder per run, resumable")
    p_batch.add_argument("--backbone", required=True, help="resnet18, wrn28_10, vgg16_bn, a comma-separated list of them, or all")
    p_batch.add_argument("--dataset", required=True, help="cifar10, cifar100 or all")
    p_batch.add_argument("--preset", required=True, help="smoke, mini, standard or paper")
    p_batch.add_argument("--seeds", type=int, nargs="+", default=[0])
    p_batch.add_argument("--notebooks", help="which notebooks, e.g. 01-05 or 01,07 (default: all)")
    p_batch.add_argument("--source", choices=["torchvision", "folder", "embedded"], help="data source")
    p_batch.add_argument("--root", help="data root for the torchvision or folder source")
    p_batch.add_argument("--results-dir", default=config_mod.DEFAULT_RESULTS_DIR, help="where records are appended")
    p_batch.add_argument("--runs-dir", default="reports/runs", help="where executed notebooks are kept")
    p_batch.add_argument("--cache-dir", help="checkpoints and decoded data (default $PQD_CACHE or ~/.cache/pqd)")
    p_batch.add_argument("--keep-notebooks", nargs="?", const="reports", metavar="REPORTS_DIR",
                         help="copy seed 0's executed notebooks (real outputs, size-checked) to "
                              "REPORTS_DIR/<backbone>-<dataset>-<preset>/notebooks/ (default reports)")
    p_batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_batch.add_argument("--commit", action="store_true",
                         help="git-commit each run's records and done markers as soon as its notebooks finish "
                              "(one commit per backbone x dataset x seed), so a later session continues")
    p_batch.set_defaults(func=_cmd_batch)
    p_grid = sub.add_parser("grid", help="train and record each seed's whole grid (baseline, singles, orders, "
                                         "controls) through the stage cache; latency deferred; resumable")
    p_grid.add_argument("--backbone", required=True, help="resnet18, wrn28_10, vgg16_bn or all")
    p_grid.add_argument("--dataset", required=True, help="cifar10, cifar100 or all")
    p_grid.add_argument("--preset", required=True, help="standard (the decisive grid), mini or smoke")
    p_grid.add_argument("--seeds", type=int, nargs="+", default=[0])
    p_grid.add_argument("--source", choices=["torchvision", "folder", "embedded"], help="data source")
    p_grid.add_argument("--root", help="data root for the torchvision or folder source")
    p_grid.add_argument("--results-dir", default=config_mod.DEFAULT_RESULTS_DIR,
                        help="the store a finished seed's records are published to")
    p_grid.add_argument("--runs-dir", default="reports/runs", help="where each seed's lock and done marker live")
    p_grid.add_argument("--cache-dir", help="checkpoints and decoded data (default $PQD_CACHE or ~/.cache/pqd)")
    p_grid.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set quantize.engine=fx (repeatable; the run id follows the "
                             "config hash, so notebooks run by pqd batch without it name another run)")
    p_grid.add_argument("--latency", action="store_true",
                        help="the separate latency phase: replay each trained seed from the cache and time its "
                             "models (rounds protocol); run it on a quiet machine, never beside training")
    p_grid.add_argument("--commit", action="store_true",
                        help="git-commit each seed's records and done marker as soon as the seed is published")
    p_grid.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_grid.set_defaults(func=_cmd_grid)
    p_report = sub.add_parser("report", help="regenerate reports/ (tables, figures, claim verdicts) from the records")
    p_report.add_argument("--results-dir", default=config_mod.DEFAULT_RESULTS_DIR, help="the results store to read")
    p_report.add_argument("--out", default="reports", help="where tables/ and figures/ are written")
    p_report.add_argument("--backbone", help="keep one backbone's records (default: all)")
    p_report.add_argument("--dataset", help="keep one dataset's records (default: all)")
    p_report.add_argument("--preset", help="keep one preset's records (default: all)")
    p_report.add_argument("--machine", help="keep one machine's records (default: each machine its own folder)")
    p_report.set_defaults(func=_cmd_report)
    p_retime = sub.add_parser("retime", help="re-time the latencies of committed runs under the rounds protocol on "
                                             "this machine (architecture only; training records untouched)")
    p_retime.add_argument("--results-dir", default=config_mod.DEFAULT_RESULTS_DIR,
                          help="the results store to read, and to write the re-timed records to")
    p_retime.add_argument("--backbone", help="keep one backbone's runs (default: all)")
    p_retime.add_argument("--dataset", help="keep one dataset's runs (default: all)")
    p_retime.add_argument("--preset", help="keep one preset's runs (default: all)")
    p_retime.add_argument("--source-machine", help="keep the runs of one machine (default: all)")
    p_retime.add_argument("--run-ids", nargs="+", help="keep these runs only")
    p_retime.add_argument("--threads", type=int, nargs="+", help="re-time only these thread counts (default: all recorded)")
    p_retime.add_argument("--batch-sizes", type=int, nargs="+", help="re-time only these batch sizes (default: all recorded)")
    p_retime.add_argument("--rounds", type=int, help="rounds per comparison (default: measure.rounds, 15)")
    p_retime.add_argument("--block-seconds", type=float, help="seconds per timed block (default 0.2)")
    p_retime.add_argument("--plan", action="store_true", help="list the signatures and the expected time; time nothing")
    p_retime.add_argument("--quick", action="store_true", help="3 short rounds: a smoke test, not a result")
    p_retime.add_argument("--dry-run", action="store_true", help="time, but write no records")
    p_retime.set_defaults(func=_cmd_retime)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pqd`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:  # our errors are ValueErrors with one-line messages
        print(f"pqd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
