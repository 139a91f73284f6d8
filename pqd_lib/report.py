"""Tables and figures of the notebooks and reports: one function per figure, a tidy DataFrame in, a Figure out.

A function returns its :class:`matplotlib.figure.Figure` closed (no pyplot state is left behind): a
notebook shows it by returning it from a cell, a script saves it with ``fig.savefig(...)``. They are small on purpose (about 6 x 4 inches at 72 dpi): executed notebooks are
committed with their outputs. Every figure of a measurement says its width in the title or legend,
because latency depends on it (at small widths INT8 can be slower than FP32; see notebook 07).

An empty DataFrame gives a figure that says so instead of an error: a report over an empty results
store still renders.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from . import claims, labels, latency_source
from .backbones import BACKBONES
from .labels import Kind
from ._atomic import atomic_path, atomic_write_text

__all__ = [
    "DPI",
    "mean_std",
    "training_curves",
    "metric_bars",
    "sparsity_tradeoff",
    "stage_trajectory",
    "order_ablation",
    "order_forest",
    "latency_bars",
    "sparsity_sweep",
    "proxy_vs_latency",
    "pareto_front",
    "frontier",
    "markdown_table",
    "provenance",
    "write_report",
    "cells",
    "write_reports",
    "PEER_FP32_CIFAR10",
    "backbone_summary",
    "write_readme_summary",
]

#: Resolution of every figure: small PNGs keep committed notebooks at a few hundred KB.
DPI = 72


def _figure(ncols: int = 1, figsize: tuple[float, float] = (6, 4), nrows: int = 1) -> tuple[Figure, list]:
    import matplotlib.pyplot as plt

    # Made through pyplot so that Jupyter's inline backend is loaded and displays the returned figure,
    # then closed at once so that it is not displayed a second time (nor kept in pyplot's registry).
    fig = plt.figure(figsize=figsize, dpi=DPI, layout="constrained")
    plt.close(fig)
    with sns.axes_style("whitegrid"):
        axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def _empty(message: str = "no records") -> Figure:
    fig, (ax,) = _figure()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def mean_std(df: pd.DataFrame, by: Sequence[str], metrics: Mapping[str, str], digits: int = 2) -> pd.DataFrame:
    """One row per group of `by`: ``n`` (records, e.g. seeds) and "mean ± std" of each metric.

    `metrics` maps a column to its display name. With one record in a group only the mean is shown
    (a standard deviation of one value is not a measurement). Missing columns count as empty.
    """
    by = list(by)
    if df.empty:
        return pd.DataFrame(columns=[*by, "n", *metrics.values()])
    df = df.copy()
    for column in metrics:
        df[column] = pd.to_numeric(df[column], errors="coerce") if column in df else np.nan
    grouped = df.groupby(by, dropna=False, sort=True)
    out = grouped.size().rename("n").to_frame()
    for column, name in metrics.items():
        stats = grouped[column].agg(["mean", "std", "count"])
        out[name] = [("–" if c == 0 else f"{m:.{digits}f}" if c == 1 else f"{m:.{digits}f} ± {s:.{digits}f}")
                     for m, s, c in zip(stats["mean"], stats["std"], stats["count"])]
    return out.reset_index()


def training_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Train and test top-1 per epoch (columns ``epoch``, ``train_top1``, ``test_top1``)."""
    if history.empty:
        return _empty("no training history (loaded from cache without one)")
    fig, (ax,) = _figure()
    long = history.melt(id_vars="epoch", value_vars=["train_top1", "test_top1"], var_name="split",
                        value_name="top-1 (%)")
    sns.lineplot(data=long, x="epoch", y="top-1 (%)", hue="split", marker="o", ax=ax)
    ax.set_title(title)
    return fig


def metric_bars(df: pd.DataFrame, metrics: Mapping[str, str], label: str = "model", title: str = "") -> Figure:
    """One horizontal bar panel per metric (`metrics`: column -> axis name), one bar per row's `label`."""
    if df.empty:
        return _empty()
    fig, axes = _figure(len(metrics), figsize=(min(3.0 * len(metrics), 9), 0.45 * len(df) + 1.6))
    for ax, (column, name) in zip(axes, metrics.items()):
        sns.barplot(data=df, y=label, x=column, hue=label, legend=False, ax=ax, orient="h")
        ax.set_xlabel(name)
        ax.set_ylabel("" if ax is not axes[0] else label)
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(title, fontsize="medium")
    return fig


