"""pqd_lib.report: the seed aggregation table and every figure function (tidy DataFrame in, Figure out)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from pqd_lib import report


def test_mean_std_formats_groups_and_counts_records():
    df = pd.DataFrame({"order": ["PQD", "PQD", "QPD"], "seed": [0, 1, 0], "top1": [90.0, 92.0, 88.0],
                       "latency_ms_p50": [1.0, 3.0, float("nan")]})
    table = report.mean_std(df, by=["order"], metrics={"top1": "top-1", "latency_ms_p50": "p50"})
    assert table.to_dict("records") == [
        {"order": "PQD", "n": 2, "top-1": f"91.00 ± {math.sqrt(2):.2f}", "p50": f"2.00 ± {math.sqrt(2):.2f}"},
        {"order": "QPD", "n": 1, "top-1": "88.00", "p50": "–"},
    ]
    empty = report.mean_std(df.iloc[:0], by=["order"], metrics={"top1": "top-1"})
    assert list(empty.columns) == ["order", "n", "top-1"] and empty.empty


FRAMES = {
    "training_curves": ({"epoch": [1, 2], "train_top1": [10.0, 20.0], "test_top1": [9.0, 18.0]}, {}),
    "metric_bars": ({"model": ["a", "b"], "top1": [1.0, 2.0], "size_MiB": [3.0, 1.0]},
                    {"metrics": {"top1": "top-1", "size_MiB": "MiB"}}),
    "sparsity_tradeoff": ({"sparsity": [0.0, 0.5], "top1": [90.0, 89.0], "latency_ms_p50": [2.0, 2.1],
                           "nonzero_macs": [100, 60], "macs": [100, 100]}, {}),
    "stage_trajectory": ({"step": ["FP32", "after P"], "top1": [90.0, 89.0], "form": ["fp32", "fp32"],
                          "sparsity": [0.0, 0.5]}, {}),
    "order_ablation": ({"order": ["PQD", "QPD"], "top1": [90.0, 88.0], "allocation": ["by_stage"] * 2},
                       {"baseline": 91.0}),
    "latency_bars": ({"model": ["FP32", "INT8", "FP32", "INT8"], "latency_ms_p50": [2.0, 3.0, 20.0, 4.0],
                      "width": [0.25, 0.25, 1.0, 1.0]}, {}),
    "sparsity_sweep": ({"sparsity": [0.0, 0.9, 0.0, 0.9], "latency_ms_p50": [2.0, 2.0, 3.0, 1.5],
                        "kernel": ["dense", "dense", "csr", "csr"], "width": [1.0] * 4}, {}),
    "proxy_vs_latency": ({"mac_ratio": [1.0, 0.1], "latency_ratio": [1.0, 1.0], "model": ["FP32", "P90"],
                          "width": [1.0, 1.0]}, {}),
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_every_figure_renders_small_and_survives_an_empty_frame(name):
    data, kwargs = FRAMES[name]
    fn = getattr(report, name)
    fig = fn(pd.DataFrame(data), **kwargs)
    assert isinstance(fig, Figure) and fig.dpi <= 80
    width, height = fig.get_size_inches()
    assert width <= 10 and height <= 6
    fig.canvas.draw()  # renders without error
    assert isinstance(fn(pd.DataFrame(data).iloc[:0], **kwargs), Figure)


# --- the cross-backbone summary at the top of reports/README.md ---------------------------------------
def _summary_records():
    from test_claims import _records  # the synthetic notebook 01-07 records of the claims tests

    return _records().assign(machine="m1")


def _summary(tmp_path, records):
    written = report.write_reports(records, tmp_path / "out")
    return report.backbone_summary(records, written, tmp_path / "out")


def test_summary_has_a_row_per_backbone_and_makes_up_no_number_for_the_unmeasured(tmp_path):
    from pqd_lib.backbones import BACKBONES

    table = _summary(tmp_path, _summary_records())
    assert list(table["backbone"]) == list(BACKBONES)
    measured = table.set_index("backbone").loc["resnet18"]
    assert measured["report"] == "[resnet18-cifar10-mini](resnet18-cifar10-mini/summary.md)"
    assert measured["machine"] == "m1" and measured["width"] == "0.25"
    assert measured["seeds"] == 3 and " ± " in measured["FP32 top-1 (ours, %)"]  # mean ± std over 3 seeds
    assert float(measured["FP32 top-1 (ours, %)"].split(" ± ")[0]) == pytest.approx(80, abs=0.5)
    assert measured["C3"] == "holds"  # the synthetic P → Q → D leads every order by 2 pp
    for name in ("wrn28_10", "vgg16_bn"):
        row = table.set_index("backbone").loc[name]
        assert row["report"] == report.NOT_MEASURED and row["seeds"] == 0
        assert all(row[c] == report.NOT_MEASURED for c in (*report.CELL_CLAIMS, "FP32 top-1 (ours, %)"))
        assert not any(ch.isdigit() for ch in row["P → Q → D top-1 (ours, %)"])
    assert table.set_index("backbone")["FP32 top-1 (peers, full width, %)"].to_dict() == {
        "resnet18": "93.02", "wrn28_10": "96.00", "vgg16_bn": "92.64"}
    assert "C1" in table.attrs["statements"] and not table.attrs["statements"]["C1"].endswith(")")


def test_readme_summary_replaces_only_its_own_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Reports\n\nhand-written text\n")
    table = _summary(tmp_path, _summary_records())
    report.write_readme_summary(table, readme, c6_statement="C6 statement")
    first = readme.read_text()
    assert first.startswith("# Reports\n\n" + report.SUMMARY_BEGIN) and first.endswith("hand-written text\n")
    assert "not measured yet" in first and "reduced width and budget" in first and "C6 statement" in first
    report.write_readme_summary(table, readme, c6_statement="C6 statement")
    assert readme.read_text() == first  # regenerating changes nothing
    empty = report.backbone_summary(_summary_records().iloc[:0], {}, tmp_path)
    report.write_readme_summary(empty, readme, c6_statement="C6 statement")
    again = readme.read_text()
    assert again.count(report.SUMMARY_BEGIN) == 1 and "resnet18-cifar10-mini" not in again
    assert again.endswith("hand-written text\n")


def test_pqd_report_writes_the_summary_beside_the_cells(tmp_path, capsys):
    from pqd_lib import cli, results

    store = tmp_path / "results"
    for i, row in enumerate(_summary_records().drop(columns="machine").to_dict("records")):
        results.append({**row, "record_id": f"r{i}"}, store)
    assert cli.main(["report", "--results-dir", str(store), "--out", str(tmp_path / "out")]) == 0
    assert "cross-backbone summary" in capsys.readouterr().out
    text = (tmp_path / "out" / "README.md").read_text()
    assert "[resnet18-cifar10-mini](resnet18-cifar10-mini/summary.md)" in text
    assert (tmp_path / "out" / "resnet18-cifar10-mini" / "summary.md").is_file()  # the link points at a file
    # A selection writes its cells only: a summary of every backbone needs every record.
    assert cli.main(["report", "--results-dir", str(store), "--out", str(tmp_path / "o2"), "--preset", "mini"]) == 0
    assert not (tmp_path / "o2" / "README.md").exists()
