"""Which latency a verdict reads: one machine's re-timed records in place of the runs' own latencies.

Runs record their accuracy and, made before the rounds protocol, their own latency, timed one model
per window on the machine that trained them. ``pqd retime`` (:mod:`pqd_lib.measure.retime`) re-times
those latencies under the rounds protocol, possibly on another machine, from the architecture only.
:func:`fold_retimed` puts one machine's re-timed figures into the runs' records, matched by deploy
signature, threads, batch size and run id, so that every verdict keeps its accuracy from the runs
and reads its latency from that machine alone: the runs' own single-model latencies are moved to
``old_protocol_latency_ms_p50``/``_p90`` and never enter a comparison; a latency that was not
re-timed becomes empty rather than mixed in. Each folded row says where its latency comes from
(``latency_machine``, ``latency_capability_class``, ``latency_protocol``, ``latency_record``).

A re-timed latency is one measurement shared by every seed, so a paired test over seeds would see
no spread. :func:`latency_test` and :func:`speedup_test` decide such comparisons from the rounds
protocol's own intervals instead (each model's 95 % bootstrap CI of its latency relative to the
reference of the same rounds; a difference's interval is bounded by the endpoints, a conservative
combination), and fall back to the paired test over seeds for latencies measured per seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from .hardware import record_capability_class
from .labels import Kind
from .measure.retime import signature_of
from .stats import PairedTest, paired_test

__all__ = ["LATENCY_COLUMNS", "latency_machines", "fold_retimed", "describe_source", "latency_test",
           "speedup_test"]

#: Columns a folded row gains (the claims carry them into their method rows).
LATENCY_COLUMNS = ["latency_record", "latency_machine", "relative_to_reference", "relative_ci_low",
                   "relative_ci_high", "reference_ms_p50", "rounds_used"]
#: The two-sided level of the rounds protocol's intervals (95 %): each one-sided side is 2.5 %.
_INTERVAL_ALPHA = 0.025


def latency_machines(records: pd.DataFrame) -> list[str]:
    """The machines holding re-timed latencies among `records`, sorted."""
    if records.empty or "kind" not in records:
        return []
    return sorted(records.loc[records["kind"].eq(Kind.RETIMED), "machine"].dropna().unique())


def _key(record: dict[str, Any], vnni: bool) -> tuple | None:
    sig = signature_of(record, vnni=vnni)
    if sig is None:
        return None
    return dataclasses.replace(sig, reduce_range=None), int(record["threads"]), int(record["batch_size"])


def fold_retimed(records: pd.DataFrame, machine: str) -> pd.DataFrame:
    """The runs' records with `machine`'s re-timed latencies in place of their own (module docstring).

    Re-timed records themselves (of every machine) are left out of the result; records of other
    kinds (stages, C6) pass unchanged. Rows of notebook 07 (kind ``latency``) get their
    ``fp32_ms`` and ``speedup_vs_fp32`` recomputed from the re-timed FP32 model of the same width,
    threads and batch (ratios of relative latencies of the same rounds).

    Raises:
        ValueError: `machine` has no re-timed records among `records` (names the machines that have).
    """
    retimed = records[records["kind"].eq(Kind.RETIMED) & records["machine"].eq(machine)]
    if retimed.empty:
        raise ValueError(f"machine: {machine!r} has no re-timed latencies here; machines with some: "
                         f"{', '.join(latency_machines(records)) or 'none'} (pqd retime makes them)")
    vnni = bool(retimed["isa_avx512_vnni"].fillna(False).astype(bool).any()) if "isa_avx512_vnni" in retimed else False
    cls = record_capability_class(retimed.iloc[0].to_dict())
    index: dict[tuple, dict[str, Any]] = {}
    for r in retimed.to_dict("records"):
        if r.get("error") is None or (isinstance(r.get("error"), float) and math.isnan(r["error"])):
            key = _key({**r, "kind": Kind.MEASURED}, vnni)
            if key is not None:
                index[key] = r
    out = records[~records["kind"].eq(Kind.RETIMED)].copy()
    for column in (*LATENCY_COLUMNS, "old_protocol_latency_ms_p50", "old_protocol_latency_ms_p90",
                   "latency_capability_class", "latency_protocol"):
        if column not in out:
            out[column] = np.nan
        out[column] = out[column].astype(object)
    for i, r in zip(out.index, out.to_dict("records")):
        if r.get("protocol") == "rounds" or r.get("kind") not in (Kind.MEASURED, Kind.DEPLOY, Kind.LATENCY):
            continue
        key = _key(r, vnni)
        if key is None:
            continue
        out.at[i, "old_protocol_latency_ms_p50"] = r.get("latency_ms_p50")
        out.at[i, "old_protocol_latency_ms_p90"] = r.get("latency_ms_p90")
        new = index.get(key)
        if new is None or r.get("run_id") not in (new.get("retimes") or []):
            out.at[i, "latency_ms_p50"] = out.at[i, "latency_ms_p90"] = np.nan
            continue
        for column in ("latency_ms_p50", "latency_ms_p90", *LATENCY_COLUMNS[2:]):
            out.at[i, column] = new.get(column)
        out.at[i, "latency_record"] = new["record_id"]
        out.at[i, "latency_machine"] = machine
        out.at[i, "latency_capability_class"] = cls
        out.at[i, "latency_protocol"] = "rounds, re-timed from the architecture only"
    for column in ("latency_ms_p50", "latency_ms_p90", *LATENCY_COLUMNS[2:]):
        out[column] = pd.to_numeric(out[column], errors="coerce")
    return _speedups(out)


def _speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Notebook 07's FP32 latency and speed-up columns from the folded (re-timed) figures."""
    latency = df["kind"].eq(Kind.LATENCY) & df["latency_record"].notna()
    if not latency.any() or "model" not in df:
        return df
    keys = ["width", "threads", "batch_size"]
    fp32 = df[latency & df["model"].eq("FP32") & df["runtime"].eq("torch-eager")]
    fp32 = fp32.groupby(keys)[["relative_to_reference", "latency_ms_p50"]].first()
    for i in df.index[latency]:
        key = tuple(df.loc[i, keys])
        if key in fp32.index:
            df.at[i, "fp32_ms"] = fp32.loc[key, "latency_ms_p50"]
            df.at[i, "speedup_vs_fp32"] = fp32.loc[key, "relative_to_reference"] / df.at[i, "relative_to_reference"]
        else:
            df.at[i, "fp32_ms"] = df.at[i, "speedup_vs_fp32"] = np.nan
    return df


