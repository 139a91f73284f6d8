"""What the records say about the paper's claims: per-seed method rows, seed statistics, verdicts.

The paper's claims (Zhou & Shen, arXiv 2604.04988, abstract):

* **C1** INT8 QAT gives the dominant latency gain;
* **C2** pruning alone gives no CPU speed-up (unstructured zeros, dense kernels);
* **C3** P → Q → D is the best of the six orders at the fixed 20/40/40 allocation;
* **C4** distillation applied last recovers accuracy (without changing the deployed form);
* **C5** the pipeline's point dominates every single stage in accuracy, size and latency.

**How a verdict is decided** (:mod:`pqd_lib.stats` has the tests and the reasons for each margin).
Every comparison is between two methods measured on the same seeds, so it is a *paired* test over
the seeds. A verdict is one of: **holds** (the claimed direction is significant on every comparison
the claim needs: an intersection-union test at level :data:`ALPHA`), **does not hold** (some
comparison goes significantly the other way, Holm-corrected over the comparisons that could fire),
**equivalent within ±m** (every comparison's 90 % interval lies inside the stated margin: TOST), or
**not resolved** (none of these; :func:`seeds_plan` says how many seeds would resolve it). Margins:
±0.5 pp for top-1, ±5 % of the reference for size and latency. C5's other axes are judged by
non-inferiority (the pipeline is not worse than the single stage by more than the margin). Where
records carry per-image correctness (``correct_bits``), a per-image paired bootstrap over the test
set is reported beside the seed-level interval. Latency at full width (notebook 07) is measured
once, not per seed, and is decided by the run-to-run spread instead: A is faster than B when A's
90th percentile is below B's median.

Nothing here reads a file: functions take the DataFrame of :func:`pqd_lib.results.load_results`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import labels, stats
from .labels import Kind, Notebook
from .latency_source import LATENCY_COLUMNS, latency_test, speedup_test
from .measure.table import protocol_point
from .stats import ACCURACY_MARGIN_PP, ALPHA, RELATIVE_MARGIN, PairedTest, paired_test

__all__ = ["ALPHA", "HOLDS", "FAILS", "UNRESOLVED", "EQUIVALENT", "PAPER_VALUES", "select", "protocol_point",
           "ACCURACY_MARGIN_PP", "RELATIVE_MARGIN", "SIZE_COLUMNS", "SIZE_FORMS", "CE_CONTROL_MODEL", "CE_CONTROL",
           "LR_SETTINGS",
           "pipeline_target", "methods", "equivalent", "decide", "order_differences", "verdicts", "seeds_plan",
           "controls_table", "PRECONDITIONING",
           "paper_beside_ours",
           "proxy_correlations", "c6"]

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved"
#: Every equivalence verdict starts with this; :func:`equivalent` appends the margin.
EQUIVALENT = "equivalent within"


def equivalent(margin: str) -> str:
    """The equivalence verdict with its margin, e.g. ``"equivalent within ±0.5 pp"``."""
    return f"{EQUIVALENT} ±{margin}"


def decide(tests: dict[str, PairedTest], margin: str) -> str:
    """One verdict from the comparisons a claim needs, each oriented so that "greater" is the claim.

    Holds when every comparison is significantly in the claimed direction (intersection-union:
    no correction needed); does not hold when Holm's procedure rejects at least one comparison in
    the opposite direction; equivalent within ±`margin` when every comparison's TOST does; not
    resolved otherwise (also with no comparisons).
    """
    if not tests:
        return UNRESOLVED
    if all(t.outcome == "greater" for t in tests.values()):
        return HOLDS
    if stats.holm([t.p_less for t in tests.values()]).any():
        return FAILS
    if all(t.outcome == "equivalent" for t in tests.values()):
        return equivalent(margin)
    return UNRESOLVED

#: What the paper states in numbers, each with its source. Only stated values: nothing inferred.
PAPER_VALUES = (
    {"quantity": "CPU latency of the pipeline's deploy models", "paper": "0.99–1.42 ms",
     "conditions": "CIFAR-10/100, ResNet-18, WRN-28-10, VGG-16-BN; batch, threads and CPU not stated",
     "source": "arXiv 2604.04988, abstract: \"reaching 0.99–1.42 ms CPU latency\""},
    {"quantity": "epoch allocation of the order ablation (P/Q/D)", "paper": "20/40/40",
     "conditions": "fixed budget for every permutation",
     "source": "arXiv 2604.04988, abstract: \"controlled ablations with a fixed 20/40/40 epoch allocation\""},
    {"quantity": "CPU latency of unstructured sparsity", "paper": "no acceleration, \"sometimes slightly slowing down\"",
     "conditions": "standard CPU execution", "source": "arXiv 2604.04988, abstract"},
)

ORDERS = ("PQD", "PDQ", "QPD", "QDP", "DPQ", "DQP")
#: The ``control`` field of the C4 control's records (pqd_lib.controls.ce_control writes it).
CE_CONTROL = "C4: P → Q then cross-entropy fine-tuning"
#: The ``control`` field of the pre-conditioning control's records (pqd_lib.controls.preconditioning's rows).
PRECONDITIONING = "pre-conditioning: QAT drop and weight quantization error, with and without P first"
#: Learning-rate settings of the order ablation (``pipeline.qat_lr_after_q``) and how verdicts name them.
LR_SETTINGS = {True: "learning rate capped at Q's after Q", False: "position-independent learning rates"}


def _arrow(order: str) -> str:
    return " → ".join(order)


def select(df: pd.DataFrame, backbone: str | None = None, dataset: str | None = None,
           preset: str | None = None, machine: str | None = None) -> pd.DataFrame:
    """The records of one backbone / dataset / preset / machine (None: any), with the columns this module reads.

    Every comparison stays within one machine (latency and its ratios depend on the CPU), so a
    selection holding records of several machines needs `machine`.

    Raises:
        ValueError: records of several machines and no `machine` chosen (the message lists them).
    """
    out = df
    for column, value in (("backbone", backbone), ("dataset", dataset), ("preset", preset), ("machine", machine)):
        if value is not None:
            out = out[out[column] == value]
    machines = sorted(out["machine"].dropna().unique()) if "machine" in out else []
    if len(machines) > 1:
        raise ValueError(f"machine: the records come from {len(machines)} machines ({', '.join(machines)}); "
                         "comparisons stay within one machine: choose one (pqd report --machine NAME)")
    out = out.copy()
    for column in ("notebook", "kind", "model", "allocation", "runtime", "control"):
        if column not in out:
            out[column] = None
    # The order ablation's learning-rate setting, from each record's config (the default, capped, when absent).
    out["lr_cap"] = [_lr_cap(c) for c in out["config"]] if "config" in out else True
    for column in ("threads", "batch_size", "seed", "top1", "latency_ms_p50", "latency_ms_p90",
                   "width", "sparsity", *SIZE_COLUMNS):
        out[column] = pd.to_numeric(out[column], errors="coerce") if column in out else np.nan
    if "run_id" in out and "data_source" in out and len(out):
        # Some records name the source kind ("folder"), others what was loaded ("CIFAR-10 (JPEG q75
        # mirror)"); the records of one run share their data, so the description is given to all.
        described = out[~out["data_source"].isin(_SOURCE_KINDS) & out["data_source"].notna()]
        names = described.groupby("run_id")["data_source"].first()
        mapped = out["run_id"].map(names).astype(object)
        out["data_source"] = mapped.where(mapped.notna(), out["data_source"])
    return out


_SOURCE_KINDS = {"torchvision", "folder", "embedded"}


def _lr_cap(config: object) -> bool:
    try:
        return bool(config["pipeline"]["qat_lr_after_q"])  # type: ignore[index]
    except (TypeError, KeyError):
        return True


def _ablation(df: pd.DataFrame, lr_cap: bool = True) -> pd.DataFrame:
    """The order ablation's deploy records (by stage, no control) at one learning-rate setting."""
    return df[df["kind"].eq(Kind.DEPLOY) & df["allocation"].eq("by_stage") & df["control"].isna()
              & df["lr_cap"].eq(lr_cap)]


