"""What the records say about the paper's claims: per-seed method rows, seed statistics, verdicts.

The paper's claims (Zhou & Shen, arXiv 2604.04988, abstract):

* **C1** INT8 QAT gives the dominant latency gain;
* **C2** pruning alone gives no CPU speed-up (unstructured zeros, dense kernels);
* **C3** P → Q → D is the best of the six orders at the fixed 20/40/40 allocation;
* **C4** distillation applied last recovers accuracy (without changing the deployed form);
* **C5** the pipeline's point dominates every single stage in accuracy, size and latency.

**How a verdict is decided.** Every comparison is between two methods measured on the same seeds
(same data subset, same teacher), so it is a *paired* one-sided t-test over the seeds
(:func:`scipy.stats.ttest_rel`) at level :data:`ALPHA`: "holds" when the claimed direction is
significant, "does not hold" when the opposite direction is, and "not resolved at this noise level"
otherwise, including when fewer than two seeds exist. A difference that is identical on every seed
(sizes are deterministic) is decided by its sign. Latency at full width (notebook 07) is measured
once, not per seed, and is decided by the run-to-run spread instead: A is faster than B when A's
90th percentile is below B's median.

Nothing here reads a file: functions take the DataFrame of :func:`pqd_lib.results.load_results`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import labels
from .labels import Kind, Notebook
from .measure.table import protocol_point

__all__ = ["ALPHA", "HOLDS", "FAILS", "UNRESOLVED", "PAPER_VALUES", "Comparison", "select", "protocol_point",
           "pipeline_target",
           "methods", "paired", "verdicts", "paper_beside_ours", "proxy_correlations"]

#: One-sided significance level of every paired comparison.
ALPHA = 0.05
HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved at this noise level"

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
    for column in ("notebook", "kind", "model", "allocation", "runtime"):
        if column not in out:
            out[column] = None
    for column in ("threads", "batch_size", "seed", "top1", "size_bytes", "latency_ms_p50", "latency_ms_p90",
                   "width", "sparsity"):
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


def methods(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method and seed at the protocol point: the frontier's points.

    Methods: the FP32 baseline (notebook 01), each stage alone (P at the configured sparsity from 02,
    Q from 03, D from 04) and every order under the ``by_stage`` allocation (notebook 06). Columns:
    ``method``, ``group`` (baseline / single stage / order), ``seed``, ``width``, ``top1``,
    ``size_bytes``, ``latency_ms_p50``, ``latency_ms_p90``, ``threads``, ``batch_size``, ``form``.
    """
    columns = ["method", "group", "seed", "width", "top1", "size_bytes", "latency_ms_p50", "latency_ms_p90",
               "threads", "batch_size", "form"]
    parts = [_measured(df, nb, model or _pruned_alone(df)).assign(method=method, group=group)
             for nb, model, method, group in _SINGLES]
    deploy = protocol_point(df[df["kind"].eq(Kind.DEPLOY) & df["allocation"].eq("by_stage")])
    parts.append(deploy.assign(method=deploy["order"].map(_arrow), group="order"))
    out = pd.concat([part.reindex(columns=columns) for part in parts], ignore_index=True)
    return out.sort_values(["group", "method", "seed"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Comparison:
    """A paired one-sided comparison over seeds: is ``a - b`` greater than zero?"""

    n: int
    mean_diff: float
    std_diff: float
    p_greater: float  # one-sided p-value for mean(a - b) > 0
    p_less: float  # one-sided p-value for mean(a - b) < 0

    @property
    def outcome(self) -> str:
        """``"greater"``, ``"less"`` or ``"unresolved"`` at :data:`ALPHA`."""
        if self.p_greater < ALPHA:
            return "greater"
        if self.p_less < ALPHA:
            return "less"
        return "unresolved"

    def describe(self, unit: str = "", digits: int = 2) -> str:
        """``"+1.23 ± 0.45 pp (n=3, p=0.012)"``: mean and std of the paired difference, the smaller p."""
        if self.n == 0:
            return "no paired seeds"
        p = min(self.p_greater, self.p_less)
        spread = f" ± {self.std_diff:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean_diff:+.{digits}f}{spread}{unit} (n={self.n}, one-sided p={p:.3g})"


def paired(a: pd.Series, b: pd.Series) -> Comparison:
    """Compare ``a`` and ``b`` (indexed by seed) over the seeds both have."""
    from scipy import stats

    both = pd.concat({"a": a, "b": b}, axis=1).dropna()
    diff = (both["a"] - both["b"]).to_numpy(dtype=float)
    n = len(diff)
    if n == 0:
        return Comparison(0, math.nan, math.nan, 1.0, 1.0)
    mean = float(diff.mean())
    std = float(diff.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        # The same difference on every seed (deterministic quantities such as sizes): its sign decides.
        return Comparison(n, mean, 0.0, 0.0 if mean > 0 else 1.0, 0.0 if mean < 0 else 1.0)
    if n < 2:
        return Comparison(n, mean, std, 1.0, 1.0)
    greater = stats.ttest_rel(both["a"], both["b"], alternative="greater").pvalue
    less = stats.ttest_rel(both["a"], both["b"], alternative="less").pvalue
    return Comparison(n, mean, std, float(greater), float(less))


def _by_seed(df: pd.DataFrame, column: str) -> pd.Series:
    return df.groupby("seed")[column].mean()


def _measured(df: pd.DataFrame, notebook: str, model: str | None) -> pd.DataFrame:
    """Notebook `notebook`'s eager-runtime measurements of `model` at the protocol point."""
    rows = protocol_point(df[df["kind"].eq(Kind.MEASURED) & df["notebook"].eq(notebook)
                             & df["runtime"].fillna("torch-eager").eq("torch-eager")])
    return rows[rows["model"].eq(model)]


def _verdict(claim: str, statement: str, verdict: str, evidence: str, figure: str) -> dict[str, str]:
    return {"claim": claim, "statement": statement, "verdict": verdict, "evidence": evidence, "figure": figure}


def _speedup(base: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    b, o = _by_seed(base, "latency_ms_p50"), _by_seed(other, "latency_ms_p50")
    return b, o, (b / o).dropna()


def _c1(df: pd.DataFrame) -> list[dict[str, str]]:
    out = []
    speed = {}
    for nb, name, model in ((Notebook.PRUNE, "P", _pruned_alone(df)), (Notebook.QUANTIZE, "Q", labels.QUANTIZED),
                            (Notebook.DISTILL, "D", labels.DISTILLED)):
        base, other, ratio = _speedup(_measured(df, nb, labels.BASELINE), _measured(df, nb, model))
        speed[name] = (base, other, ratio)
    base, q, q_ratio = speed["Q"]
    if q_ratio.empty:
        out.append(_verdict("C1", "INT8 QAT gives the dominant latency gain (trained width)", UNRESOLVED,
                            "no records of notebook 03", "figures/frontier.png"))
    else:
        faster = paired(base, q)  # FP32 - INT8 latency > 0: INT8 is faster
        rivals = {k: paired(q_ratio, v[2]) for k, v in speed.items() if k != "Q" and not v[2].empty}
        if faster.outcome == "greater" and all(c.outcome == "greater" for c in rivals.values()):
            verdict = HOLDS
        elif faster.outcome == "less" or any(c.outcome == "less" for c in rivals.values()):
            verdict = FAILS
        else:
            verdict = UNRESOLVED
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
    # "A speed-up" means more than 5 %: is the pruned model's latency below 95 % of FP32's?
    real = paired(0.95 * b, p)
    verdict = FAILS if real.outcome == "greater" else HOLDS if ratio.mean() < 1.05 else UNRESOLVED
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


def _c3(df: pd.DataFrame) -> list[dict[str, str]]:
    deploy = df[df["kind"].eq(Kind.DEPLOY) & df["allocation"].eq("by_stage")]
    statement = "P → Q → D is the best of the 6 orders (fixed epoch allocation, by stage)"
    top = {o: _by_seed(deploy[deploy["order"].eq(o)], "top1") for o in ORDERS}
    top = {o: s for o, s in top.items() if len(s)}
    if "PQD" not in top or len(top) < 2:
        return [_verdict("C3", statement, UNRESOLVED, "no order-ablation records (notebook 06)",
                         "figures/order_ablation.png")]
    comparisons = {o: paired(top["PQD"], s) for o, s in top.items() if o != "PQD"}
    if all(c.outcome == "greater" for c in comparisons.values()):
        verdict = HOLDS
    elif any(c.outcome == "less" for c in comparisons.values()):
        verdict = FAILS
    else:
        verdict = UNRESOLVED
    means = pd.Series({o: s.mean() for o, s in top.items()}).sort_values(ascending=False)
    rank = list(means.index).index("PQD") + 1
    evidence = (f"P → Q → D ranks {rank} of {len(means)} by mean top-1 ({means['PQD']:.2f} %; best "
                f"{_arrow(means.index[0])} {means.iloc[0]:.2f} %); PQD − other: "
                + "; ".join(f"{o} {c.describe(' pp')}" for o, c in comparisons.items()))
    return [_verdict("C3", statement, verdict, evidence, "figures/order_ablation.png")]


def _c4(df: pd.DataFrame) -> list[dict[str, str]]:
    stages = df[df["kind"].eq(Kind.STAGE) & df["order"].eq(labels.PIPELINE)]
    statement = "Distillation applied last recovers accuracy, without changing the deployed form"
    after_q, after_d = stages[stages["stage"].eq("Q")], stages[stages["stage"].eq("D")]
    if after_q.empty or after_d.empty:
        return [_verdict("C4", statement, UNRESOLVED, "no stage records of P → Q → D (notebook 05)",
                         "figures/order_ablation.png")]
    gain = paired(_by_seed(after_d, "top1"), _by_seed(after_q, "top1"))
    forms = sorted(set(after_d.get("deploy_form", pd.Series(dtype=object)).dropna()))
    same_form = forms == ["int8"]
    verdict = {"greater": HOLDS, "less": FAILS}.get(gain.outcome, UNRESOLVED) if same_form else FAILS
    evidence = (f"top-1 after D − after Q (both fake-quant, same seeds): {gain.describe(' pp')}; "
                f"deploy form after D: {', '.join(forms) or 'unknown'}")
    return [_verdict("C4", statement, verdict, evidence, "figures/order_ablation.png")]


def _c5(df: pd.DataFrame) -> list[dict[str, str]]:
    m = methods(df)
    statement = "The pipeline (P → Q → D) dominates every single stage in accuracy, size and latency"
    pqd = m[m["method"].eq(_arrow("PQD"))].set_index("seed")
    singles = [s for s in ("P alone", "Q alone", "D alone") if s in set(m["method"])]
    if pqd.empty or not singles:
        return [_verdict("C5", statement, UNRESOLVED, "needs notebooks 02-04 and 06", "figures/frontier.png")]
    axes = {"top1": ("top-1", " pp", 1), "size_bytes": ("size", " B", -1), "latency_ms_p50": ("latency", " ms", -1)}
    dominated_all, beaten, parts = True, [], []
    for single in singles:
        other = m[m["method"].eq(single)].set_index("seed")
        better = worse = 0
        notes = []
        for column, (name, unit, sign) in axes.items():
            c = paired(sign * pqd[column], sign * other[column])  # > 0: the pipeline is better on this axis
            better += c.outcome == "greater"
            worse += c.outcome == "less"
            if c.outcome != "unresolved":
                notes.append(f"{name} {'better' if c.outcome == 'greater' else 'worse'}")
        if worse:
            beaten.append(single)
        dominated_all &= better > 0 and worse == 0
        parts.append(f"vs {single}: {', '.join(notes) or 'no significant difference'}")
    verdict = HOLDS if dominated_all else FAILS if beaten else UNRESOLVED
    on_front = not any(_dominates(m, s, _arrow("PQD")) for s in singles)
    evidence = "; ".join(parts) + f"; P → Q → D is {'on' if on_front else 'off'} the frontier of these points"
    return [_verdict("C5", statement, verdict, evidence, "figures/frontier.png")]


def _dominates(m: pd.DataFrame, a: str, b: str) -> bool:
    """Does method `a` dominate `b` on seed means (top-1 at least, size and latency at most, one strictly)?"""
    means = m.groupby("method")[["top1", "size_bytes", "latency_ms_p50"]].mean()
    if a not in means.index or b not in means.index:
        return False
    x, y = means.loc[a], means.loc[b]
    no_worse = x["top1"] >= y["top1"] and x["size_bytes"] <= y["size_bytes"] and x["latency_ms_p50"] <= y["latency_ms_p50"]
    return bool(no_worse and (x != y).any())


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """The verdict table: claim, statement, verdict, evidence (numbers and tests), figure behind it."""
    rows = [*_c1(df), *_c2(df), *_c3(df), *_c4(df), *_c5(df)]
    return pd.DataFrame(rows, columns=["claim", "statement", "verdict", "evidence", "figure"])


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