def describe_source(df: pd.DataFrame) -> str:
    """One sentence saying which machine(s) and protocol the latencies of `df` come from."""
    if "latency_machine" not in df or not df["latency_machine"].notna().any():
        machines = sorted(df["machine"].dropna().unique()) if "machine" in df else []
        return f"Latency: measured by the runs themselves on {', '.join(machines) or 'an unrecorded machine'}."
    rows = df[df["latency_machine"].notna()]
    machine, cls = rows["latency_machine"].iloc[0], rows["latency_capability_class"].iloc[0]
    trained = sorted(df["machine"].dropna().unique())
    old = int(df["old_protocol_latency_ms_p50"].notna().sum())
    return (f"Latency: re-timed on **{machine}** ({cls}) under the rounds protocol, from the architecture only "
            f"(seeded weights, the recorded sparsity and quantization settings; `pqd retime`). Accuracy: the runs' "
            f"own records, made on {', '.join(trained)}. The runs' own latencies ({old} records, one model per window) "
            "are superseded: they are kept as `old_protocol_latency_ms_*` and enter no comparison.")


# ---------------------------------------------------------------------------
# Tests on one rounds measurement
# ---------------------------------------------------------------------------
def _single(rows: pd.DataFrame) -> pd.Series | None:
    """The one re-timed measurement every row of `rows` shares, or None."""
    if "latency_record" not in rows or rows.empty or rows["latency_record"].isna().any():
        return None
    if rows["latency_record"].nunique() != 1:
        return None
    row = rows.iloc[0]
    if any(pd.isna(row.get(c)) for c in ("relative_to_reference", "relative_ci_low", "relative_ci_high",
                                         "reference_ms_p50")):
        return None
    return row