def sparsity_tradeoff(df: pd.DataFrame, title: str = "") -> Figure:
    """Left: top-1 vs sparsity. Right: measured latency vs sparsity, with the non-zero-MAC proxy's prediction.

    Columns: ``sparsity``, ``top1``, ``latency_ms_p50``, ``nonzero_macs``, ``macs``. The proxy line
    scales the dense model's latency (the row of lowest sparsity) by the fraction of non-zero MACs:
    what the latency would be if the kernels skipped zeros.
    """
    if df.empty:
        return _empty()
    fig, (left, right) = _figure(2, figsize=(8, 3.4))
    df = df.sort_values("sparsity")
    sns.lineplot(data=df, x="sparsity", y="top1", marker="o", ax=left)
    left.set(xlabel="sparsity (fraction of prunable weights = 0)", ylabel="test top-1 (%)", title="accuracy")
    dense = df.iloc[0]
    proxy = dense["latency_ms_p50"] * df["nonzero_macs"] / dense["nonzero_macs"]
    right.plot(df["sparsity"], df["latency_ms_p50"], marker="o", label="measured (dense kernels)")
    right.plot(df["sparsity"], proxy, linestyle="--", marker="x", label="non-zero MACs would predict")
    right.set(xlabel="sparsity", ylabel="latency p50 (ms)", title="CPU latency", ylim=(0, None))
    right.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return fig


def stage_trajectory(df: pd.DataFrame, title: str = "") -> Figure:
    """Top-1 after each step of a pipeline (columns ``step``, ``top1``, ``form``, ``sparsity``), in row order."""
    if df.empty:
        return _empty()
    fig, (ax,) = _figure()
    x = np.arange(len(df))
    ax.plot(x, df["top1"], marker="o")
    for xi, (_, row) in zip(x, df.iterrows()):
        ax.annotate(f"{row['form']}\n{row['sparsity']:.0%} zeros", (xi, row["top1"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize="x-small")
    ax.set_xticks(x, df["step"])
    ax.set(ylabel="test top-1 (%)", title=title)
    ax.margins(y=0.25)
    return fig


def order_ablation(df: pd.DataFrame, baseline: float | None = None, title: str = "") -> Figure:
    """Deploy top-1 per order (columns ``order``, ``top1``, ``allocation``); mean ± std over rows of one order."""
    if df.empty:
        return _empty()
    fig, (ax,) = _figure()
    sns.barplot(data=df, x="order", y="top1", hue="allocation", errorbar="sd", ax=ax)
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="FP32 baseline")
    ax.set(ylabel="deploy top-1 (%)", title=title)
    ax.legend(fontsize="small")
    return fig


def latency_bars(df: pd.DataFrame, title: str = "") -> Figure:
    """Latency p50 per deploy form and runtime (columns ``model``, ``latency_ms_p50``, ``width``), one panel per width."""
    if df.empty:
        return _empty()
    widths = sorted(df["width"].unique())
    order = list(df["model"].unique())  # the same rows in every panel; labels on the first only
    fig, axes = _figure(len(widths), figsize=(2.2 + 2.4 * len(widths), 0.35 * len(order) + 1.4))
    for ax, width in zip(axes, widths):
        part = df[df["width"] == width]
        sns.barplot(data=part, y="model", x="latency_ms_p50", hue="model", order=order, hue_order=order,
                    legend=False, ax=ax, orient="h")
        ax.set(xlabel="latency p50 (ms)", ylabel="", title=f"width {width:g}")
        if ax is not axes[0]:
            ax.set_yticklabels([])
    fig.suptitle(title, fontsize="medium")
    return fig


def sparsity_sweep(df: pd.DataFrame, title: str = "") -> Figure:
    """Latency p50 vs sparsity per kernel (columns ``sparsity``, ``latency_ms_p50``, ``kernel``, ``width``)."""
    if df.empty:
        return _empty()
    widths = sorted(df["width"].unique())
    fig, axes = _figure(len(widths), figsize=(4.0 * len(widths), 3.4))
    for ax, width in zip(axes, widths):
        part = df[df["width"] == width]
        sns.lineplot(data=part, x="sparsity", y="latency_ms_p50", hue="kernel", marker="o", ax=ax,
                     legend=ax is axes[-1])
        ax.set(xlabel="sparsity", ylabel="latency p50 (ms)", title=f"width {width:g}", ylim=(0, None))
    if axes[-1].get_legend() is not None:
        sns.move_legend(axes[-1], "best", fontsize="x-small", title_fontsize="x-small")
    fig.suptitle(title, fontsize="medium")
    return fig


def proxy_vs_latency(df: pd.DataFrame, title: str = "") -> Figure:
    """Measured latency vs what non-zero MACs predict, both relative to dense FP32 of the same width.

    Columns: ``width``, ``mac_ratio`` (non-zero MACs / dense MACs), ``latency_ratio`` (latency / dense FP32
    latency), ``model``. On the diagonal a proxy would be right; compression that the proxy counts but
    the kernels do not exploit lies above it.
    """
    if df.empty:
        return _empty()
    fig, (ax,) = _figure()
    sns.scatterplot(data=df, x="mac_ratio", y="latency_ratio", hue="model", style="width", s=60, ax=ax)
    top = max(1.05, float(df["latency_ratio"].max()) * 1.05)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="latency = MAC ratio")
    ax.set(xlabel="non-zero MACs / dense MACs", ylabel="latency / dense FP32 latency", xlim=(0, 1.05),
           ylim=(0, top), title=title)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def pareto_front(df: pd.DataFrame, cost: str, value: str = "top1") -> pd.DataFrame:
    """The rows no other row beats (lower or equal `cost` with higher `value`), sorted by `cost`."""
    ordered = df.dropna(subset=[cost, value]).sort_values([cost, value], ascending=[True, False])
    best, keep = -np.inf, []
    for index, row in ordered.iterrows():
        if row[value] > best:
            keep.append(index)
            best = row[value]
    return ordered.loc[keep]