def pipeline_target(df: pd.DataFrame) -> float | None:
    """The pipeline's target sparsity: notebook 02 also prunes to other targets, so it is read elsewhere."""
    for config in df.loc[df["notebook"].ne(Notebook.PRUNE), "config"] if "config" in df else []:
        try:
            return float(config["prune"]["target_sparsity"])
        except (TypeError, KeyError):
            continue
    return None


def _pruned_alone(df: pd.DataFrame) -> str | None:
    """The name of notebook 02's model pruned to the pipeline's own target (e.g. ``P50``)."""
    target = pipeline_target(df)
    return None if target is None else labels.pruned(target)


#: The single-stage methods: (notebook, model name or None for P at the pipeline's target, method, group).
_SINGLES = ((Notebook.BASELINE, labels.BASELINE, "FP32 baseline", "baseline"),
            (Notebook.PRUNE, None, "P alone", "single stage"),
            (Notebook.QUANTIZE, labels.QUANTIZED, "Q alone", "single stage"),
            (Notebook.DISTILL, labels.DISTILLED, "D alone", "single stage"))


#: Every stored-size column a method row carries (pqd_lib.measure.size.model_sizes).
SIZE_COLUMNS = ("size_bytes", "size_gzip_bytes", "size_sparse_bytes", "size_stored_bytes")


