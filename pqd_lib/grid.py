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

Latency is a separate phase: two cores that train cannot time (the rounds protocol needs a quiet
machine). By default records sit at the protocol point (fewest threads, smallest batch) with empty
latency and ``latency_deferred`` = True. ``latency=True`` (``pqd grid --latency``, run when nothing
else computes, after the seed has trained: every stage is then a cache hit) replays the seed and
times every model once per deploy signature (FP32 dense kernels, INT8) with the rounds protocol of
:func:`pqd_lib.measure.rounds.latency_phase`, then writes the same records with their latency.

Shared prefixes train once: P → Q → D's P is P alone's, its P → Q is the C4 control's and the
pre-conditioning control's, Q alone is the start of Q → P → D, and so on (:mod:`pqd_lib.pipeline`).
A killed seed resumes at its first unfinished stage; records are written only when the whole seed
has run (:func:`pqd_lib.batch.run_grid` stages and publishes them).
"""

from __future__ import annotations

import dataclasses
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
from .measure.table import ModelRun, deferred_latency, measure_models

__all__ = ["ORDERS", "PRUNE_TARGETS", "run_seed"]

#: The six orders of the ablation, P → Q → D first.
ORDERS = tuple("".join(p) for p in itertools.permutations("PQD"))
#: P alone is also run at these targets (beside the pipeline's own), as notebook 02 does.
PRUNE_TARGETS = (0.7, 0.9)


def _timing(record: dict[str, Any]) -> dict[str, Any]:
    """The fields of a rounds-protocol record that describe the timing (not the model or the machine)."""
    keep = {"runtime", "threads", "batch_size", "protocol", "reference", "shared_by", "images_per_s", "error",
            "input_shape", "block_seconds", "warmup"}
    return {k: v for k, v in record.items() if k in keep or k.startswith(("latency_", "rounds", "relative_"))}


class _Seed:
    """The records of one seed, held until every model is trained (and, with latency, timed)."""

    def __init__(self, cfg: RunConfig, begin: pipeline.Start, run_id: str) -> None:
        self.cfg, self.begin, self.run_id = cfg, begin, run_id
        self.tables: list[tuple[Notebook, dict[str, ModelRun], pd.DataFrame]] = []
        self.records: list[tuple[RunConfig, str, dict[str, Any], Any]] = []  # (cfg, id, fields, model or None)
        self.stages: list[tuple[RunConfig, list[dict[str, Any]]]] = []

    def measure(self, notebook: Notebook, runs: dict[str, ModelRun]) -> None:
        """Test accuracy, sizes and proxies of `runs` as notebook `notebook`'s measured records."""
        arch = train.arch_spec(self.cfg)
        table = measure_models(runs, self.begin.data, reference=models.build(**arch), arch=arch, latency=False)
        self.tables.append((notebook, runs, table.assign(**self.begin.record_fields)))

    def stage_records(self, cfg: RunConfig, records: list[dict[str, Any]]) -> None:
        """A pipeline run's stage records, as notebook 05 writes them."""
        self.stages.append((cfg, records))

    def add(self, cfg: RunConfig, record_id: str, fields: dict[str, Any], model: Any = None) -> None:
        """A record to write (with `model`'s latency when the seed is timed)."""
        self.records.append((cfg, record_id, {**fields, "run_id": self.run_id}, model))

    def deploy(self, cfg: RunConfig, model: Any, records: list[dict[str, Any]], record_id: str) -> None:
        """Notebook 06's record of one order: the deploy model's test accuracy, sparsity and sizes."""
        order, last = cfg.pipeline.order, records[-1]
        fields = {k: v for k, v in last.items() if k not in ("history", "top1", "sparsity", "form")}
        epochs = pipeline.allocate_epochs(order, cfg.pipeline.epochs, cfg.pipeline.allocation)
        own = {"allocation": cfg.pipeline.allocation, "order": order, "epochs": "/".join(map(str, epochs)),
               "p_sparsity": records[order.index("P")]["sparsity"], "run_allocation": cfg.pipeline.allocation,
               "notebook": Notebook.ORDER_ABLATION, "kind": Kind.DEPLOY, "top1": last["deploy_top1"],
               "sparsity": last["deploy_sparsity"], "form": last["deploy_form"], "last_stage_top1": last["top1"]}
        self.add(cfg, record_id, fields | model_sizes(model) | own, model)

    def write(self, results_dir: Path, *, latency: bool, log: Callable[[str], Any]) -> int:
        """Time the models (one rounds comparison over their deploy signatures) when `latency`; write every record."""
        # The protocol point, each model on the runtime it deploys on (table.deferred_latency).
        point = {k: v for k, v in deferred_latency(self.cfg.measure, None).items() if k != "runtime"}
        timed: dict[Any, dict[str, Any]] = {}
        if latency:
            from .measure.rounds import latency_phase  # worker processes: only for the latency phase

            models_by_key = {("table", i, name): run.model for i, (_, runs, _) in enumerate(self.tables)
                             for name, run in runs.items()}
            models_by_key |= {("record", i): m for i, (_, _, _, m) in enumerate(self.records) if m is not None}
            measure = dataclasses.replace(self.cfg.measure, threads=(point["threads"],),
                                          batch_sizes=(point["batch_size"],))
            phase = latency_phase(models_by_key, train.arch_spec(self.cfg), measure, log=log)
            timed = {key: _timing(next(iter(by_point.values()))) | {"latency_deferred": False}
                     for key, by_point in phase.items()}
        written = 0
        for i, (notebook, runs, table) in enumerate(self.tables):
            rows = [row | timed.get(("table", i, row["model"]), {}) for row in table.assign(**point).to_dict("records")]
            written += len(results.record_measurements(pd.DataFrame(rows), {n: r.config for n, r in runs.items()},
                                                       notebook=notebook, results_dir=results_dir,
                                                       run_id=self.run_id))
        for cfg, records in self.stages:
            written += len(results.record_stages([r | self.begin.record_fields for r in records], cfg,
                                                 notebook=Notebook.PIPELINE, results_dir=results_dir,
                                                 run_id=self.run_id))
        for i, (cfg, record_id, fields, model) in enumerate(self.records):
            extra = (deferred_latency(self.cfg.measure, model) | timed.get(("record", i), {})
                     if model is not None else {})
            results.append(results.make_record(cfg, record_id=record_id, **(fields | extra)), results_dir,
                           replace=True)
            written += 1
        return written