def order_forest(diffs: pd.DataFrame, margin: float, title: str = "") -> Figure:
    """The order ablation as paired differences against P → Q → D: a forest plot.

    `diffs`: :func:`pqd_lib.claims.order_differences` (``order``, ``mean_diff``, ``ci_low``, ``ci_high``,
    ``outcome``, ``seed_diffs``). Each row: the mean of P → Q → D minus that order over seeds, its 90 %
    interval, and the per-seed differences as small dots; the shaded band is the equivalence margin
    ±`margin` pp (an interval inside it is a tie). Right of zero: P → Q → D is more accurate.
    """
    if diffs.empty:
        return _empty("no order-ablation records")
    fig, (ax,) = _figure(figsize=(6, 0.5 * len(diffs) + 1.6))
    ax.axvspan(-margin, margin, color="tab:green", alpha=0.12, label=f"equivalence margin ±{margin:g} pp")
    ax.axvline(0, color="grey", linewidth=1)
    colors = {"greater": "tab:blue", "less": "tab:red", "equivalent": "tab:green", "unresolved": "black"}
    for y, row in enumerate(diffs.itertuples()):
        color = colors.get(row.outcome, "black")
        if np.isfinite(row.ci_low):
            ax.plot([row.ci_low, row.ci_high], [y, y], color=color, linewidth=2)
        ax.plot(row.mean_diff, y, "D", color=color)
        ax.plot(row.seed_diffs, [y + 0.18] * len(row.seed_diffs), ".", color=color, alpha=0.5, markersize=5)
        ax.annotate(row.outcome, (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize="x-small", color=color)
    ax.set_yticks(range(len(diffs)), [f"P → Q → D − {o}" for o in diffs["order"]])
    ax.invert_yaxis()
    ax.set(xlabel="top-1 difference (pp): mean, 90 % CI, seeds (dots)", title=title)
    ax.title.set_fontsize("small")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.16 * 6 / (len(diffs) + 3)), frameon=False)
    return fig