def _same_rounds(*rows: pd.Series) -> bool:
    keys = ("latency_machine", "width", "threads", "batch_size")
    return all(all(r.get(k) == rows[0].get(k) for k in keys) for r in rows)


def _interval_test(point: float, low: float, high: float, margin: float, n: int) -> PairedTest:
    """A comparison decided by an interval: the claimed direction when it excludes 0, equivalence inside ±margin.

    p-values are 0 or 1 (the interval decides), at the interval's one-sided level of 2.5 %.
    """
    def p(holds: bool) -> float:
        return 0.0 if holds else 1.0

    return PairedTest(n, point, math.nan, low, high, p(low > 0), p(high < 0), p(-margin < low and high < margin),
                      p(low > -margin), p(high < -margin), margin, _INTERVAL_ALPHA)


def latency_test(a: pd.DataFrame, b: pd.DataFrame, margin_fraction: float, *, scale_a: float = 1.0) -> PairedTest:
    """``scale_a * latency(a) - latency(b)`` in ms, margin ``margin_fraction`` x latency(a).

    `a`, `b`: the method rows (per seed). When each shares one re-timed measurement from the same
    rounds, the interval of the difference decides; otherwise the paired test over seeds.
    """
    ra, rb = _single(a), _single(b)
    if ra is not None and rb is not None and _same_rounds(ra, rb):
        ref = float(ra["reference_ms_p50"])
        point = (scale_a * ra["relative_to_reference"] - rb["relative_to_reference"]) * ref
        low = (scale_a * ra["relative_ci_low"] - rb["relative_ci_high"]) * ref
        high = (scale_a * ra["relative_ci_high"] - rb["relative_ci_low"]) * ref
        n = int(min(ra.get("rounds_used") or 0, rb.get("rounds_used") or 0))
        return _interval_test(point, low, high, margin_fraction * ra["relative_to_reference"] * ref, n)
    sa, sb = a.groupby("seed")["latency_ms_p50"].mean(), b.groupby("seed")["latency_ms_p50"].mean()
    return paired_test(scale_a * sa, sb, margin_fraction * sa.mean())


def speedup_test(base_a: pd.DataFrame, a: pd.DataFrame, base_b: pd.DataFrame, b: pd.DataFrame,
                 margin_fraction: float) -> PairedTest:
    """Speed-up of `a` over `base_a` minus that of `b` over `base_b`, margin ``margin_fraction`` x the first.

    With one re-timed measurement each (same rounds) the speed-ups' intervals decide; otherwise the
    paired test over seeds of the per-seed speed-ups.
    """
    rows = [_single(x) for x in (base_a, a, base_b, b)]
    if all(r is not None for r in rows) and _same_rounds(*rows):
        fa, ra, fb, rb = rows
        sa = (fa["relative_to_reference"] / ra["relative_to_reference"],
              fa["relative_ci_low"] / ra["relative_ci_high"], fa["relative_ci_high"] / ra["relative_ci_low"])
        sb = (fb["relative_to_reference"] / rb["relative_to_reference"],
              fb["relative_ci_low"] / rb["relative_ci_high"], fb["relative_ci_high"] / rb["relative_ci_low"])
        n = int(min(r.get("rounds_used") or 0 for r in rows))
        return _interval_test(sa[0] - sb[0], sa[1] - sb[2], sa[2] - sb[1], margin_fraction * sa[0], n)

    def per_seed(base: pd.DataFrame, x: pd.DataFrame) -> pd.Series:
        return (base.groupby("seed")["latency_ms_p50"].mean() / x.groupby("seed")["latency_ms_p50"].mean()).dropna()

    first = per_seed(base_a, a)
    return paired_test(first, per_seed(base_b, b), margin_fraction * first.mean())
