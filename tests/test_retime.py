"""pqd retime and pqd_lib.latency_source: old latencies re-timed by signature, folded in per machine, never mixed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pqd_lib import cli, latency_source, report, results
from pqd_lib.config import MeasureConfig
from pqd_lib.labels import Kind
from pqd_lib.measure import retime

FULL_RANGE = {"quantize": {"backend": "x86", "reduce_range": False}, "prune": {"target_sparsity": 0.5}}


def _runs(width: float = 0.125, seeds=(0, 1)) -> pd.DataFrame:
    """Records shaped like the committed mini runs (old single-model protocol, full-range INT8); unit-test data."""
    rows = []
    for seed in seeds:
        def add(**fields):
            rows.append({"backbone": "resnet18", "dataset": "cifar10", "preset": "mini", "width": width, "seed": seed,
                         "run_id": f"resnet18-cifar10-mini-s{seed}", "machine": "zen4", "config": FULL_RANGE,
                         "runtime": "torch-eager", "threads": 1, "batch_size": 1, "error": None, **fields})

        add(record_id=f"01-baseline-{seed}", notebook="01", kind="measured", model="baseline", form="fp32",
            sparsity=0.0, latency_ms_p50=2.0 + seed / 10, top1=60.0)
        add(record_id=f"02-P50-{seed}", notebook="02", kind="measured", model="P50", form="fp32", sparsity=0.4988,
            latency_ms_p50=2.1, top1=59.0)
        add(record_id=f"03-Q-{seed}", notebook="03", kind="measured", model="Q", form="int8", sparsity=0.021,
            latency_ms_p50=1.0, top1=59.5)
        add(record_id=f"06-PQD-{seed}", notebook="06", kind="deploy", order="PQD", form="int8", sparsity=0.5,
            latency_ms_p50=1.3 + seed, top1=59.4)
        add(record_id=f"05-PQD-stage-{seed}", notebook="05", kind="stage", order="PQD", stage="D", top1=59.4)
    rows.append({**rows[0], "record_id": "07-ort-qat", "notebook": "07", "kind": "latency", "model": "ORT INT8 (pqd QAT)",
                 "runtime": "onnxruntime", "form": "int8", "target_sparsity": 0.0, "latency_ms_p50": 0.9})
    rows.append({**rows[0], "record_id": "07-failed", "notebook": "07", "kind": "latency", "model": "FP32",
                 "latency_ms_p50": None, "error": "RuntimeError: no kernel"})
    rows.append({**rows[0], "record_id": "06-new", "kind": "deploy", "protocol": "rounds", "latency_ms_p50": 1.0})
    return pd.DataFrame(rows)


def test_signatures_keep_what_latency_depends_on_and_are_shared_by_seeds():
    needed = retime.plan(_runs(), vnni=False)
    labels = sorted(sig.label for sig, _, _ in needed)
    # The sparsity level is part of every signature (C2 asks whether zeros change dense kernels' time);
    # an INT8 model's 2 % of rounded-to-zero weights is not a pruning level; failed and rounds records are skipped.
    assert labels == ["fp32 0% · torch-eager", "fp32 50% · torch-eager", "int8 0% · torch-eager",
                      "int8 50% · torch-eager", "onnx-int8-qat 0% · onnxruntime"]
    shared = {sig.label: [r["record_id"] for r in recs] for (sig, _, _), recs in needed.items()}
    assert shared["int8 50% · torch-eager"] == ["06-PQD-0", "06-PQD-1"]  # both seeds, one measurement
    int8 = next(sig for sig, _, _ in needed if sig.deploy == "int8")
    assert int8.reduce_range is True  # full range is refused without VNNI: timed with the same kernels at 7 bits
    with_vnni = next(sig for sig, _, _ in retime.plan(_runs(), vnni=True) if sig.deploy == "int8")
    assert with_vnni.reduce_range is False  # the recorded range, where the CPU runs it exactly
    assert retime.estimate_seconds(needed, MeasureConfig()) > 0


def test_int8_records_of_the_two_engines_never_share_a_signature():
    """FX and PT2E INT8 models are different programs: a record's engine is part of its signature, and a
    record without one predates the field (FX, the only engine then), so old names and ids stay the same."""
    runs = _runs(seeds=(0,))
    pt2e = runs.assign(run_id="pt2e-run", config=[{**FULL_RANGE, "quantize": {**FULL_RANGE["quantize"], "engine": "pt2e"}}]
                       * len(runs))
    needed = retime.plan(pd.concat([runs, pt2e], ignore_index=True), vnni=False)
    by_label = {sig.label: sig for sig, _, _ in needed}
    assert by_label["int8 50% · torch-eager"].engine == "fx" and by_label["int8 50% · torch-eager · pt2e"].engine == "pt2e"
    assert by_label["onnx-int8-qat 0% · onnxruntime · pt2e"] != by_label["onnx-int8-qat 0% · onnxruntime"]
    assert by_label["fp32 50% · torch-eager"].engine is None  # FP32 does not depend on the engine: still shared
    shared = {sig.label: sorted({r["run_id"] for r in recs}) for (sig, _, _), recs in needed.items()}
    assert shared["fp32 50% · torch-eager"] == ["pt2e-run", "resnet18-cifar10-mini-s0"]
    assert shared["int8 50% · torch-eager · pt2e"] == ["pt2e-run"]


def test_retime_times_each_signature_once_and_names_what_it_retimes(tmp_path):
    runs = _runs()
    runs = runs[~runs["runtime"].eq("onnxruntime")]  # the ONNX path is covered by the ONNX tests
    store = tmp_path / "results"
    cfg = MeasureConfig(isolate=False, rounds=2, block_seconds=0.0, warmup=1, max_reruns=0, calibration_images=16)
    out = retime.retime(runs, cfg, results_dir=store)
    assert len(out) == 4 and not any(r["error"] for r in out)
    by_label = {r["model"]: r for r in out}
    assert set(by_label) == {"FP32", "FP32 50% sparse", "INT8", "INT8 50% sparse"}
    pqd = by_label["INT8 50% sparse"]
    assert pqd["kind"] == Kind.RETIMED and pqd["protocol"] == "rounds" and pqd["weights"] == retime.WEIGHTS
    assert pqd["retimes"] == ["resnet18-cifar10-mini-s0", "resnet18-cifar10-mini-s1"]
    assert pqd["retimed_records"] == 2 and pqd["source_machines"] == ["zen4"] and pqd["recorded_reduce_range"] == "False"
    assert pqd["model_sparsity"] == pytest.approx(0.5, abs=0.05)  # really pruned to the recorded level
    assert by_label["FP32"]["relative_to_reference"] > 0 and pqd["identical_spread"] is not None
    written = results.load_results(store)
    assert len(written) == 4 and set(written["machine"]) == {results.this_machine()}
    assert set(written["run_id"]) == {"resnet18-cifar10-mini-retimed"}


def _retimed(runs: pd.DataFrame, machine: str, ms: dict[str, float], *, vnni: bool = False) -> list[dict]:
    """Re-timed records for every signature of `runs` (synthetic: latency per deploy form, CI ±2 %)."""
    out = []
    for (sig, threads, batch), recs in retime.plan(runs, vnni=vnni).items():
        rel = ms[sig.deploy] / 2.0
        out.append({"record_id": f"retime-w{sig.width:g}-{sig.label}-{threads}-{batch}", "kind": Kind.RETIMED, "machine": machine,
                    "backbone": sig.backbone, "dataset": "cifar10", "preset": "mini", "width": sig.width,
                    "deploy": sig.deploy, "runtime": sig.runtime, "target_sparsity": sig.sparsity,
                    "form": "int8" if "int8" in sig.deploy else "fp32", "model": sig.label,
                    "threads": threads, "batch_size": batch, "protocol": "rounds", "error": None,
                    "retimes": sorted({r["run_id"] for r in recs}), "latency_ms_p50": ms[sig.deploy],
                    "latency_ms_p90": ms[sig.deploy] * 1.1, "relative_to_reference": rel,
                    "relative_ci_low": rel * 0.98, "relative_ci_high": rel * 1.02, "reference_ms_p50": 2.0,
                    "rounds_used": 15, "isa_avx512_vnni": vnni, "isa_avx2": True, "cpu_model": "AMD EPYC"})
    return out


def test_fold_takes_latency_from_one_machine_and_never_mixes_the_old_protocol():
    runs = _runs()
    store = pd.concat([runs, pd.DataFrame(_retimed(runs, "avx2", {"fp32": 2.0, "int8": 0.8, "onnx-int8-qat": 0.7}))],
                      ignore_index=True)
    assert latency_source.latency_machines(store) == ["avx2"]
    folded = latency_source.fold_retimed(store, "avx2").set_index("record_id")
    assert Kind.RETIMED not in set(folded["kind"])
    assert folded.loc["06-PQD-0", "latency_ms_p50"] == folded.loc["06-PQD-1", "latency_ms_p50"] == 0.8
    assert folded.loc["06-PQD-1", "old_protocol_latency_ms_p50"] == 2.3  # kept, out of every comparison
    assert folded.loc["06-PQD-1", "latency_machine"] == "avx2" and folded.loc["06-PQD-1", "machine"] == "zen4"
    assert folded.loc["06-new", "latency_ms_p50"] == 1.0  # already under the rounds protocol: untouched
    assert pd.isna(folded.loc["05-PQD-stage-0", "latency_ms_p50"]) and folded.loc["05-PQD-stage-0", "top1"] == 59.4
    # A run the re-timing did not name gets no latency rather than another machine's.
    other = runs.assign(run_id="another-run")
    folded = latency_source.fold_retimed(pd.concat([other, store[store["kind"].eq(Kind.RETIMED)]]), "avx2")
    assert folded.loc[folded["kind"].ne("stage"), "latency_ms_p50"].drop(folded.index[folded["protocol"].eq("rounds")]).isna().all()
    with pytest.raises(ValueError, match="'zen4' has no re-timed latencies"):
        latency_source.fold_retimed(store, "zen4")


def _row(rel: float, half_width: float, record: str = "r", **extra) -> pd.DataFrame:
    return pd.DataFrame([{"seed": s, "latency_record": record, "latency_machine": "m", "width": 0.25, "threads": 1,
                          "batch_size": 1, "relative_to_reference": rel, "relative_ci_low": rel - half_width,
                          "relative_ci_high": rel + half_width, "reference_ms_p50": 2.0, "rounds_used": 15,
                          "latency_ms_p50": rel * 2.0, **extra} for s in (0, 1, 2)])


def test_one_shared_measurement_is_decided_by_its_interval_not_by_seeds():
    # FP32 at 1.0 x reference, INT8 at 0.4: the difference's interval excludes 0 -> INT8 faster.
    assert latency_source.latency_test(_row(1.0, 0.02, "a"), _row(0.4, 0.02, "b"), 0.05).outcome == "greater"
    # 1 % apart with ±3 % intervals: a paired test over identical seeds would call the sign; the interval does not.
    close = latency_source.latency_test(_row(1.0, 0.03, "a"), _row(0.99, 0.03, "b"), 0.05)
    assert close.outcome == "unresolved" and close.alpha == pytest.approx(0.025)
    assert latency_source.latency_test(_row(1.0, 0.01, "a"), _row(0.995, 0.01, "b"), 0.05).outcome == "equivalent"
    speed = latency_source.speedup_test(_row(1.0, 0.01, "f"), _row(0.4, 0.01, "q"), _row(1.0, 0.01, "f"),
                                        _row(0.98, 0.01, "p"), 0.05)
    assert speed.outcome == "greater" and speed.mean_diff == pytest.approx(2.5 - 1 / 0.98)
    # Per-seed latencies (no re-timed record) keep the paired test over seeds.
    per_seed = pd.DataFrame({"seed": [0, 1, 2], "latency_ms_p50": [2.0, 2.1, 1.9]})
    assert latency_source.latency_test(per_seed, per_seed.assign(latency_ms_p50=[1.0, 1.1, 0.9]), 0.05).n == 3


def test_report_reads_retimed_latency_and_says_which_machine_it_comes_from(tmp_path):
    from test_claims import _records

    runs = _records().assign(machine="zen4")
    retimed = pd.DataFrame(_retimed(runs, "avx2-box", {"fp32": 2.0, "int8": 0.6}))
    store = pd.concat([runs, retimed], ignore_index=True)
    written = report.write_reports(store, tmp_path)
    assert list(written) == [("resnet18", "cifar10", "mini")]  # one report: accuracy from zen4, latency from avx2-box
    summary = (tmp_path / "resnet18-cifar10-mini" / "summary.md").read_text()
    assert "re-timed on **avx2-box** (x86-avx2)" in summary and "made on zen4" in summary
    verdicts = pd.read_csv(tmp_path / "resnet18-cifar10-mini" / "tables" / "verdicts.csv")
    c1 = verdicts[verdicts["claim"].eq("C1") & verdicts["statement"].str.contains("trained width")].iloc[0]
    assert c1["verdict"] == "holds" and "3.33x" in c1["evidence"]  # 2.0 / 0.6 from the re-timed records
    # Two latency machines: one report each, never one comparison across them.
    both = pd.concat([store, retimed.assign(machine="zen5", record_id=retimed["record_id"] + "-z5")], ignore_index=True)
    assert sorted(report.write_reports(both, tmp_path / "two")) == [
        ("resnet18", "cifar10", "mini", "latency-avx2-box"), ("resnet18", "cifar10", "mini", "latency-zen5")]


def test_pqd_retime_plans_from_the_store_and_refuses_an_empty_selection(tmp_path, capsys):
    store = tmp_path / "results"
    for row in _runs().to_dict("records"):
        results.append({k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}, store)
    assert cli.main(["retime", "--results-dir", str(store), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "5 deploy signatures" in out and "int8 50% · torch-eager" in out and "shared by 2 record(s)" in out
    assert cli.main(["retime", "--results-dir", str(store), "--preset", "paper", "--plan"]) == 1
    assert "no single-model-protocol latency" in capsys.readouterr().err
    assert not list((store).glob("*/*retimed*"))  # planning writes nothing

