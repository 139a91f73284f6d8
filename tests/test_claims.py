"""pqd_lib.claims and report.write_report: verdicts follow the seeds' spread, reports come from records alone."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pqd_lib import claims, report, results

CONFIG = {"prune": {"target_sparsity": 0.5}, "pipeline": {"epochs": [1, 2, 2]}}


def _records(pqd_gain: float = 2.0, noise: float = 0.1, seeds=(0, 1, 2), int8_ms: float = 0.5) -> pd.DataFrame:
    """Synthetic records shaped like notebooks 01-07 write them (unit-test data, never a result)."""
    rng = np.random.default_rng(0)
    rows = []

    def add(**fields):
        rows.append({"backbone": "resnet18", "dataset": "cifar10", "preset": "mini", "width": 0.25,
                     "config": CONFIG, "runtime": "torch-eager", "threads": 1, "batch_size": 1,
                     "run_id": f"run-{fields['seed']}", "data_source": "folder", **fields})

    for seed in seeds:
        jitter = lambda: float(rng.normal(0, noise))  # noqa: E731
        fp32 = {"top1": 80 + jitter(), "size_bytes": 2_000_000, "latency_ms_p50": 2.0 + jitter() / 10}
        for nb in ("01", "02", "03", "04"):
            add(seed=seed, notebook=nb, kind="measured", model="baseline", form="fp32", **fp32)
        add(seed=seed, notebook="02", kind="measured", model="P50", form="fp32", top1=79 + jitter(),
            size_bytes=2_000_000, latency_ms_p50=2.0 + jitter() / 10)
        add(seed=seed, notebook="02", kind="measured", model="P90", form="fp32", top1=60 + jitter(),
            size_bytes=2_000_000, latency_ms_p50=2.0, config={**CONFIG, "prune": {"target_sparsity": 0.9}})
        add(seed=seed, notebook="03", kind="measured", model="Q", form="int8", top1=78 + jitter(),
            size_bytes=600_000, latency_ms_p50=int8_ms + jitter() / 10)
        add(seed=seed, notebook="04", kind="measured", model="D", form="fp32", top1=83.0 + jitter(),
            size_bytes=2_000_000, latency_ms_p50=2.0 + jitter() / 10)
        for order in claims.ORDERS:
            top1 = 78 + (pqd_gain if order == "PQD" else 0) + jitter()
            for allocation in ("by_stage", "by_position"):
                add(seed=seed, notebook="06", kind="deploy", order=order, allocation=allocation, top1=top1,
                    size_bytes=600_000, latency_ms_p50=int8_ms + jitter() / 10, form="int8", epochs="1/2/2",
                    fake_quant_top1=top1, int8_agreement=99.5)
        add(seed=seed, notebook="05", kind="stage", order="PQD", stage="Q", top1=77 + jitter(),
            data_source="CIFAR-10 (JPEG q75 mirror)")
        add(seed=seed, notebook="05", kind="stage", order="PQD", stage="D", top1=79 + jitter(), deploy_form="int8")
    for width, model, runtime, target, ms in [(1.0, "FP32", "torch-eager", 0.0, 17.6),
                                              (1.0, "INT8", "torch-eager", 0.0, 3.3),
                                              (1.0, "FP32 90% sparse", "torch-eager", 0.9, 17.5),
                                              (1.0, "FP32 90% sparse", "torch-sparse-csr", 0.9, 28.5)]:
        add(seed=0, notebook="07", kind="latency", width=width, model=model, runtime=runtime, target_sparsity=target,
            latency_ms_p50=ms, latency_ms_p90=ms * 1.05, params=100, macs=1000,
            nonzero_macs=1000 * (1 - target), fp32_ms=17.6, speedup_vs_fp32=17.6 / ms)
    return pd.DataFrame(rows)


def _verdict(table: pd.DataFrame, claim: str, contains: str = "") -> str:
    rows = table[table["claim"].eq(claim) & table["statement"].str.contains(contains, regex=False)]
    assert len(rows) == 1, rows
    return rows["verdict"].item()


def test_clear_effects_hold_and_noise_stays_unresolved():
    table = claims.verdicts(claims.select(_records(pqd_gain=2.0)))
    assert _verdict(table, "C1", "trained width") == claims.HOLDS
    assert _verdict(table, "C1", "full width") == claims.HOLDS
    assert _verdict(table, "C2", "trained width") == claims.HOLDS
    assert _verdict(table, "C2", "full width") == claims.HOLDS
    assert _verdict(table, "C3") == claims.HOLDS
    assert _verdict(table, "C4") == claims.HOLDS
    # D alone is more accurate and Q alone as small and fast: the pipeline cannot dominate them.
    assert _verdict(table, "C5") == claims.FAILS
    assert table["evidence"].str.len().gt(10).all()

    noisy = claims.verdicts(claims.select(_records(pqd_gain=0.5, noise=3.0)))
    assert _verdict(noisy, "C3") == claims.UNRESOLVED


def test_the_opposite_effect_does_not_hold():
    table = claims.verdicts(claims.select(_records(pqd_gain=-3.0, int8_ms=4.0)))
    assert _verdict(table, "C3") == claims.FAILS
    assert _verdict(table, "C1", "trained width") == claims.FAILS  # INT8 slower than FP32 (thin layers)


def test_one_seed_is_never_a_verdict():
    table = claims.verdicts(claims.select(_records(seeds=(0,))))
    for claim in ("C3", "C4"):
        assert _verdict(table, claim) == claims.UNRESOLVED


def test_equal_orders_on_quiet_seeds_are_equivalent_not_unresolved():
    table = claims.verdicts(claims.select(_records(pqd_gain=0.0, noise=0.05)))
    assert _verdict(table, "C3") == claims.equivalent("0.5 pp")


def test_decide_uses_holm_for_does_not_hold_and_needs_every_comparison_to_hold():
    from pqd_lib.stats import paired_test

    better = paired_test([1.0, 1.1, 0.9], [0.0, 0.0, 0.0], 0.5)
    slightly_worse = paired_test([0.0, 0.0, 0.0, 0.0], [0.30, 0.62, 0.18, 0.55], 0.5)  # one-sided p ~0.02
    assert claims.decide({"a": better, "b": better}, "0.5 pp") == claims.HOLDS
    assert 0.0125 < slightly_worse.p_less < 0.05
    # One marginal opposite result among four comparisons is not significant once Holm-corrected ...
    assert claims.decide({"a": better, "b": slightly_worse, "c": better, "d": better}, "0.5 pp") == claims.UNRESOLVED
    # ... but alone it is.
    assert claims.decide({"b": slightly_worse}, "0.5 pp") == claims.FAILS
    assert claims.decide({}, "0.5 pp") == claims.UNRESOLVED


def test_seeds_plan_lists_every_accuracy_comparison_with_the_seeds_it_needs():
    plan = claims.seeds_plan(claims.select(_records(pqd_gain=0.3, noise=0.3)))
    assert set(plan["claim"]) == {"C3", "C4"} and len(plan) == 6
    assert plan["seeds"].eq(3).all()
    assert plan["seeds_for_direction"].dropna().ge(2).all()


def test_c5_is_judged_on_each_stated_storage_form():
    table = claims.verdicts(claims.select(_records()))
    statements = table.loc[table["claim"].eq("C5"), "statement"].tolist()
    assert any("dense as saved" in s for s in statements)
    assert not any("gzip" in s for s in statements)  # the synthetic records carry no gzip size


def test_pareto_front_keeps_only_undominated_points():
    df = pd.DataFrame({"cost": [1.0, 2.0, 3.0, 2.5], "top1": [70.0, 80.0, 79.0, 85.0]})
    assert report.pareto_front(df, "cost")["top1"].tolist() == [70.0, 80.0, 85.0]


def test_methods_picks_one_row_per_method_and_seed():
    points = claims.methods(claims.select(_records()))
    counts = points.groupby("method").size()
    assert set(counts) == {3}
    assert {"FP32 baseline", "P alone", "Q alone", "D alone", "P → Q → D"} <= set(counts.index)
    assert len(counts) == 4 + len(claims.ORDERS)
    p_alone = claims.methods(claims.select(_records())).query("method == 'P alone'")
    assert p_alone["top1"].gt(70).all()  # the pipeline's 50 %, not notebook 02's 90 % sweep point


def test_the_loaded_data_description_reaches_every_record_of_a_run():
    df = claims.select(_records())
    assert set(df["data_source"]) == {"CIFAR-10 (JPEG q75 mirror)"}


def test_empty_store_gives_unresolved_verdicts_and_still_writes_every_file(tmp_path):
    paths = report.write_report(results.load_results(tmp_path / "nothing"), tmp_path / "out")
    assert all(p.is_file() for p in paths)
    table = pd.read_csv(tmp_path / "out" / "tables" / "verdicts.csv")
    assert set(table["verdict"]) == {claims.UNRESOLVED}


def test_write_report_is_deterministic(tmp_path):
    records = _records()
    first = {p.name: p.read_bytes() for p in report.write_report(records, tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in report.write_report(records, tmp_path / "b")}
    assert first == second
    assert {"frontier.png", "order_ablation.png", "verdicts.md", "paper_vs_ours.md", "methods.csv"} <= set(first)
    verdicts = (tmp_path / "a" / "tables" / "verdicts.md").read_text()
    assert "C5" in verdicts and "|" in verdicts


@pytest.mark.parametrize("proxy", ["macs", "nonzero_macs"])
def test_proxy_correlation_is_a_rank_correlation(proxy):
    lat = pd.DataFrame({"width": [1.0] * 4, "latency_ms_p50": [1.0, 2.0, 3.0, 4.0], "macs": [10, 20, 30, 40],
                        "nonzero_macs": [40, 30, 20, 10]})
    table = claims.proxy_correlations(lat)
    assert table[proxy].item() == pytest.approx(1.0 if proxy == "macs" else -1.0)


def test_every_order_is_known():
    assert sorted(claims.ORDERS) == sorted("".join(p) for p in itertools.permutations("PQD"))


def test_pqd_report_command_regenerates_from_the_store(tmp_path, capsys):
    from pqd_lib import cli

    store = tmp_path / "results"
    for i, row in enumerate(_records().to_dict("records")):
        results.append({**row, "record_id": f"r{i}"}, store)
    other = {**_records(seeds=(0,)).iloc[0].to_dict(), "preset": "smoke", "run_id": "smoke-0", "record_id": "s0"}
    results.append(other, store)
    assert cli.main(["report", "--results-dir", str(store), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "C3  holds" in out
    cell = tmp_path / "out" / "resnet18-cifar10-mini"
    assert (cell / "figures" / "frontier.png").stat().st_size > 1000
    assert (tmp_path / "out" / "resnet18-cifar10-smoke" / "summary.md").is_file()  # cells never mix
    assert cli.main(["report", "--results-dir", str(store), "--out", str(tmp_path / "o2"), "--preset", "paper"]) == 1
    assert "no records" in capsys.readouterr().err


def test_c3_is_decided_per_learning_rate_setting_and_the_ce_control_feeds_c4():
    records = _records(pqd_gain=2.0)
    free = records[records["kind"].eq("deploy")].copy()
    free["config"] = [{**CONFIG, "pipeline": {"epochs": [1, 2, 2], "qat_lr_after_q": False}}] * len(free)
    free["top1"] = free["top1"] - 2.0 * free["order"].eq("PQD")  # without the cap, no order wins
    ce = records[records["kind"].eq("deploy") & records["order"].eq("PQD")
                 & records["allocation"].eq("by_stage")].assign(control=claims.CE_CONTROL, stage="D")
    pqd = records["kind"].eq("deploy")
    records.loc[pqd, "deploy_top1"] = records.loc[pqd, "top1"]
    ce = ce.assign(deploy_top1=ce["top1"] - 1.0)
    table = claims.verdicts(claims.select(pd.concat([records, free, ce], ignore_index=True)))
    assert _verdict(table, "C3", "capped") == claims.HOLDS
    assert _verdict(table, "C3", "position-independent") != claims.HOLDS
    assert _verdict(table, "C4", "after P → Q") == claims.HOLDS
    # The control's records do not leak into the order ablation or the frontier.
    points = claims.methods(claims.select(pd.concat([records, free, ce], ignore_index=True)))
    assert points.groupby("method").size().eq(3).all()


def test_a_pt2e_int8_model_is_judged_on_its_compiled_runtime_and_an_eager_model_on_eager():
    """A PT2E INT8 graph is measured only under torch-compile (eager it runs INT8 arithmetic in FP32):
    C1 must read that row; a model measured eager (FP32, FX INT8) keeps its eager row even when a
    compiled one exists beside it (``measure.compile``)."""
    df = _records()
    q = df["notebook"].eq("03") & df["model"].eq("Q")
    df.loc[q, "runtime"] = "torch-compile"  # a PT2E grid writes its INT8 rows so
    compiled_fp32 = df[df["notebook"].eq("03") & df["model"].eq("baseline")].assign(runtime="torch-compile",
                                                                                     latency_ms_p50=0.1)
    df = pd.concat([df, compiled_fp32], ignore_index=True)
    # Holds only if notebook 03's FP32 is its eager 2 ms (not the compiled 0.1 ms) and INT8 its compiled rows.
    assert _verdict(claims.verdicts(claims.select(df)), "C1", "trained width") == claims.HOLDS
    points = claims.methods(claims.select(df))
    assert len(points.query("method == 'Q alone'")) == 3  # the compiled rows, one per seed