def run_seed(cfg: RunConfig, *, results_dir: str | Path, run_id: str | None = None, data: DataSplits | None = None,
             latency: bool = False, progress: bool | None = None,
             log: Callable[[str], Any] = print) -> dict[str, float]:
    """Train and record one seed's grid of `cfg` (module text); return the wall seconds of each part.

    Records go to `results_dir` (a staging folder when called by :func:`pqd_lib.batch.run_grid`)
    under `run_id` (default ``config.run_id(cfg, cfg.preset)``, what ``pqd batch`` names the seed's
    run), with deterministic ids: running a seed again rewrites its own records. Nothing is written
    before every model has trained. `latency`: time the models too (a quiet machine; module text).
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
    seed = _Seed(cfg, begin, run_id)

    def run(cfg_x: RunConfig, order: str) -> tuple[Any, list[dict[str, Any]]]:
        return pipeline.run(cfg_x, begin.data, order=order, progress=progress, begin=begin)

    baseline = ModelRun(cfg, begin.model, "baseline")
    seed.measure(Notebook.BASELINE, {labels.BASELINE: baseline})
    part("01 baseline", t)

    t = time.perf_counter()
    pruned = {labels.BASELINE: baseline}
    for target in sorted({cfg.prune.target_sparsity, *PRUNE_TARGETS}):
        cfg_s = config_mod.with_section(cfg, "prune", target_sparsity=target)
        pruned[labels.pruned(target)] = ModelRun(cfg_s, run(cfg_s, "P")[0], "P")
    seed.measure(Notebook.PRUNE, pruned)
    part("02 P alone (3 targets)", t)

    t = time.perf_counter()
    seed.measure(Notebook.QUANTIZE, {labels.BASELINE: baseline, labels.QUANTIZED: ModelRun(cfg, run(cfg, "Q")[0], "Q")})
    part("03 Q alone", t)

    t = time.perf_counter()
    distilled = {labels.BASELINE: baseline}
    for name, alpha in ((labels.DISTILLED, cfg.distill.alpha), (labels.DISTILLED_WITHOUT_TEACHER, 0.0)):
        cfg_a = config_mod.with_section(cfg, "distill", alpha=alpha)
        distilled[name] = ModelRun(cfg_a, run(cfg_a, "D")[0], "D")
    seed.measure(Notebook.DISTILL, distilled)
    part("04 D alone, D at alpha 0", t)

    t = time.perf_counter()
    capped = {}
    for order in ORDERS:
        cfg_o = config_mod.with_section(cfg, "pipeline", order=order, allocation="by_stage")
        capped[order] = (cfg_o, *run(cfg_o, order))
    cfg_pqd, deploy_pqd, stages_pqd = capped["PQD"]
    seed.stage_records(cfg_pqd, stages_pqd)
    seed.measure(Notebook.PIPELINE, {labels.BASELINE: baseline, labels.PIPELINE: ModelRun(cfg_pqd, deploy_pqd, "PQD")})
    for order, (cfg_o, model, records) in capped.items():
        seed.deploy(cfg_o, model, records, f"{Notebook.ORDER_ABLATION}-by_stage-{order}")
    part("05-06 six orders by stage (learning rate capped after Q)", t)

    t = time.perf_counter()
    _, ce_records = controls.ce_control(begin.model, cfg_pqd, begin.fitting, teacher=begin.model, progress=progress,
                                        test=begin.data, extra_record=begin.record_fields)
    cfg_ce = config_mod.with_section(cfg_pqd, "distill", alpha=0.0)
    for r in ce_records:
        seed.add(cfg_ce, f"{Notebook.PIPELINE}-control-ce-{r['position']}{r['stage']}",
                 {k: v for k, v in r.items() if k != "history"} | {"notebook": Notebook.PIPELINE, "kind": Kind.STAGE})
    part("C4 control (P → Q, then cross-entropy fine-tuning)", t)

    t = time.perf_counter()
    for row in controls.preconditioning(begin.model, cfg_pqd, begin.fitting, progress=progress, test=begin.data):
        seed.add(cfg_pqd, f"{Notebook.PIPELINE}-control-preconditioning-{'Q' if row['path'] == 'Q' else 'PQ'}",
                 row | begin.record_fields | {"notebook": Notebook.PIPELINE, "kind": Kind.CONTROL,
                                              "control": controls.PRECONDITIONING})
    part("pre-conditioning control (Q with and without P first)", t)

    t = time.perf_counter()
    for order in ORDERS:
        cfg_o = controls.position_independent(capped[order][0])
        model, records = run(cfg_o, order)
        seed.deploy(cfg_o, model, records, f"{Notebook.ORDER_ABLATION}-by_stage-{order}-own-lr")
    part("06 six orders by stage, position-independent learning rates", t)

    t = time.perf_counter()
    written = seed.write(results_dir, latency=latency, log=log)
    part(f"{'latency phase and ' if latency else ''}{written} records written", t)
    return seconds
