"""One seed's whole training grid in one call (issue 15): the runs notebooks 01-06 make, the controls, no timing.

:func:`run_seed` trains, through the stage cache, everything one seed of a cell needs for the
verdicts and writes the same records the notebooks write (same notebook numbers, kinds, model names
and record ids), so :mod:`pqd_lib.claims` and :mod:`pqd_lib.report` read them unchanged:

* 01: the FP32 baseline (measured on the test set);
* 02: P alone at the pipeline's target sparsity and at 70 % and 90 %;
* 03: Q alone; 04: D alone, and D at ``alpha = 0`` (the same epochs of cross-entropy fine-tuning);
* 05: P → Q → D stage by stage, and two controls: C4's P → Q then D's epochs and learning rate of
  cross-entropy only (:func:`pqd_lib.controls.ce_control`), and pre-conditioning -- QAT's accuracy
  drop and ``||W - Q(W)||²`` with and without pruning first (:func:`pqd_lib.controls.preconditioning`);
* 06: the six orders under the ``by_stage`` allocation, with the learning rate capped at Q's after Q
  and with position-independent rates (:func:`pqd_lib.controls.position_independent`).

Validation: :func:`pqd_lib.pipeline.start` holds ``pipeline.validation_images`` training images out
(the ``standard`` preset: 5,000); training evaluates on them, every reported number is the test set's.

Latency is not measured here: two cores that train cannot time (the rounds protocol needs a quiet
machine). Records sit at the protocol point with empty latency and ``latency_deferred`` = True; the
latency phase runs afterwards, when nothing trains (notebooks 01-07 through ``pqd batch``: every
stage is then a cache hit).

Shared prefixes train once: P → Q → D's P is P alone's, its P → Q is the C4 control's and the
pre-conditioning control's, Q alone is the start of Q → P → D, and so on (:mod:`pqd_lib.pipeline`).
A killed seed resumes at its first unfinished stage; records are written only when the whole seed
has run (:func:`pqd_lib.batch.run_grid` stages and publishes them).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as config_mod
from . import controls, labels, models, pipeline, results, train
from .config import RunConfig
from .data import DataSplits
from .labels import Kind, Notebook
from .measure.size import model_sizes
from .measure.table import ModelRun, measure_models
from .measure.timing import resolve_threads

__all__ = ["ORDERS", "PRUNE_TARGETS", "run_seed"]

#: The six orders of the ablation, P → Q → D first.
ORDERS = tuple("".join(p) for p in itertools.permutations("PQD"))
#: P alone is also run at these targets (beside the pipeline's own), as notebook 02 does.
PRUNE_TARGETS = (0.7, 0.9)


def _measure(runs: dict[str, ModelRun], begin: pipeline.Start, cfg: RunConfig, *, notebook: Notebook,
             results_dir: Path, run_id: str) -> list[Path]:
    """Test accuracy, sizes and proxies of `runs` (no latency) as notebook `notebook`'s measured records."""
    table = measure_models(runs, begin.data, reference=models.build(**train.arch_spec(cfg)),
                           arch=train.arch_spec(cfg), latency=False)
    table = table.assign(**begin.record_fields)
    return results.record_measurements(table, {name: run.config for name, run in runs.items()}, notebook=notebook,
                                       results_dir=results_dir, run_id=run_id)


def _append(cfg: RunConfig, record_id: str, results_dir: Path, **fields: Any) -> Path:
    record = results.make_record(cfg, record_id=record_id, **fields)
    return results.append(record, results_dir, replace=True)


def _deploy_record(cfg: RunConfig, model: Any, records: list[dict[str, Any]], record_id: str, results_dir: Path,
                   run_id: str, **extra: Any) -> Path:
    """Notebook 06's record of one order: the deploy model's test accuracy, sparsity, sizes (latency deferred)."""
    order = cfg.pipeline.order
    last = records[-1]
    fields = {k: v for k, v in last.items() if k not in ("history", "top1", "sparsity", "form", "run_id")}
    epochs = pipeline.allocate_epochs(order, cfg.pipeline.epochs, cfg.pipeline.allocation)
    point = {"runtime": "torch-eager", "threads": min(resolve_threads(cfg.measure.threads)),
             "batch_size": min(cfg.measure.batch_sizes),
             "latency_ms_p50": None, "latency_ms_p90": None, "latency_deferred": True}
    own = {"allocation": cfg.pipeline.allocation, "order": order, "epochs": "/".join(map(str, epochs)),
           "p_sparsity": records[order.index("P")]["sparsity"], "run_allocation": cfg.pipeline.allocation,
           "notebook": Notebook.ORDER_ABLATION, "kind": Kind.DEPLOY, "top1": last["deploy_top1"],
           "sparsity": last["deploy_sparsity"], "form": last["deploy_form"], "last_stage_top1": last["top1"],
           "run_id": run_id}
    return _append(cfg, record_id, results_dir, **(fields | model_sizes(model) | point | extra | own))


