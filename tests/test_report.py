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