def methods(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method and seed at the protocol point: the frontier's points.

    Methods: the FP32 baseline (notebook 01), each stage alone (P at the configured sparsity from 02,
    Q from 03, D from 04) and every order under the ``by_stage`` allocation (notebook 06). Columns:
    ``method``, ``group`` (baseline / single stage / order), ``seed``, ``width``, ``top1``,
    the sizes of :data:`SIZE_COLUMNS`, ``latency_ms_p50``, ``latency_ms_p90``, ``threads``, ``batch_size``, ``form``.
    """
    columns = ["method", "group", "seed", "width", "top1", *SIZE_COLUMNS, "latency_ms_p50", "latency_ms_p90",
               "threads", "batch_size", "form", *LATENCY_COLUMNS]
    parts = [_measured(df, nb, model or _pruned_alone(df)).assign(method=method, group=group)
             for nb, model, method, group in _SINGLES]
    deploy = protocol_point(_ablation(df))
    parts.append(deploy.assign(method=deploy["order"].map(_arrow), group="order"))
    out = pd.concat([part.reindex(columns=columns) for part in parts], ignore_index=True)
    return out.sort_values(["group", "method", "seed"], kind="stable").reset_index(drop=True)


def _by_seed(df: pd.DataFrame, column: str) -> pd.Series:
    return df.groupby("seed")[column].mean()


def _measured(df: pd.DataFrame, notebook: str, model: str | None) -> pd.DataFrame:
    """Notebook `notebook`'s measurements of `model` at the protocol point, on the runtime it deploys on:
    torch eager, or ``torch-compile`` for a model measured only compiled (a PT2E INT8 graph, whose eager
    form is a slow reference: ``measure.runtimes.default_runtime``)."""
    rows = df[df["kind"].eq(Kind.MEASURED) & df["notebook"].eq(notebook)]
    runtime = rows["runtime"].fillna("torch-eager")
    eager_models = set(rows.loc[runtime.eq("torch-eager"), "model"])
    deployed = runtime.eq("torch-eager") | (runtime.eq("torch-compile") & ~rows["model"].isin(eager_models))
    rows = protocol_point(rows[deployed])
    return rows[rows["model"].eq(model)]


def _verdict(claim: str, statement: str, verdict: str, evidence: str, figure: str) -> dict[str, str]:
    return {"claim": claim, "statement": statement, "verdict": verdict, "evidence": evidence, "figure": figure}


def _speedup(base: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    b, o = _by_seed(base, "latency_ms_p50"), _by_seed(other, "latency_ms_p50")
    return b, o, (b / o).dropna()


def _c1(df: pd.DataFrame) -> list[dict[str, str]]:
    out = []
    speed, rows = {}, {}
    for nb, name, model in ((Notebook.PRUNE, "P", _pruned_alone(df)), (Notebook.QUANTIZE, "Q", labels.QUANTIZED),
                            (Notebook.DISTILL, "D", labels.DISTILLED)):
        rows[name] = (_measured(df, nb, labels.BASELINE), _measured(df, nb, model))
        base, other, ratio = _speedup(*rows[name])
        speed[name] = (base, other, ratio)
    base, q, q_ratio = speed["Q"]
    if q_ratio.empty:
        out.append(_verdict("C1", "INT8 QAT gives the dominant latency gain (trained width)", UNRESOLVED,
                            "no records of notebook 03", "figures/frontier.png"))
    else:
        # Margins: 5 % of FP32's latency; 5 % of Q's speed-up for "Q's gain is larger than P's / D's".
        # Re-timed latencies (one rounds measurement shared by the seeds) are decided by their intervals.
        faster = latency_test(*rows["Q"], RELATIVE_MARGIN)  # FP32 - INT8 latency > 0: INT8 is faster
        rivals = {k: speedup_test(*rows["Q"], *rows[k], RELATIVE_MARGIN)
                  for k, v in speed.items() if k != "Q" and not v[2].empty}
        verdict = decide({"FP32 − INT8": faster, **rivals}, "5 %")
        widths = sorted(set(_measured(df, Notebook.QUANTIZE, labels.QUANTIZED)["width"].dropna()))
        evidence = (f"width {', '.join(f'{w:g}' for w in widths)}: INT8 speed-up over FP32 "
                    f"{q_ratio.mean():.2f}x (FP32 − INT8 latency {faster.describe(' ms', 3)}); "
                    + "; ".join(f"{k} alone {speed[k][2].mean():.2f}x (Q − {k} speed-up {c.describe('x')})"
                                for k, c in rivals.items()))
        out.append(_verdict("C1", "INT8 QAT gives the dominant latency gain (trained width)", verdict, evidence,
                            "figures/frontier.png"))
    full = _full_width_latency(df)
    if full is not None:
        fp32, int8, sparse = full
        int8_faster = int8["latency_ms_p90"] < fp32["latency_ms_p50"]
        sparse_slower = sparse is None or not (sparse["latency_ms_p90"] < fp32["latency_ms_p50"])
        verdict = HOLDS if int8_faster and sparse_slower else FAILS if not int8_faster else UNRESOLVED
        evidence = (f"width {fp32['width']:g}, {int(fp32['threads'])} thread(s), batch {int(fp32['batch_size'])}: "
                    f"FP32 {fp32['latency_ms_p50']:.2f} ms, INT8 {int8['latency_ms_p50']:.2f} ms "
                    f"(p90 {int8['latency_ms_p90']:.2f}), speed-up {fp32['latency_ms_p50'] / int8['latency_ms_p50']:.2f}x"
                    + ("" if sparse is None else f"; FP32 {sparse['target_sparsity']:.0%} sparse (dense kernels) "
                       f"{sparse['latency_ms_p50']:.2f} ms") + "; one measurement (latency does not depend on the seed)")
        out.append(_verdict("C1", "INT8 QAT gives the dominant latency gain (full width, notebook 07)", verdict,
                            evidence, "figures/latency_forms.png"))
    return out


def _latency_rows(df: pd.DataFrame) -> pd.DataFrame:
    return protocol_point(df[df["kind"].eq(Kind.LATENCY)])


def _full_width_latency(df: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series | None] | None:
    rows = _latency_rows(df)
    rows = rows[rows["width"].eq(1.0) & rows["runtime"].eq("torch-eager")]
    fp32, int8 = rows[rows["model"].eq("FP32")], rows[rows["model"].eq("INT8")]
    if fp32.empty or int8.empty:
        return None
    sparse = rows[rows["model"].str.contains("sparse", na=False)].copy()
    sparse["target_sparsity"] = pd.to_numeric(sparse.get("target_sparsity"), errors="coerce")
    sparse = sparse.sort_values("target_sparsity")
    return fp32.iloc[-1], int8.iloc[-1], (sparse.iloc[-1] if len(sparse) else None)


def _c2(df: pd.DataFrame) -> list[dict[str, str]]:
    base = _measured(df, Notebook.PRUNE, labels.BASELINE)
    pruned = _measured(df, Notebook.PRUNE, _pruned_alone(df))
    b, p, ratio = _speedup(base, pruned)
    statement = "Pruning alone gives no CPU speed-up (dense kernels, trained width)"
    out = []
    full = _full_width_latency(df)
    if full is not None and full[2] is not None:
        fp32, _, sparse = full
        # One measurement: a speed-up (over 5 %) is a p90 below 95 % of dense FP32's median.
        faster = sparse["latency_ms_p90"] < 0.95 * fp32["latency_ms_p50"]
        out.append(_verdict(
            "C2", "Pruning alone gives no CPU speed-up (dense kernels, full width, notebook 07)",
            FAILS if faster else HOLDS,
            f"width {fp32['width']:g}, {int(fp32['threads'])} thread(s), batch {int(fp32['batch_size'])}: "
            f"dense FP32 {fp32['latency_ms_p50']:.2f} ms, {sparse['target_sparsity']:.0%} sparse "
            f"{sparse['latency_ms_p50']:.2f} ms (p90 {sparse['latency_ms_p90']:.2f}); one measurement",
            "figures/sparsity_sweep.png"))
    if ratio.empty:
        return [_verdict("C2", statement, UNRESOLVED, "no records of notebook 02", "figures/sparsity_sweep.png"), *out]
    # "A speed-up" means more than 5 %: the claim is a non-superiority one. It holds when the pruned
    # model is shown not faster than 0.95 x FP32 (one-sided, level ALPHA), fails when it is shown faster.
    real = latency_test(base, pruned, RELATIVE_MARGIN, scale_a=0.95)
    no_gain = latency_test(pruned, base, RELATIVE_MARGIN / 0.95, scale_a=1 / 0.95)
    verdict = FAILS if real.outcome == "greater" else HOLDS if no_gain.p_greater < ALPHA else UNRESOLVED
    evidence = (f"speed-up of the {pruned['model'].iloc[0]} model over FP32: {ratio.mean():.3f}x "
                f"(0.95·FP32 − pruned latency {real.describe(' ms', 3)}); a speed-up counts above 5 %")
    sweep = _latency_rows(df)
    sweep = sweep[sweep["runtime"].eq("torch-eager") & sweep["model"].str.startswith("FP32", na=False)]
    for width, part in sweep.groupby("width"):
        dense = part[part["model"].eq("FP32")]
        sparse = part[part["model"].str.contains("sparse", na=False)]
        if len(dense) and len(sparse):
            evidence += (f"; width {width:g} sweep (notebook 07): dense {dense['latency_ms_p50'].iloc[-1]:.2f} ms, "
                         + ", ".join(f"{m.split()[1]} zeros {lat:.2f} ms"
                                     for m, lat in zip(sparse["model"], sparse["latency_ms_p50"])))
    return [_verdict("C2", statement, verdict, evidence, "figures/sparsity_sweep.png"), *out]


def _image_interval(a: pd.DataFrame, b: pd.DataFrame) -> str:
    """The per-image paired bootstrap of top-1 ``a - b`` as text, where both carry ``correct_bits``."""
    if "correct_bits" not in a or "correct_bits" not in b:
        return ""
    a = a.dropna(subset=["correct_bits"]).groupby("seed").first()
    b = b.dropna(subset=["correct_bits"]).groupby("seed").first()
    seeds = sorted(set(a.index) & set(b.index))
    if not seeds:
        return ""
    n = int(a.loc[seeds[0], "n"])
    hits_a = np.stack([stats.unpack_correct(a.loc[s, "correct_bits"], n) for s in seeds])
    hits_b = np.stack([stats.unpack_correct(b.loc[s, "correct_bits"], n) for s in seeds])
    mean, low, high = stats.image_bootstrap(hits_a, hits_b)
    return f" [per-image bootstrap over {n} test images: {mean:+.2f} pp, 90 % CI [{low:+.2f}, {high:+.2f}]]"


def order_differences(df: pd.DataFrame, lr_cap: bool = True) -> pd.DataFrame:
    """P → Q → D minus each other order, paired over seeds (by-stage allocation, learning-rate setting
    `lr_cap`, see :data:`LR_SETTINGS`): the forest plot's rows.

    Columns: ``order`` (arrow form), ``n``, ``mean_diff``, ``ci_low``, ``ci_high`` (90 %), ``outcome``,
    ``seed_diffs`` (list of per-seed differences, in seed order).
    """
    deploy = _ablation(df, lr_cap)
    top = {o: _by_seed(deploy[deploy["order"].eq(o)], "top1") for o in ORDERS}
    rows = []
    if len(top["PQD"]):
        for order, series in top.items():
            if order == "PQD" or series.empty:
                continue
            t = paired_test(top["PQD"], series, ACCURACY_MARGIN_PP)
            both = pd.concat({"a": top["PQD"], "b": series}, axis=1).dropna()
            rows.append({"order": _arrow(order), "n": t.n, "mean_diff": t.mean_diff, "ci_low": t.ci_low,
                         "ci_high": t.ci_high, "outcome": t.outcome, "seed_diffs": list(both["a"] - both["b"])})
    return pd.DataFrame(rows, columns=["order", "n", "mean_diff", "ci_low", "ci_high", "outcome", "seed_diffs"])


_ACC_MARGIN = f"{ACCURACY_MARGIN_PP:g} pp"


def _c3(df: pd.DataFrame) -> list[dict[str, str]]:
    settings = [cap for cap in LR_SETTINGS if len(_ablation(df, cap))] or [True]
    return [_c3_at(df, cap) for cap in settings]


def _c3_at(df: pd.DataFrame, lr_cap: bool) -> dict[str, str]:
    deploy = _ablation(df, lr_cap)
    statement = f"P → Q → D is the best of the 6 orders (fixed epoch allocation, by stage; {LR_SETTINGS[lr_cap]})"
    top = {o: _by_seed(deploy[deploy["order"].eq(o)], "top1") for o in ORDERS}
    top = {o: s for o, s in top.items() if len(s)}
    if "PQD" not in top or len(top) < 2:
        return _verdict("C3", statement, UNRESOLVED, "no order-ablation records (notebook 06)",
                        "figures/order_ablation.png")
    comparisons = {o: paired_test(top["PQD"], s, ACCURACY_MARGIN_PP) for o, s in top.items() if o != "PQD"}
    verdict = decide(comparisons, _ACC_MARGIN)
    means = pd.Series({o: s.mean() for o, s in top.items()}).sort_values(ascending=False)
    rank = list(means.index).index("PQD") + 1
    rows = {o: deploy[deploy["order"].eq(o)] for o in top}
    evidence = (f"P → Q → D ranks {rank} of {len(means)} by mean top-1 ({means['PQD']:.2f} %; best "
                f"{_arrow(means.index[0])} {means.iloc[0]:.2f} %); margin ±{_ACC_MARGIN}; P → Q → D − other: "
                + "; ".join(f"{_arrow(o)} {c.describe(' pp')} ({c.outcome}){_image_interval(rows['PQD'], rows[o])}"
                            for o, c in comparisons.items()))
    ties = [_arrow(o) for o, c in comparisons.items() if c.outcome == "equivalent"]
    if verdict == UNRESOLVED and ties and all(c.outcome in ("greater", "equivalent") for c in comparisons.values()):
        evidence += (f"; no order beats P → Q → D by more than ±{_ACC_MARGIN}: it is better than the others "
                     f"and ties {', '.join(ties)} within the margin (best, shared)")
    return _verdict("C3", statement, verdict, evidence, "figures/order_ablation.png")


def _c4(df: pd.DataFrame) -> list[dict[str, str]]:
    stages = df[df["kind"].eq(Kind.STAGE) & df["order"].eq(labels.PIPELINE) & df["control"].isna()]
    statement = "Distillation applied last recovers accuracy, without changing the deployed form"
    after_q, after_d = stages[stages["stage"].eq("Q")], stages[stages["stage"].eq("D")]
    out = []
    if after_q.empty or after_d.empty:
        out.append(_verdict("C4", statement, UNRESOLVED, "no stage records of P → Q → D (notebook 05)",
                            "figures/order_ablation.png"))
    else:
        gain = paired_test(_by_seed(after_d, "top1"), _by_seed(after_q, "top1"), ACCURACY_MARGIN_PP)
        forms = sorted(set(after_d.get("deploy_form", pd.Series(dtype=object)).dropna()))
        verdict = decide({"after D − after Q": gain}, _ACC_MARGIN) if forms == ["int8"] else FAILS
        evidence = (f"top-1 after D − after Q (both fake-quant, same seeds): {gain.describe(' pp')}, margin "
                    f"±{_ACC_MARGIN}; deploy form after D: {', '.join(forms) or 'unknown'}")
        out.append(_verdict("C4", statement, verdict, evidence, "figures/order_ablation.png"))
    # The controls that isolate distillation: the same epochs of cross-entropy-only fine-tuning,
    # after P → Q (pqd_lib.controls.ce_control) and from the baseline (notebook 04, alpha = 0).
    pqd = _ablation(df)
    pqd = pqd[pqd["order"].eq("PQD")]
    ce_after = df[df["control"].eq(CE_CONTROL) & df["stage"].eq("D") & df["lr_cap"].eq(True)]
    if len(pqd) and len(ce_after) and "deploy_top1" in df:
        control = paired_test(_by_seed(pqd, "deploy_top1"), _by_seed(ce_after, "deploy_top1"), ACCURACY_MARGIN_PP)
        out.append(_verdict(
            "C4", "Distillation last beats the same epochs of cross-entropy fine-tuning after P → Q",
            decide({"PQD − PQ+CE": control}, _ACC_MARGIN),
            f"deploy top-1 of P → Q → D − P → Q + cross-entropy (alpha 0, same epochs, learning rate and seeds): "
            f"{control.describe(' pp')}, margin ±{_ACC_MARGIN}{_image_interval(pqd, ce_after)}",
            "figures/order_ablation.png"))
    kd, ce = _measured(df, Notebook.DISTILL, labels.DISTILLED), _measured(df, Notebook.DISTILL, CE_CONTROL_MODEL)
    if len(kd) and len(ce):
        control = paired_test(_by_seed(kd, "top1"), _by_seed(ce, "top1"), ACCURACY_MARGIN_PP)
        out.append(_verdict(
            "C4", "Distillation beats the same epochs of cross-entropy fine-tuning (D alone vs alpha = 0, notebook 04)",
            decide({"KD − CE": control}, _ACC_MARGIN),
            f"top-1 D (KD, alpha {_alpha(kd)}) − D (alpha 0, plain cross-entropy), same start and epochs: "
            f"{control.describe(' pp')}, margin ±{_ACC_MARGIN}{_image_interval(kd, ce)}", "figures/frontier.png"))
    return out


#: The model name notebook 04 gives its cross-entropy-only control (distillation with alpha = 0).
CE_CONTROL_MODEL = labels.DISTILLED_WITHOUT_TEACHER


def _alpha(rows: pd.DataFrame) -> str:
    for config in rows.get("config", pd.Series(dtype=object)):
        try:
            return f"{float(config['distill']['alpha']):g}"
        except (TypeError, KeyError):
            continue
    return "?"


#: The size forms C5 is judged on: (record column, name). The sparse encoding falls back to the
#: all-bitmask size in records made before ``size_stored_bytes`` existed (then the name says so).
SIZE_FORMS = (("size_bytes", "dense as saved"), ("size_gzip_bytes", "gzip of dense as saved"),
              ("size_stored_bytes", "sparse encoding (per layer min of dense and bitmask)"))


def _c5(df: pd.DataFrame) -> list[dict[str, str]]:
    m = methods(df)
    statement = "The pipeline (P → Q → D) dominates every single stage in accuracy, size and latency"
    pqd = m[m["method"].eq(_arrow("PQD"))].set_index("seed")
    singles = [s for s in ("P alone", "Q alone", "D alone") if s in set(m["method"])]
    if pqd.empty or not singles:
        return [_verdict("C5", statement, UNRESOLVED, "needs notebooks 02-04 and 06", "figures/frontier.png")]
    out = []
    for size_column, size_name in SIZE_FORMS:
        column = size_column
        if size_column == "size_stored_bytes" and not m[size_column].notna().any():
            column, size_name = "size_sparse_bytes", "sparse encoding (bitmask on every layer)"
        if not m[column].notna().any():
            continue
        out.append(_c5_on(m, pqd, singles, column, size_name, statement))
    return out


def _c5_on(m: pd.DataFrame, pqd: pd.DataFrame, singles: list[str], size_column: str, size_name: str,
           statement: str) -> dict[str, str]:
    """C5 with size measured as `size_column`: per single stage, every axis non-inferior and one better."""
    axes = {"top1": ("top-1", " pp", 1), size_column: ("size", " B", -1), "latency_ms_p50": ("latency", " ms", -1)}
    dominated, worse_p, parts = [], [], []
    for single in singles:
        other = m[m["method"].eq(single)].set_index("seed")
        tests = {}
        for column, (name, unit, sign) in axes.items():
            margin = ACCURACY_MARGIN_PP if column == "top1" else RELATIVE_MARGIN * other[column].mean()
            # Oriented so that "greater" means the pipeline is better on this axis.
            tests[name] = (latency_test(other.reset_index(), pqd.reset_index(), RELATIVE_MARGIN)
                           if column == "latency_ms_p50" else paired_test(sign * pqd[column], sign * other[column], margin))
        worse_p += [t.p_worse for t in tests.values()]
        dominated.append(all(t.not_worse for t in tests.values())
                         and any(t.outcome == "greater" for t in tests.values()))
        parts.append(f"vs {single}: " + ", ".join(
            f"{name} {'better' if t.outcome == 'greater' else 'worse' if t.p_worse < ALPHA else 'not worse' if t.not_worse else 'open'}"
            for name, t in tests.items()))
    verdict = HOLDS if all(dominated) else FAILS if stats.holm(worse_p).any() else UNRESOLVED
    size_means = m.groupby("method")[size_column].mean()
    on_front = not any(_dominates(m, s, _arrow("PQD"), size_column) for s in singles)
    evidence = (f"size = {size_name} (P → Q → D {size_means[_arrow('PQD')] / 2**20:.2f} MiB); margins ±{_ACC_MARGIN}, "
                f"±5 % size and latency; 'not worse' = non-inferior within the margin; " + "; ".join(parts)
                + f"; P → Q → D is {'on' if on_front else 'off'} the frontier of these points")
    return _verdict("C5", f"{statement} (size: {size_name})", verdict, evidence, "figures/frontier.png")


def _dominates(m: pd.DataFrame, a: str, b: str, size_column: str = "size_bytes") -> bool:
    """Does method `a` dominate `b` on seed means (top-1 at least, size and latency at most, one strictly)?"""
    means = m.groupby("method")[["top1", size_column, "latency_ms_p50"]].mean().rename(
        columns={size_column: "size_bytes"})
    if a not in means.index or b not in means.index:
        return False
    x, y = means.loc[a], means.loc[b]
    no_worse = x["top1"] >= y["top1"] and x["size_bytes"] <= y["size_bytes"] and x["latency_ms_p50"] <= y["latency_ms_p50"]
    return bool(no_worse and (x != y).any())


def c6(df: pd.DataFrame) -> list[dict[str, str]]:
    """C6, the paper's "0.99-1.42 ms CPU latency", from the records of ``pqd_lib.measure.paper_latency``.

    Per CPU capability class (CPU model and the SIMD level torch dispatches to: VNNI/AMX change INT8
    speed several-fold) one verdict: "holds" when every backbone measured has an INT8 deploy form at
    or below 1.42 ms at batch 1 (1 thread or all cores), "does not hold" when none of them has, else
    "not resolved". The evidence gives each backbone's fastest batch-1 figure and, where measured,
    its time per image at batch 32, and says which reading of the paper's number they support.
    Latency is measured once per machine (no seeds): the figure is the rounds protocol's p50.
    """
    from .measure.paper_latency import KIND, PAPER_MS

    statement = "The deploy models reach 0.99-1.42 ms CPU latency (ResNet-18, VGG-16-BN, WRN-28-10)"
    rows = df[df["kind"].eq(KIND)] if "kind" in df else df.iloc[:0]
    if "error" in rows:
        rows = rows[rows["error"].isna()]
    if "quick" in rows:  # --quick runs are smoke tests, not results
        rows = rows[~rows["quick"].fillna(False).astype(bool)]
    rows = rows.dropna(subset=["latency_ms_p50"])
    if rows.empty:
        return [_verdict("C6", statement, UNRESOLVED, "not measured: run python -m pqd_lib.measure.paper_latency "
                         "--results-dir reports/results on a quiet machine", "")]
    out = []
    # The capability class (hardware.capability_class, e.g. x86-avx2 / x86-avx512-vnni) where recorded.
    capability = next((c for c in ("cpu_capability_class", "torch_cpu_capability") if c in rows), None)
    cls_cols = [c for c in ("cpu_model", capability) if c is not None and c in rows]
    for cls, part in rows.groupby(cls_cols, dropna=False) if cls_cols else [("unknown CPU", rows)]:
        name = " / ".join(str(v) for v in (cls if isinstance(cls, tuple) else (cls,)))
        reached, parts, throughput_ok = [], [], []
        for backbone, b in part.groupby("backbone"):
            b1 = b[b["batch_size"].eq(1)]
            best = b1.loc[b1["latency_ms_p50"].idxmin()] if len(b1) else None
            text = (f"{backbone}: {best['latency_ms_p50']:.2f} ms at batch 1 ({best['label'].split(' ', 1)[1]}, "
                    f"{int(best['threads'])} thread(s))" if best is not None else f"{backbone}: no batch-1 figure")
            reached.append(best is not None and best["latency_ms_p50"] <= PAPER_MS)
            b32 = b[b["batch_size"].eq(32)]
            if len(b32):
                per = b32.loc[b32["per_image_ms"].idxmin()]
                text += (f", {per['per_image_ms']:.2f} ms per image at batch 32 ({int(per['threads'])} thread(s))")
                throughput_ok.append(per["per_image_ms"] <= PAPER_MS)
            parts.append(text)
        verdict = HOLDS if all(reached) else FAILS if not any(reached) else UNRESOLVED
        if all(reached):
            reading = "batch-1 latency reaches the paper's range"
        elif throughput_ok and all(throughput_ok) and len(throughput_ok) == len(reached) - sum(reached):
            reading = "the paper's number is plausible as time per image at batch 32 (throughput), not as batch-1 latency"
        else:
            reading = "neither batch-1 latency nor batch-32 time per image reaches 1.42 ms for every backbone here"
        out.append(_verdict("C6", statement, verdict, f"{name}: " + "; ".join(parts) + f"; {reading}", ""))
    return out


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """The verdict table of one cell (C1-C5): claim, statement, verdict, evidence (numbers and tests), figure.

    C6 (latency at full width, no training) is a machine's claim, decided by :func:`c6` over every cell;
    ``pqd report`` writes it to ``reports/c6_paper_latency.md``."""
    rows = [*_c1(df), *_c2(df), *_c3(df), *_c4(df), *_c5(df)]
    return pd.DataFrame(rows, columns=["claim", "statement", "verdict", "evidence", "figure"])


def seeds_plan(df: pd.DataFrame) -> pd.DataFrame:
    """How many seeds each accuracy comparison needs, planned from the seeds recorded so far.

    One row per comparison behind C3 (P → Q → D − each order; 5 comparisons, planned at Holm's
    strictest level) and C4 (after D − after Q; KD − CE control): seeds so far, mean and standard
    deviation of the paired difference, and the seeds for 80 % power to show its direction or its
    equivalence within ±0.5 pp (:func:`pqd_lib.stats.seeds_needed`; empty where unreachable).
    """
    pairs = []
    deploy = _ablation(df)
    top = {o: _by_seed(deploy[deploy["order"].eq(o)], "top1") for o in ORDERS}
    for order in ORDERS[1:]:
        pairs.append(("C3", f"P → Q → D − {_arrow(order)}", top["PQD"], top[order], len(ORDERS) - 1))
    stages = df[df["kind"].eq(Kind.STAGE) & df["order"].eq(labels.PIPELINE) & df["control"].isna()]
    pairs.append(("C4", "after D − after Q", _by_seed(stages[stages["stage"].eq("D")], "top1"),
                  _by_seed(stages[stages["stage"].eq("Q")], "top1"), 1))
    pairs.append(("C4", "KD − CE fine-tuning (notebook 04)", _by_seed(_measured(df, Notebook.DISTILL, labels.DISTILLED), "top1"),
                  _by_seed(_measured(df, Notebook.DISTILL, CE_CONTROL_MODEL), "top1"), 1))
    rows = []
    for claim, comparison, a, b, family in pairs:
        t = paired_test(a, b, ACCURACY_MARGIN_PP)
        need = (stats.seeds_needed(t.mean_diff, t.std_diff, ACCURACY_MARGIN_PP, comparisons=family)
                if t.n > 1 else {"direction": None, "equivalence": None})
        rows.append({"claim": claim, "comparison": comparison, "seeds": t.n, "mean_diff_pp": t.mean_diff,
                     "std_diff_pp": t.std_diff, "seeds_for_direction": need["direction"],
                     "seeds_for_equivalence": need["equivalence"]})
    out = pd.DataFrame(rows)
    for column in ("seeds_for_direction", "seeds_for_equivalence"):
        out[column] = out[column].astype("Int64")
    return out[out["seeds"].gt(0)].reset_index(drop=True)


def paper_beside_ours(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's stated numbers (:data:`PAPER_VALUES`) beside what the records measured here."""
    ours = []
    m = methods(df)
    pqd = m[m["method"].eq(_arrow("PQD"))]
    lat = pqd["latency_ms_p50"].dropna()
    full = _full_width_latency(df)
    texts = []
    if len(lat):
        texts.append(f"{lat.mean():.2f} ± {lat.std():.2f} ms (P → Q → D, width {pqd['width'].iloc[0]:g}, "
                     f"{int(pqd['threads'].iloc[0])} thread(s), batch {int(pqd['batch_size'].iloc[0])}, n={len(lat)})"
                     if len(lat) > 1 else f"{lat.mean():.2f} ms (P → Q → D, width {pqd['width'].iloc[0]:g})")
    if full is not None:
        texts.append(f"{full[1]['latency_ms_p50']:.2f} ms (INT8, width 1.0, {int(full[1]['threads'])} thread(s), "
                     f"batch {int(full[1]['batch_size'])})")
    ours.append("; ".join(texts) or "not measured")
    deploy = df[df["kind"].eq(Kind.DEPLOY)]
    epochs = sorted(set(deploy.get("epochs", pd.Series(dtype=object)).dropna())) if len(deploy) else []
    allocation = (f"{'/'.join(str(e) for e in deploy['config'].iloc[0]['pipeline']['epochs'])} (scaled preset)"
                  if len(deploy) else "not run")
    ours.append(allocation + (f"; epochs per run: {', '.join(epochs)}" if epochs else ""))
    ours.append("; ".join(v["evidence"] for v in _c2(df)))
    table = pd.DataFrame(PAPER_VALUES)
    table.insert(2, "measured here", ours)
    return table


def proxy_correlations(latency: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation of each proxy with measured latency, per width, over the models timed.

    `latency`: notebook 07's records at one protocol point (columns ``width``, ``latency_ms_p50``,
    ``params``, ``nonzero_params``, ``macs``, ``nonzero_macs``). NaN where a proxy is constant.
    """
    from scipy import stats

    proxies = [c for c in ("params", "nonzero_params", "macs", "nonzero_macs") if c in latency]
    rows = []
    for width, part in latency.dropna(subset=["latency_ms_p50"]).groupby("width"):
        row = {"width": width, "models": len(part)}
        for proxy in proxies:
            x = pd.to_numeric(part[proxy], errors="coerce")
            ok = x.notna()
            constant = x[ok].nunique() < 2 or part.loc[ok, "latency_ms_p50"].nunique() < 2
            row[proxy] = math.nan if constant else float(stats.spearmanr(x[ok], part.loc[ok, "latency_ms_p50"])[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=["width", "models", *proxies])


def controls_table(df: pd.DataFrame) -> pd.DataFrame:
    """The controls' numbers, each a paired difference over seeds with its 90 % interval (issue 15).

    Rows: C4's P → Q → D − P → Q + cross-entropy (deploy top-1); pre-conditioning's QAT accuracy drop
    and weight quantization error per weight, Q alone − P → Q (positive: pruning first makes QAT
    cheaper); each order's deploy top-1 with position-independent − capped learning rates (the cap's
    own effect). Columns: ``control``, ``quantity``, ``n``, ``mean_diff``, ``ci_low``, ``ci_high``,
    ``margin``, ``outcome``.
    """
    rows = []

    def add(control: str, quantity: str, t: PairedTest) -> None:
        if t.n:
            rows.append({"control": control, "quantity": quantity, "n": t.n, "mean_diff": t.mean_diff,
                         "ci_low": t.ci_low, "ci_high": t.ci_high, "margin": t.margin, "outcome": t.outcome})

    pqd = _ablation(df)
    pqd = pqd[pqd["order"].eq("PQD")]
    ce = df[df["control"].eq(CE_CONTROL) & df["stage"].eq("D") & df["lr_cap"].eq(True)]
    if len(pqd) and len(ce):
        add("C4: distillation vs cross-entropy after P → Q", "deploy top-1 (pp), P → Q → D − P → Q + CE",
            paired_test(_by_seed(pqd, "deploy_top1"), _by_seed(ce, "deploy_top1"), ACCURACY_MARGIN_PP))
    pre = df[df["control"].eq(PRECONDITIONING)]
    if len(pre):
        alone, pruned = pre[pre["path"].eq("Q")], pre[pre["path"].ne("Q")]
        add("pre-conditioning", "QAT accuracy drop (pp), Q alone − after P",
            paired_test(_by_seed(alone, "qat_drop_pp"), _by_seed(pruned, "qat_drop_pp"), ACCURACY_MARGIN_PP))
        error = _by_seed(alone, "quant_error_per_weight")
        add("pre-conditioning", "||W − Q(W)||² per weight, Q alone − after P",
            paired_test(error, _by_seed(pruned, "quant_error_per_weight"), RELATIVE_MARGIN * error.mean()))
    capped, own = _ablation(df, True), _ablation(df, False)
    for order in ORDERS:
        a, b = own[own["order"].eq(order)], capped[capped["order"].eq(order)]
        if len(a) and len(b):
            add("learning rate after Q", f"{_arrow(order)}: deploy top-1 (pp), position-independent − capped",
                paired_test(_by_seed(a, "top1"), _by_seed(b, "top1"), ACCURACY_MARGIN_PP))
    return pd.DataFrame(rows, columns=["control", "quantity", "n", "mean_diff", "ci_low", "ci_high", "margin",
                                       "outcome"])
