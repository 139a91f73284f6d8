"""pqd_lib.controls: the C4 control differs from P → Q → D in the loss only; pre-conditioning is measured directly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pqd_lib import controls
from pqd_lib.stages import distill as D


def test_distillation_with_alpha_zero_is_exactly_cross_entropy():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    assert torch.equal(D.kd_loss(student, teacher, y, alpha=0.0), F.cross_entropy(student, y))


def test_ce_control_is_pqd_with_plain_cross_entropy(trained_small):
    small, cfg, baseline = trained_small
    _, records = controls.ce_control(baseline, cfg, small, teacher=baseline)
    assert [r["stage"] for r in records] == ["P", "Q", "D"]
    assert all(r["control"] == controls.CE_CONTROL for r in records)
    assert records[-1]["details"]["alpha"] == 0.0 and records[-1]["deploy_form"] == "int8"
    # Same learning rate as P → Q → D's D (capped at Q's after Q).
    assert records[-1]["details"]["lr"] == min(cfg.distill.lr, cfg.quantize.lr)


def test_weight_quant_error_against_a_hand_quantized_layer():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, 0.3, -0.5, 0.2]).view(2, 2, 1, 1))
    # Only the middle conv is prunable (the first conv and the classifier are excluded).
    # Channel 0: scale 1/127.5 (symmetric over [-1, 1] into 255 steps), 0.3 -> round(38.25)=38 -> 0.29804.
    # Channel 1: scale 0.5/127.5; -0.5 -> -127.5 rounds to -128 -> -0.50196; 0.2 -> 51 -> 0.2 exactly.
    s0, s1 = 1 / 127.5, 0.5 / 127.5
    expected = (1.0 - 127 * s0) ** 2 + (0.3 - 38 * s0) ** 2 + (-0.5 + 128 * s1) ** 2 + (0.2 - 51 * s1) ** 2
    out = controls.weight_quant_error(net)
    assert out["quant_error"] == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():
        net[1].weight[0, 1] = 0.0  # a pruned weight quantizes to exactly 0: no error from it
    assert controls.weight_quant_error(net)["quant_error"] < expected


def test_preconditioning_measures_qat_drop_and_error_with_and_without_pruning(trained_small):
    small, cfg, baseline = trained_small
    rows = controls.preconditioning(baseline, cfg, small)
    assert [r["path"] for r in rows] == ["Q", "P → Q"]
    for r in rows:
        assert r["qat_drop_pp"] == pytest.approx(r["top1_before_q"] - r["top1_after_q"])
    # Half the weights are zero after P, and zeros quantize exactly: the error Q starts from shrinks.
    assert rows[1]["quant_error"] < rows[0]["quant_error"]
    assert rows[1]["p_top1_check"] == pytest.approx(rows[1]["top1_before_q"])  # P alone reproduces P → Q's P


def test_position_independent_switches_off_the_cap(trained_small):
    cfg = trained_small[1]
    assert cfg.pipeline.qat_lr_after_q and not controls.position_independent(cfg).pipeline.qat_lr_after_q