def frontier(points: pd.DataFrame, title: str = "", sizes: Mapping[str, str] | None = None) -> Figure:
    """Top-1 against latency and against each stored size: per-seed points and the mean ± std per method.

    `points`: one row per method and seed (:func:`pqd_lib.claims.methods`: ``method``, ``group``,
    ``top1``, ``latency_ms_p50`` and size columns). `sizes`: size column -> axis label, one panel
    each (default: ``size_bytes``, "dense as saved"). The solid line joins the Pareto frontier of
    the means in each panel (nothing else is both cheaper and more accurate).
    """
    if points.empty:
        return _empty()
    sizes = dict(sizes or {"size_bytes": "dense as saved"})
    sizes = {c: label for c, label in sizes.items() if c in points and points[c].notna().any()}
    panels_n = 1 + len(sizes)
    ncols = 2 if panels_n > 2 else panels_n
    nrows = -(-panels_n // ncols)
    fig, axes = _figure(ncols, figsize=(4.5 * ncols + 2.5, 3.6 * nrows + 0.6), nrows=nrows)
    for spare in axes[panels_n:]:
        spare.set_visible(False)
    axes = axes[:panels_n]
    aggregations = {"top1": ("top1", "mean"), "top1_sd": ("top1", "std"), "latency": ("latency_ms_p50", "mean"),
                    "latency_sd": ("latency_ms_p50", "std"), "n": ("top1", "count")}
    scaled = points.copy()
    for i, column in enumerate(sizes):
        scaled[f"size{i}"] = scaled[column] / 2**20
        aggregations[f"size{i}"] = (f"size{i}", "mean")
        aggregations[f"size{i}_sd"] = (f"size{i}", "std")
    stats = scaled.groupby(["group", "method"], sort=False).agg(**aggregations).reset_index()
    markers = {"baseline": "s", "single stage": "^", "order": "o"}
    palette = dict(zip(stats["method"], sns.color_palette("tab10", len(stats))))
    panels = [("latency", "latency_ms_p50", "latency p50 (ms)")]
    panels += [(f"size{i}", f"size{i}", f"size (MiB): {label}") for i, label in enumerate(sizes.values())]
    for ax, (cost, raw, label) in zip(axes, panels):
        for _, row in stats.iterrows():
            seeds = scaled[scaled["method"].eq(row["method"])]
            ax.scatter(seeds[raw], seeds["top1"], s=10, alpha=0.35, color=palette[row["method"]], linewidths=0)
            ax.errorbar(row[cost], row["top1"], xerr=np.nan_to_num(row[f"{cost}_sd"]),
                        yerr=np.nan_to_num(row["top1_sd"]), fmt=markers.get(row["group"], "o"), capsize=3,
                        color=palette[row["method"]], label=f"{row['method']} (n={row['n']})")
        front = pareto_front(stats, cost)
        # Drawn above the error bars, with open circles on its points, so a short frontier stays visible.
        ax.step(front[cost], front["top1"], where="post", color="black", linewidth=1.5, zorder=5,
                marker="o", markersize=11, markerfacecolor="none", label="Pareto frontier (means)")
        ax.set(xlabel=label, ylabel="test top-1 (%)")
        ax.xaxis.label.set_fontsize("small")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[ncols - 1].legend(handles, labels, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize="small")
    return fig


def markdown_table(df: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub markdown table (floats to `digits` significant digits, text as written)."""
    shown = df.apply(lambda column: column.map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else v))
    # disable_numparse: text such as "59.72" (from mean_std) is not parsed and re-rounded.
    return shown.to_markdown(index=False, disable_numparse=True) + "\n"


def _save_table(df: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    md, csv = folder / f"{name}.md", folder / f"{name}.csv"
    atomic_write_text(md, markdown_table(df))
    atomic_write_text(csv, df.to_csv(index=False, float_format="%.6g"))
    return [md, csv]


def _save_figure(fig: Figure, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    with atomic_path(path, keep_suffix=True) as tmp:
        # No timestamp or software tag in the PNG: the same records give the same bytes.
        fig.savefig(tmp, dpi=100, metadata={"Software": None})
    return path


def provenance(records: pd.DataFrame) -> pd.DataFrame:
    """Where the records come from, per notebook: preset, data source, seeds, code version, machine, dates."""
    columns = ["machine", "notebook", "kind", "preset", "data_source", "records", "seeds", "git_commit", "git_dirty",
               "cpu", "torch", "dates"]
    if records.empty:
        return pd.DataFrame(columns=columns)
    df = records.copy()
    for column in ("machine", "notebook", "kind", "preset", "data_source", "seed", "timestamp", "cpu_model",
                   "cpu_count", "torch_version", "git_commit", "git_dirty"):
        if column not in df:
            df[column] = None
    rows = []
    for (machine, notebook, kind, preset, source), part in df.groupby(
            ["machine", "notebook", "kind", "preset", "data_source"], dropna=False, sort=True):
        dates = pd.to_datetime(part["timestamp"], errors="coerce", utc=True).dropna().dt.strftime("%Y-%m-%d")
        machines = sorted({f"{m}, {int(c)} cores" for m, c in zip(part["cpu_model"], part["cpu_count"])
                           if isinstance(m, str) and pd.notna(c)})
        rows.append({"machine": machine, "notebook": notebook, "kind": kind, "preset": preset, "data_source": source,
                     "records": len(part), "seeds": " ".join(str(int(s)) for s in sorted(part["seed"].dropna().unique())),
                     "git_commit": " ".join(sorted({str(c)[:10] for c in part["git_commit"].dropna()})) or "?",
                     "git_dirty": bool(part["git_dirty"].eq(True).any()),
                     "cpu": "; ".join(machines) or "?",
                     "torch": " ".join(sorted({str(t) for t in part["torch_version"].dropna()})) or "?",
                     "dates": " to ".join(sorted({dates.min(), dates.max()})) if len(dates) else "?"})
    return pd.DataFrame(rows, columns=columns)


def write_report(records: pd.DataFrame, out_dir: str | os.PathLike = "reports", *, backbone: str | None = None,
                 dataset: str | None = None, preset: str | None = None, machine: str | None = None) -> list[Path]:
    """Every table and figure of ``reports/`` from the records alone; return the paths written.

    ``tables/*.md|csv``: methods (mean ± std per method), order_ablation, latency_forms (notebook 07),
    proxy_correlation, paper_vs_ours, verdicts, seeds_needed, controls, provenance; ``summary.md``
    gathers verdicts, controls, methods,
    the paper's numbers and provenance. ``figures/*.png``: frontier, order_ablation,
    latency_forms, sparsity_sweep, proxy_vs_latency. The selection (backbone, dataset, preset) keeps
    one cell's records; None keeps all of them.
    """
    out = Path(out_dir)
    tables, figures = out / "tables", out / "figures"
    df = claims.select(records, backbone, dataset, preset, machine)
    what = " ".join(str(v) for v in (backbone, dataset, preset and f"preset {preset}") if v)
    written: list[Path] = []

    points = claims.methods(df)
    width = ", ".join(f"{w:g}" for w in sorted(points["width"].dropna().unique())) or "?"
    at = (f"{int(points['threads'].min())} thread(s), batch {int(points['batch_size'].min())}" if len(points)
          else "")
    summary_table = mean_std(points.assign(size_MiB=points["size_bytes"] / 2**20), by=["group", "method"],
                             metrics={"top1": "top-1 (%)", "size_MiB": "size (MiB)",
                                      "latency_ms_p50": "latency p50 (ms)"})
    written += _save_table(summary_table, tables, "methods")
    stored = "size_stored_bytes" if points["size_stored_bytes"].notna().any() else "size_sparse_bytes"
    written.append(_save_figure(frontier(
        points, title=f"{what}, width {width}: top-1 vs latency ({at}) and stored size\n"
                      "dots: seeds; markers: mean ± std; line: Pareto frontier",
        sizes={"size_bytes": "dense as saved", "size_gzip_bytes": "gzip of dense",
               stored: ("sparse encoding (per-layer min)" if stored == "size_stored_bytes"
                        else "sparse encoding (bitmask)")}), figures, "frontier"))

    deploy = df[df["kind"].eq("deploy")]
    ablation = mean_std(deploy, by=["allocation", "order", "epochs"] if "epochs" in deploy else ["allocation", "order"],
                        metrics={"top1": "deploy top-1 (%)", "fake_quant_top1": "fake-quant top-1 (%)",
                                 "int8_agreement": "INT8 agreement (%)"})
    written += _save_table(ablation, tables, "order_ablation")
    for lr_cap, suffix in ((True, ""), (False, "_position_independent")):
        diffs = claims.order_differences(df, lr_cap)
        if diffs.empty and not lr_cap:
            continue  # the position-independent variant is drawn only where it was run
        written += _save_table(diffs.drop(columns="seed_diffs"), tables, f"order_differences{suffix}")
        written.append(_save_figure(order_forest(
            diffs, claims.ACCURACY_MARGIN_PP,
            title=f"{what}, width {width}\nP → Q → D minus each order (by stage; {claims.LR_SETTINGS[lr_cap]})"),
            figures, f"order_ablation{suffix}"))

    latency = df[df["kind"].eq("latency")].copy()
    forms = latency[~latency["model"].astype(str).str.contains("sparse") & ~latency["runtime"].eq("torch-sparse-csr")]
    written += _save_table(forms[["width", "model", "runtime", "threads", "batch_size", "latency_ms_p50",
                                  "latency_ms_p90", "speedup_vs_fp32"]].sort_values(
        ["width", "threads", "batch_size", "latency_ms_p50"]) if len(forms) else forms, tables, "latency_forms")
    point = claims.protocol_point(forms)
    written.append(_save_figure(latency_bars(point.assign(model=point["model"] + " · " + point["runtime"]),
                                             title=f"{what}: latency p50 by form and runtime" + (
                                                 f", {int(point['threads'].min())} thread(s), batch "
                                                 f"{int(point['batch_size'].min())}" if len(point) else "")),
                                figures, "latency_forms"))
    sweep = claims.protocol_point(latency[latency["model"].astype(str).str.startswith("FP32")
                                          & latency["runtime"].isin(["torch-eager", "torch-sparse-csr"])])
    written.append(_save_figure(sparsity_sweep(sweep.assign(sparsity=pd.to_numeric(sweep.get("target_sparsity"),
                                                                                   errors="coerce"),
                                                            kernel=sweep["runtime"]),
                                               title=f"{what}: latency vs sparsity"), figures, "sparsity_sweep"))
    proxy = claims.protocol_point(latency.dropna(subset=["macs"]) if "macs" in latency else latency.iloc[:0])
    written += _save_table(claims.proxy_correlations(proxy), tables, "proxy_correlation")
    if len(proxy):
        proxy = proxy.assign(mac_ratio=proxy["nonzero_macs"] / proxy["macs"],
                             latency_ratio=proxy["latency_ms_p50"] / proxy["fp32_ms"],
                             model=proxy["model"] + " · " + proxy["runtime"])
    written.append(_save_figure(proxy_vs_latency(proxy, title=f"{what}: non-zero MACs vs measured latency"),
                                figures, "proxy_vs_latency"))

    paper = claims.paper_beside_ours(df)
    written += _save_table(paper, tables, "paper_vs_ours")
    verdicts = claims.verdicts(df)
    written += _save_table(verdicts, tables, "verdicts")
    plan = claims.seeds_plan(df)
    written += _save_table(plan, tables, "seeds_needed")
    controls = claims.controls_table(df)
    written += _save_table(controls, tables, "controls")
    origin = provenance(df)
    written += _save_table(origin, tables, "provenance")

    summary = out / "summary.md"
    atomic_write_text(summary, "\n".join([
        f"# Summary: {what or 'every record'}",
        "",
        "Generated by `pqd report` from the records in the results store; do not edit by hand.",
        latency_source.describe_source(df),
        f"{len(df)} records. Verdicts: paired tests over seeds at alpha {claims.ALPHA}: direction (one-sided t), "
        f"equivalence (TOST, ±{claims.ACCURACY_MARGIN_PP:g} pp top-1, ±{claims.RELATIVE_MARGIN:.0%} size and "
        "latency), Holm-corrected where any of several comparisons can decide (see `pqd_lib/stats.py`).",
        "",
        "## Verdicts on the paper's claims", "", markdown_table(verdicts),
        "## Seeds each accuracy comparison needs (80 % power, planned from the seeds so far)", "",
        markdown_table(plan),
        *(["## Controls (paired differences over seeds, 90 % intervals)", "", markdown_table(controls)]
          if len(controls) else []),
        "## Methods (mean ± std over seeds)", "", markdown_table(summary_table),
        "## The paper's numbers beside ours", "", markdown_table(paper),
        "## Where the records come from", "", markdown_table(origin),
    ]))
    written.append(summary)
    return written


def cells(records: pd.DataFrame, backbone: str | None = None, dataset: str | None = None,
          preset: str | None = None) -> list[tuple[str, str, str]]:
    """The (backbone, dataset, preset) cells present in `records` that match the selection (None: any), sorted."""
    if records.empty:
        return []
    keys = records[["backbone", "dataset", "preset"]].dropna().drop_duplicates()
    present = sorted(tuple(str(v) for v in row) for row in keys.itertuples(index=False))
    return [c for c in present if all(want is None or want == have for want, have in zip((backbone, dataset, preset), c))]


def _cell_rows(records: pd.DataFrame, cell: tuple[str, str, str]) -> pd.DataFrame:
    """The rows of `records` in one (backbone, dataset, preset) cell."""
    keys = ["backbone", "dataset", "preset"]
    return records[(records[keys] == pd.Series(cell, index=keys)).all(axis=1)]


def as_reported(records: pd.DataFrame) -> pd.DataFrame:
    """`records` as the cell reports read them: in every cell whose latencies were re-timed (``pqd retime``),
    the runs' records carry that machine's re-timed latencies (:func:`pqd_lib.latency_source.fold_retimed`)
    and the re-timed records themselves are dropped, so :func:`pqd_lib.claims.select` sees one machine per cell.

    Where a cell was re-timed on several machines, the first machine by name is used
    (``pqd report`` writes one report per latency machine instead). Other records pass unchanged.
    """
    if records.empty or "kind" not in records:
        return records
    parts, used = [], pd.Series(False, index=records.index)
    for cell in cells(records):
        in_cell = _cell_rows(records, cell)
        used[in_cell.index] = True
        timers = latency_source.latency_machines(in_cell)
        parts.append(latency_source.fold_retimed(in_cell, timers[0]) if timers else in_cell)
    parts.append(records[~used])
    return pd.concat(parts, ignore_index=True)


def write_reports(records: pd.DataFrame, out_dir: str | os.PathLike = "reports", *, backbone: str | None = None,
                  dataset: str | None = None, preset: str | None = None,
                  machine: str | None = None) -> dict[tuple[str, ...], list[Path]]:
    """:func:`write_report` for every selected cell, each into ``<out_dir>/<backbone>-<dataset>-<preset>/``.

    Cells never mix: seeds, widths and protocols differ between them. Nor do machines: with records
    of several machines (or `machine` chosen) each cell gets ``<backbone>-<dataset>-<preset>-<machine>/``.
    An empty selection writes nothing and returns an empty dict.
    """
    retimed = records["kind"].eq(Kind.RETIMED) if "kind" in records else pd.Series(False, index=records.index)
    if machine is not None:  # the runs of one machine, with the re-timed latencies of any machine
        records = records[records["machine"].eq(machine) | retimed]
        retimed = retimed[records.index]
    out: dict = {}
    for cell in cells(records, backbone, dataset, preset):
        in_cell = _cell_rows(records, cell)
        runs = in_cell[~retimed[in_cell.index]]
        machines = sorted(runs["machine"].dropna().unique()) if "machine" in runs else []
        # Where the cell's latencies were re-timed (pqd retime), each latency machine gets its own report:
        # accuracy from the runs, latency from that machine alone (pqd_lib.latency_source).
        timers = latency_source.latency_machines(in_cell)
        for m in machines or [None]:
            for timer in timers or [None]:
                parts = [m] if len(machines) > 1 or machine is not None else []
                parts += [f"latency-{timer}"] if len(timers) > 1 else []
                source = in_cell if timer is None else latency_source.fold_retimed(in_cell, timer)
                out[(*cell, *parts)] = write_report(source, Path(out_dir) / "-".join((*cell, *parts)), backbone=cell[0],
                                                    dataset=cell[1], preset=cell[2], machine=m)
    c6 = claims.c6(records)
    if backbone is None and dataset is None and preset is None and c6[0]["evidence"].split(":")[0] != "not measured":
        # C6 is a machine's claim, not a trained cell's: latency at full width needs no training.
        out[("c6",)] = _save_table(pd.DataFrame(c6), Path(out_dir), "c6_paper_latency")
    return out


# ---------------------------------------------------------------------------
# The cross-backbone summary at the top of reports/README.md
# ---------------------------------------------------------------------------
#: Peers' FP32 CIFAR-10 top-1 (%) at full width with their own full protocol (hundreds of epochs, all
#: 50,000 training images): the anchors a reader knows, shown beside ours, never compared in a test.
PEER_FP32_CIFAR10: dict[str, tuple[float, str]] = {
    "resnet18": (93.02, "[kuangliu/pytorch-cifar](https://github.com/kuangliu/pytorch-cifar) README, ResNet18"),
    "wrn28_10": (96.00, "[szagoruyko/wide-residual-networks](https://github.com/szagoruyko/wide-residual-networks) "
                        "README: 4.00 % test error, median of 5 runs"),
    "vgg16_bn": (92.64, "[kuangliu/pytorch-cifar](https://github.com/kuangliu/pytorch-cifar) README, VGG16 "
                        "(BatchNorm after every conv, one Linear head)"),
}
#: The claims one trained cell decides (:func:`pqd_lib.claims.verdicts`); C6 is decided per CPU class.
CELL_CLAIMS = ("C1", "C2", "C3", "C4", "C5")
NOT_MEASURED = "not measured yet"
#: The generated block of reports/README.md lies between these two lines; the rest is hand-written.
SUMMARY_BEGIN = "<!-- BEGIN backbone summary: generated by `pqd report`, do not edit by hand -->"
SUMMARY_END = "<!-- END backbone summary -->"
C6_TABLE = "c6_paper_latency.md"


def _qualifier(statement: str) -> str:
    """The last parenthesis of a verdict's statement, e.g. "trained width" (one level of nesting allowed)."""
    match = re.search(r"\(((?:[^()]|\([^()]*\))*)\)\s*$", statement)
    return match.group(1) if match else ""


def _claim_cell(rows: pd.DataFrame) -> str:
    """One claim's verdicts in a few words: the verdict when its rows agree, else each with its qualifier."""
    if rows.empty:
        return "—"
    if rows["verdict"].nunique() == 1:
        return str(rows["verdict"].iloc[0])
    # A row without a qualifier is the claim as the paper states it; the others say what they narrow.
    return "; ".join(f"{r.verdict} ({q})" if (q := _qualifier(r.statement)) else str(r.verdict)
                     for r in rows.itertuples())


def _c6_per_backbone(records: pd.DataFrame) -> dict[str, str]:
    """Each backbone's fastest batch-1 INT8 latency per CPU class, from the C6 records (empty without any)."""
    from .measure.paper_latency import KIND

    if records.empty or "kind" not in records:
        return {}
    rows = records[records["kind"].eq(KIND)].copy()
    if "error" in rows:
        rows = rows[rows["error"].isna()]
    if "quick" in rows:  # --quick runs are smoke tests, not results
        rows = rows[~rows["quick"].fillna(False).astype(bool)]
    rows["latency_ms_p50"] = pd.to_numeric(rows.get("latency_ms_p50"), errors="coerce")
    rows = rows[pd.to_numeric(rows.get("batch_size"), errors="coerce").eq(1)].dropna(subset=["latency_ms_p50"])
    if rows.empty:
        return {}
    cls = rows["cpu_capability_class"] if "cpu_capability_class" in rows else pd.Series("?", index=rows.index)
    rows["cls"] = cls.fillna("?")
    best = rows.groupby(["backbone", "cls"])["latency_ms_p50"].min()
    return {b: ", ".join(f"{ms:.2f} ms ({c})" for (bb, c), ms in best.items() if bb == b)
            for b in best.index.get_level_values(0).unique()}


def backbone_summary(records: pd.DataFrame, cell_reports: Mapping[tuple[str, ...], Sequence[Path]],
                     out_dir: str | os.PathLike = "reports", datasets: Sequence[str] = ("cifar10",)) -> pd.DataFrame:
    """Backbone x claim -> verdict over every cell report written, with the key numbers; one row per report.

    `cell_reports` is what :func:`write_reports` wrote (key ``(backbone, dataset, preset, *parts)`` ->
    paths); each row reads that report's own ``tables/verdicts.csv`` and ``tables/methods.csv``, so the
    summary says exactly what the cell's report says (re-timed latencies included). Rows: every backbone
    of :data:`pqd_lib.backbones.BACKBONES` for each of `datasets` (plus any other dataset reported); a
    backbone without a report gets one row saying :data:`NOT_MEASURED` (no number is made up). Columns:
    the report (a link relative to `out_dir`), machine, width, seeds, our FP32 baseline and P → Q → D
    deploy top-1 (mean ± std over seeds), the peers' FP32 top-1 at full width (:data:`PEER_FP32_CIFAR10`,
    CIFAR-10 only), the verdicts of C1-C5 and C6's figure per backbone with a link to its table (C6 is
    decided per CPU class over every backbone: :func:`pqd_lib.claims.c6`).
    """
    columns = ["backbone", "dataset", "report", "machine", "width", "seeds", "FP32 top-1 (ours, %)",
               "P → Q → D top-1 (ours, %)", "FP32 top-1 (peers, full width, %)", *CELL_CLAIMS,
               "C6 (fastest INT8, batch 1)"]
    reports = {k: v for k, v in cell_reports.items() if len(k) >= 3}
    c6_text = _c6_per_backbone(records)
    rows, statements = [], {}
    for dataset in dict.fromkeys([*datasets, *sorted({k[1] for k in reports})]):
        for backbone in BACKBONES:
            peer = PEER_FP32_CIFAR10.get(backbone) if dataset == "cifar10" else None
            base = {"backbone": backbone, "dataset": dataset,
                    "FP32 top-1 (peers, full width, %)": f"{peer[0]:.2f}" if peer else "—",
                    "C6 (fastest INT8, batch 1)": (f"[{c6_text[backbone]}]({C6_TABLE})" if backbone in c6_text
                                                   else NOT_MEASURED)}
            keys = sorted(k for k in reports if k[:2] == (backbone, dataset))
            if not keys:
                rows.append({**base, "report": NOT_MEASURED, "machine": "—", "width": "—", "seeds": 0,
                             "FP32 top-1 (ours, %)": NOT_MEASURED, "P → Q → D top-1 (ours, %)": "—",
                             **{c: NOT_MEASURED for c in CELL_CLAIMS}})
                continue
            for key in keys:
                folder = Path(next(p for p in reports[key] if Path(p).name == "summary.md")).parent
                verdicts = pd.read_csv(folder / "tables" / "verdicts.csv")
                methods_table = pd.read_csv(folder / "tables" / "methods.csv", dtype=str).set_index("method")
                for v in verdicts.itertuples():  # the claim without its qualifier, for the legend
                    statements.setdefault(v.claim, v.statement.removesuffix(f"({_qualifier(v.statement)})").strip())
                cell = records[records["backbone"].eq(backbone) & records["dataset"].eq(dataset)
                               & records["preset"].eq(key[2]) & records["kind"].eq(Kind.MEASURED)]
                # The key names the machine where the cell has several; else the cell's records name it.
                machines = [m for m in key[3:] if not m.startswith("latency-")]
                if machines:
                    cell = cell[cell["machine"].eq(machines[0])]
                elif "machine" in cell:
                    machines = sorted(cell["machine"].dropna().unique())
                widths = ", ".join(f"{w:g}" for w in sorted(pd.to_numeric(cell["width"], errors="coerce").dropna().unique()))
                top = methods_table["top-1 (%)"] if "top-1 (%)" in methods_table else pd.Series(dtype=str)
                seeds = pd.to_numeric(methods_table.get("n", pd.Series(dtype=str)), errors="coerce").max()
                link = Path(os.path.relpath(folder, out_dir)).as_posix()
                rows.append({**base, "report": f"[{link}]({link}/summary.md)", "machine": ", ".join(machines) or "?",
                             "width": widths or "?", "seeds": 0 if pd.isna(seeds) else int(seeds),
                             # claims.methods names the baseline "FP32 baseline" and each order by its arrows.
                             "FP32 top-1 (ours, %)": top.get("FP32 baseline", "—"),
                             "P → Q → D top-1 (ours, %)": top.get(" → ".join(labels.PIPELINE), "—"),
                             **{c: _claim_cell(verdicts[verdicts["claim"].eq(c)]) for c in CELL_CLAIMS}})
    table = pd.DataFrame(rows, columns=columns)
    table.attrs["statements"] = dict(sorted(statements.items()))  # C1-C5 as the claims module states them
    return table


def _summary_block(table: pd.DataFrame, c6_statement: str) -> str:
    statements = {**table.attrs.get("statements", {}), "C6": c6_statement}
    legend = "; ".join(f"**{c}** {s}" for c, s in statements.items())
    peers = "; ".join(f"{b} {v:.2f} % ({src})" for b, (v, src) in PEER_FP32_CIFAR10.items())
    return "\n".join([
        SUMMARY_BEGIN,
        "## All backbones at a glance",
        "",
        markdown_table(table).rstrip("\n"),
        "",
        f"Claims: {legend}. Each verdict's numbers and tests are in the cell's `tables/verdicts.md`; C6 is decided "
        f"once per CPU class over every backbone at full width ([{C6_TABLE}]({C6_TABLE})).",
        "",
        "**Ours are at a reduced width and budget** (the preset's width, 5,000 training images and 15 baseline "
        "epochs for `mini`), the peers' at full width with their full protocol: the peers' column is the anchor a "
        f"reader knows, not a target these runs could reach. Peers' FP32 CIFAR-10 top-1: {peers}.",
        SUMMARY_END,
    ])


def write_readme_summary(table: pd.DataFrame, readme: str | os.PathLike = "reports/README.md", *,
                         c6_statement: str = "") -> Path:
    """Put the summary table between :data:`SUMMARY_BEGIN` and :data:`SUMMARY_END` of `readme` (atomic).

    Without the markers the block goes right below the first heading; everything else is left as written.
    """
    path = Path(readme)
    text = path.read_text() if path.is_file() else "# Reports\n"
    block = _summary_block(table, c6_statement)
    if SUMMARY_BEGIN in text and SUMMARY_END in text:
        head, rest = text.split(SUMMARY_BEGIN, 1)
        text = head + block + rest.split(SUMMARY_END, 1)[1]
    else:
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{block}\n{rest}"
    atomic_write_text(path, text)
    return path