def run_seed(cfg: RunConfig, *, results_dir: str | Path, run_id: str | None = None, data: DataSplits | None = None,
             progress: bool | None = None, log: Callable[[str], Any] = print) -> dict[str, float]:
    """Train and record one seed's grid of `cfg` (module text); return the wall seconds of each part.

    Records go to `results_dir` (a staging folder when called by :func:`pqd_lib.batch.run_grid`)
    under `run_id` (default ``config.run_id(cfg, cfg.preset)``, what ``pqd batch`` names the seed's
    run), with deterministic ids: running a seed again rewrites its own records.
    """
    results_dir = Path(results_dir)
    run_id = run_id or config_mod.run_id(cfg, cfg.preset or cfg.pipeline.order)
    seconds: dict[str, float] = {}

    def part(name: str, began: float) -> None:
        seconds[name] = round(time.perf_counter() - began, 1)
        log(f"grid {run_id}: {name} done in {seconds[name]:.0f} s")

    t = time.perf_counter()
    begin = pipeline.start(cfg, data, progress=progress)
    log(f"grid {run_id}: baseline {'from cache' if begin.info['cached'] else 'trained'}, test top-1 "
        f"{begin.test_top1:.2f} %, eval split {begin.split['eval_split']}")

    def run(cfg_x: RunConfig, order: str) -> tuple[Any, list[dict[str, Any]]]:
        return pipeline.run(cfg_x, begin.data, order=order, progress=progress, begin=begin)

    baseline = ModelRun(cfg, begin.model, "baseline")
    _measure({labels.BASELINE: baseline}, begin, cfg, notebook=Notebook.BASELINE, results_dir=results_dir,
             run_id=run_id)
    part("01 baseline", t)

    t = time.perf_counter()
    pruned = {labels.BASELINE: baseline}
    for target in sorted({cfg.prune.target_sparsity, *PRUNE_TARGETS}):
        cfg_s = config_mod.with_section(cfg, "prune", target_sparsity=target)
        pruned[labels.pruned(target)] = ModelRun(cfg_s, run(cfg_s, "P")[0], "P")
    _measure(pruned, begin, cfg, notebook=Notebook.PRUNE, results_dir=results_dir, run_id=run_id)
    part("02 P alone (3 targets)", t)

    t = time.perf_counter()
    quantized = {labels.BASELINE: baseline, labels.QUANTIZED: ModelRun(cfg, run(cfg, "Q")[0], "Q")}
    _measure(quantized, begin, cfg, notebook=Notebook.QUANTIZE, results_dir=results_dir, run_id=run_id)
    part("03 Q alone", t)

    t = time.perf_counter()
    distilled = {labels.BASELINE: baseline}
    for name, alpha in ((labels.DISTILLED, cfg.distill.alpha), (labels.DISTILLED_WITHOUT_TEACHER, 0.0)):
        cfg_a = config_mod.with_section(cfg, "distill", alpha=alpha)
        distilled[name] = ModelRun(cfg_a, run(cfg_a, "D")[0], "D")
    _measure(distilled, begin, cfg, notebook=Notebook.DISTILL, results_dir=results_dir, run_id=run_id)
    part("04 D alone, D at alpha 0", t)

    t = time.perf_counter()
    capped = {}
    for order in ORDERS:
        cfg_o = config_mod.with_section(cfg, "pipeline", order=order, allocation="by_stage")
        capped[order] = (cfg_o, *run(cfg_o, order))
    cfg_pqd, deploy_pqd, stages_pqd = capped["PQD"]
    results.record_stages(stages_pqd, cfg_pqd, notebook=Notebook.PIPELINE, results_dir=results_dir, run_id=run_id)
    _measure({labels.BASELINE: baseline, labels.PIPELINE: ModelRun(cfg_pqd, deploy_pqd, "PQD")}, begin, cfg,
             notebook=Notebook.PIPELINE, results_dir=results_dir, run_id=run_id)
    for order, (cfg_o, model, records) in capped.items():
        _deploy_record(cfg_o, model, records, f"{Notebook.ORDER_ABLATION}-by_stage-{order}", results_dir, run_id)
    part("05-06 six orders by stage (learning rate capped after Q)", t)

    t = time.perf_counter()
    _, ce_records = controls.ce_control(begin.model, cfg_pqd, begin.fitting, teacher=begin.model, progress=progress,
                                        test=begin.data, extra_record=begin.record_fields)
    cfg_ce = config_mod.with_section(cfg_pqd, "distill", alpha=0.0)
    for r in ce_records:
        fields = {k: v for k, v in r.items() if k != "history"}
        _append(cfg_ce, f"{Notebook.PIPELINE}-control-ce-{r['position']}{r['stage']}", results_dir,
                **(fields | {"run_id": run_id, "notebook": Notebook.PIPELINE, "kind": Kind.STAGE}))
    part("C4 control (P → Q, then cross-entropy fine-tuning)", t)

    t = time.perf_counter()
    for row in controls.preconditioning(begin.model, cfg_pqd, begin.fitting, progress=progress, test=begin.data):
        path = "PQ" if row["path"] != "Q" else "Q"
        _append(cfg_pqd, f"{Notebook.PIPELINE}-control-preconditioning-{path}", results_dir,
                **(row | begin.record_fields | {"run_id": run_id, "notebook": Notebook.PIPELINE,
                                                "kind": Kind.CONTROL, "control": controls.PRECONDITIONING}))
    part("pre-conditioning control (Q with and without P first)", t)

    t = time.perf_counter()
    for order in ORDERS:
        cfg_o = controls.position_independent(capped[order][0])
        model, records = run(cfg_o, order)
        _deploy_record(cfg_o, model, records, f"{Notebook.ORDER_ABLATION}-by_stage-{order}-own-lr", results_dir,
                       run_id)
    part("06 six orders by stage, position-independent learning rates", t)
    return seconds
