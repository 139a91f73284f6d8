"""The three stages against trusted oracles: the cubic schedule's formula, exact sparsity, zeros that
stay zero through QAT, KD and INT8, INT8 against its fake-quant twin, KD against a hand computation.

Q runs on the default engine (PT2E) where a test checks an engine-independent invariant; tests that read
torch.ao FX internals (fused ConvBn modules, the qconfig mapping, ``quantized::`` kernels, the FX clamp,
FX deploy files) pin ``engine="fx"``, the reference path. Their PT2E counterparts are in
tests/test_quant_pt2e.py."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from pqd_lib import config as C
from pqd_lib import models, train
from pqd_lib.stages import StageContext
from pqd_lib.stages import distill as D
from pqd_lib.stages import prune as P
from pqd_lib.stages import quantize as Q


@pytest.fixture(scope="module")
def tiny(embedded):
    return embedded.subset(train=256, test=128, seed=0)


def _cfg(tmp_path, **sections):
    return C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"), **sections)


# The quantize section of a test that reads FX internals: torch.ao's FX graph mode, the reference engine.
FX = {"engine": "fx"}


def _model(width=0.125, seed=0):
    torch.manual_seed(seed)
    return models.build("resnet18", num_classes=10, width=width)


def _run(model, cfg, data, letters, teacher=None):
    """Run stages one by one as the pipeline does, returning the model after each."""
    ctx = StageContext(order=letters, epochs=1, teacher=teacher, progress=False)
    out = []
    stages = {"P": P.prune, "Q": Q.quantize, "D": D.distill}
    for i, letter in enumerate(letters):
        ctx.position = i
        model = stages[letter](model, cfg, data, ctx)
        out.append(model)
    return out, ctx


def _assert_masked_zero(model):
    masks = P.masks(model)
    assert masks, "the model carries no masks"
    for name, module in model.named_modules():
        if name in masks:
            assert torch.count_nonzero(module.weight.detach()[~masks[name]]) == 0, name


# ---------------------------------------------------------------------------
# P
# ---------------------------------------------------------------------------
def test_cubic_schedule_matches_zhu_gupta_formula():
    s_f = 0.9
    for T in (1, 7, 100):
        for t in range(0, T + 3):
            expected = s_f + (0.0 - s_f) * (1 - min(t, T) / T) ** 3
            assert P.cubic_sparsity(t, T, s_f) == pytest.approx(expected, abs=1e-12)
    assert P.cubic_sparsity(0, 100, 0.9, initial=0.2) == pytest.approx(0.2)
    plan = P.schedule(200, final=0.9, ramp_fraction=0.5, ramp_updates=10)
    assert sorted(plan) == list(range(10, 101, 10))
    for t, s in plan.items():
        assert s == pytest.approx(0.9 * (1 - (1 - t / 100) ** 3))
    assert plan[100] == 0.9 and all(a < b for a, b in zip(sorted(plan.values()), sorted(plan.values())[1:]))
    # No ramp (or no steps) -> one-shot pruning before the first step.
    assert P.schedule(0, final=0.5, ramp_fraction=0.5, ramp_updates=10) == {0: 0.5}
    assert P.schedule(100, final=0.5, ramp_fraction=0.0, ramp_updates=10) == {0: 0.5}


@pytest.mark.parametrize("target", [0.5, 0.7, 0.9])
def test_global_pruning_hits_the_target_within_one_weight_per_layer(target):
    model = _model()
    layers = P.prunable_layers(model)
    original = {k: m.weight.detach().abs().clone() for k, m in layers.items()}
    P.update_masks(layers, target, scope="global")
    n = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    assert abs(zeros - target * n) <= len(layers)  # the spec's tolerance
    assert zeros == round(target * n)  # in fact exact: topk picks exactly k weights
    # Global: one threshold over all layers -- no pruned weight was larger than a kept one.
    pruned = torch.cat([original[k][~m.weight_mask] for k, m in layers.items()])
    kept = torch.cat([original[k][m.weight_mask] for k, m in layers.items()])
    assert pruned.max() <= kept.min()
    assert len({round(float((m.weight == 0).float().mean()), 3) for m in layers.values()}) > 1


def test_layerwise_pruning_gives_every_layer_the_target():
    model = _model()
    layers = P.prunable_layers(model)
    P.update_masks(layers, 0.7, scope="layerwise")
    for name, m in layers.items():
        assert int((m.weight == 0).sum()) == round(0.7 * m.weight.numel()), name


def test_first_conv_and_classifier_stay_dense_unless_configured():
    model = _model()
    names = list(P.prunable_layers(model))
    assert "conv1" not in names and "fc" not in names and "layer1.0.conv1" in names
    names = list(P.prunable_layers(model, prune_first_conv=True, prune_classifier=True))
    assert names[0] == "conv1" and names[-1] == "fc"


def test_masks_only_grow():
    model = _model()
    layers = P.prunable_layers(model)
    P.update_masks(layers, 0.6)
    before = {k: v.clone() for k, v in P.masks(model).items()}
    P.update_masks(layers, 0.3)
    for k, m in P.masks(model).items():
        assert torch.equal(m, before[k])


def test_masks_are_buffers_that_survive_state_dict_round_trip():
    model = _model()
    P.update_masks(P.prunable_layers(model), 0.5)
    state = model.state_dict()
    assert any(k.endswith(".weight_mask") for k in state)
    fresh = _model(seed=1)
    P.update_masks(P.prunable_layers(fresh), 0.0)  # same buffers, all ones
    fresh.load_state_dict(state)
    assert all(torch.equal(P.masks(fresh)[k], v) for k, v in P.masks(model).items())
    _assert_masked_zero(fresh)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_target_sparsity_outside_0_1_is_a_one_line_error(bad, tmp_path):
    with pytest.raises(C.ConfigError) as err:
        _cfg(tmp_path, prune={"target_sparsity": bad})
    assert "prune.target_sparsity" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="update_masks: sparsity"):
        P.update_masks(P.prunable_layers(_model()), bad)
    assert not (tmp_path / "cache").exists()


def test_prune_stage_reaches_target_on_schedule(tiny, tmp_path):
    cfg = _cfg(tmp_path, prune={"target_sparsity": 0.7, "ramp_updates": 3})
    (model,), ctx = _run(_model(), cfg, tiny, "P")
    layers = P.prunable_layers(model)
    n = sum(m.weight.numel() for m in layers.values())
    assert sum(int((m.weight == 0).sum()) for m in layers.values()) == round(0.7 * n)
    steps = train.steps_per_epoch(256, cfg.train.batch_size)
    assert ctx.extra["mask_updates"] == {t: pytest.approx(s, abs=1e-6) for t, s in
                                         P.schedule(steps, final=0.7, ramp_fraction=0.5, ramp_updates=3).items()}
    assert len(ctx.history) == 1 and P.apply_masks in ctx.after_step


# ---------------------------------------------------------------------------
# Invariant: pruned weights are exactly zero after every later stage and in the INT8 weights.
# ---------------------------------------------------------------------------
def _assert_int8_zero(int8_model, masks):
    """Every pruned weight is the integer 0 in the INT8 model (either engine: the one INT8 weight reader)."""
    weights = Q.int8_weights(int8_model)
    assert set(masks) <= set(weights)
    for name, mask in masks.items():
        assert torch.count_nonzero(weights[name][~mask.cpu()]) == 0, name
    for name, m in int8_model.named_modules():
        if name in weights and Q.engine_of(int8_model) == "fx":  # symmetric: zero point 0, so float 0 is 0
            w = m.weight()
            assert w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            assert torch.count_nonzero(w.q_per_channel_zero_points()) == 0, name


def test_pruned_zeros_survive_qat_distillation_and_int8(tiny, tmp_path):
    """FX: also reads the BN-folded fake-quantized weight of FX's fused ConvBn modules (the PT2E twin of
    this test is test_quant_pt2e's masks test)."""
    cfg = _cfg(tmp_path, prune={"target_sparsity": 0.9}, quantize=FX)
    start = _model()
    teacher = copy.deepcopy(start).eval()
    (after_p, after_q, after_d), _ = _run(start, cfg, tiny, "PQD", teacher=teacher)
    for m in (after_p, after_q, after_d):
        _assert_masked_zero(m)
    # In the fake-quant model the BN-folded, fake-quantized weight (what the forward uses) is zero too.
    masks = P.masks(after_d)
    convbn = [(n, m) for n, m in after_d.named_modules() if hasattr(m, "bn") and n in masks]
    assert convbn
    with torch.no_grad(), Q.observers_paused(after_d):
        for name, m in convbn:
            std = torch.sqrt(m.bn.running_var + m.bn.eps)
            scale = (m.bn.weight / std).reshape(-1, 1, 1, 1)
            folded = m.weight_fake_quant(m.weight * scale)
            assert torch.count_nonzero(folded[~masks[name]]) == 0, name
    _assert_int8_zero(Q.convert(after_d), masks)


def test_prune_after_quantize_prunes_fake_quant_weights_and_masks_reach_int8(tiny, tmp_path):
    cfg = _cfg(tmp_path, prune={"target_sparsity": 0.5})
    (after_q, after_p), ctx = _run(_model(), cfg, tiny, "QP")
    assert after_p is after_q and Q.is_fake_quant(after_p)
    masks = P.masks(after_p)
    assert len(masks) == len(P.prunable_layers(_model()))
    _assert_masked_zero(after_p)
    _assert_int8_zero(Q.convert(after_p), masks)


# ---------------------------------------------------------------------------
# Q
# ---------------------------------------------------------------------------
def test_qconfig_is_per_channel_symmetric_int8_weights_and_per_tensor_affine_uint8_activations():
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    prepared = Q.prepare_qat(_model(), engine="fx")  # FX's qconfig mapping (PT2E's: test_quant_pt2e)
    weights = [m.weight_fake_quant for m in prepared.modules() if hasattr(m, "weight_fake_quant")]
    acts = [m for n, m in prepared.named_modules() if n.startswith("activation_post_process") and "." not in n]
    assert weights and acts
    for fq in weights:
        assert (fq.dtype, fq.qscheme, fq.quant_min, fq.quant_max) == (
            torch.qint8, torch.per_channel_symmetric, -128, 127)
    for fq in acts:
        assert isinstance(fq, FakeQuantizeBase)
        assert (fq.dtype, fq.qscheme, fq.quant_min, fq.quant_max) == (torch.quint8, torch.per_tensor_affine, 0, 127)
    assert Q.activation_reduce_range(prepared) is True and C.QuantizeConfig().reduce_range is True
    full = Q.prepare_qat(_model(), reduce_range=False, engine="fx")
    assert {m.quant_max for n, m in full.named_modules()
            if n.startswith("activation_post_process") and "." not in n} == {255}
    assert Q.activation_reduce_range(full) is False and Q.activation_reduce_range(_model()) is None


def test_every_stage_after_q_follows_the_qat_freezing_recipe(tiny, tmp_path):
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    cfg = _cfg(tmp_path, quantize=FX)  # reads FX's fused modules (PT2E: test_quant_pt2e)
    start = _model()
    (model,), ctx = _run(start, cfg, tiny, "Q")
    fused = [m for m in model.modules() if hasattr(m, "freeze_bn")]
    fqs = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    frozen = lambda: all(m.freeze_bn for m in fused) and all(int(m.observer_enabled) == 0 for m in fqs)  # noqa: E731
    assert fused and fqs and len(ctx.stage_hooks) == 1 and frozen()
    # D re-enables BN statistics and observers at its start (its BN statistics move) and
    # freezes them again at the same fractions of its own steps.
    before = {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}
    ctx.order, ctx.position, ctx.teacher = "QD", 1, copy.deepcopy(start).eval()
    D.distill(model, cfg, tiny, ctx)
    after = dict(model.named_buffers())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert frozen()


def test_convert_gives_real_int8_kernels_not_fake_quant(tiny):
    prepared = Q.prepare_qat(_model(), engine="fx")
    Q.calibrate(prepared, tiny, batches=2)
    int8 = Q.convert(prepared)
    assert Q.is_int8(int8) and not Q.is_fake_quant(int8) and Q.is_fake_quant(prepared)
    quantized = [type(m).__module__ for m in int8.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
                 or type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized")]
    assert len(quantized) >= 20  # 20 convs + fc of ResNet-18
    assert "quantize_per_tensor" in int8.code and int8.conv1.weight().dtype == torch.qint8
    captured = {}
    int8.conv1.register_forward_hook(lambda m, i, o: captured.update(out=o))
    int8(torch.zeros(2, 3, 32, 32))
    assert captured["out"].dtype == torch.quint8  # the conv ran the quantized kernel


def _sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    return 10 * math.log10(float((reference ** 2).sum() / ((reference - other) ** 2).sum().clamp_min(1e-12)))


def test_int8_clamps_7bit_activations_where_fake_quant_does_also_after_a_deploy_round_trip(tmp_path):
    """Activations driven past their calibrated 0..127 range: fake-quant clamps them at 127, the converted
    kernels saturate at 255 unless convert clamps. Measured on AMD EPYC AVX2 (width 0.25, calibrated on
    0.5 x randn): with inputs 3 x randn logit SQNR against fake-quant -1.7 dB without the clamp, 14.1 dB
    with it (1.5 x randn: 3.8 / 14.9 dB, 6 x randn: -2.9 / 13.5 dB; what remains is one-step rounding of
    logits that sit at the clamp themselves). The deploy file's model is rebuilt from a skeleton with
    placeholder scales: it must clamp at the loaded ones."""
    from pqd_lib import deploy

    prepared = Q.prepare_qat(_model(width=0.25), reduce_range=True, engine="fx")  # the FX clamp pass
    torch.manual_seed(0)
    with torch.no_grad():
        prepared(0.5 * torch.randn(32, 3, 32, 32))
    Q.freeze_observers(prepared)
    Q.freeze_bn_stats(prepared)
    prepared.eval()
    int8 = Q.convert(prepared)
    reloaded = deploy.load_deploy(deploy.save_deploy(int8, tmp_path / "d.pt", form="int8",
                                                     arch={"name": "resnet18", "num_classes": 10, "width": 0.25}))
    x = 3.0 * torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        fake_quant, converted, loaded = prepared(x), int8(x), reloaded(x)
    assert _sqnr_db(fake_quant, converted) > 10
    assert torch.equal(converted, loaded)


@pytest.fixture(scope="module")
def trained(embedded, tmp_path_factory):
    """A ResNet-18 (width 0.125) trained 3 epochs on the 5,000 embedded images (~40 % top-1)."""
    cfg = C.preset("smoke", data={"source": "embedded", "train_subset": None, "test_subset": None},
                   train={"epochs": 3, "schedule": "onecycle", "eval_batch_size": 500, "channels_last": False},
                   cache_dir=str(tmp_path_factory.mktemp("trained")))
    # Module fixtures run before conftest's per-test one-thread setting; tiny models on a busy
    # 2-core machine are many times slower with two OpenMP threads than with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, info = train.train_baseline(cfg, embedded, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model, cfg, info


# Logit SQNR of INT8 against its fake-quant twin in this setup, per activation range (measured, see
# the module text of stages.quantize): 0..127 gives 26.1 dB on AMD EPYC AVX2 and 30.5 dB on Zen 4
# AVX-512 VNNI; 0..255 gives 45.3 dB with VNNI and 14.4 dB without (saturated 16-bit sums). Each
# floor keeps a few dB of margin and still fails on saturation or a systematic QAT/INT8 mismatch
# (torch's fused weight fake-quant: 26 dB with 0..255, 4.5 dB below 0..127's figure).
_MIN_SQNR_DB = {True: 22.0, False: 35.0}


def _q_on_embedded(trained, embedded, reduce_range):
    """Stage Q on FX: its eager INT8 model runs the x86 integer kernels whose saturation these tests
    measure (a PT2E INT8 graph runs its arithmetic in FP32 eager: test_quant_pt2e checks its agreement)."""
    model, cfg, _ = trained
    cfg = C.with_section(cfg, "quantize", reduce_range=reduce_range, engine="fx")
    qat_data = embedded.subset(train=2000, test=None, seed=0)
    (prepared,), _ = _run(copy.deepcopy(model), cfg, qat_data, "Q")
    return prepared


@pytest.mark.parametrize("reduce_range", [True, False], ids=["0..127", "0..255"])
def test_int8_agrees_with_its_fake_quant_twin_on_real_images(reduce_range, trained, embedded, capsys, monkeypatch):
    from pqd_lib import hardware

    if not reduce_range and not hardware.has_int8_vnni():
        with pytest.raises(Q.ActivationRangeError):  # stage Q refuses before training ...
            _q_on_embedded(trained, embedded, reduce_range)
        pytest.skip(f"full-range INT8 is refused on this {hardware.capability_class()} CPU (no AVX-512 VNNI); "
                    "the saturation it avoids is shown by test_full_range_int8_forced_through_without_vnni_...")
    prepared = _q_on_embedded(trained, embedded, reduce_range)
    fid = Q.fidelity(prepared, Q.convert(prepared), embedded)  # all 1,000 embedded test images
    with capsys.disabled():
        print(f"\n[INT8 vs fake-quant, reduce_range={reduce_range}, {hardware.capability_class()}] baseline top-1 "
              f"{trained[2]['test']['top1']:.1f} %, fake-quant {fid['fake_quant_top1']:.1f} %, INT8 "
              f"{fid['int8_top1']:.1f} %, agreement {fid['agreement']:.1f} %, logit SQNR {fid['sqnr_db']:.1f} dB")
    assert fid["agreement"] >= 95.0
    assert fid["sqnr_db"] >= _MIN_SQNR_DB[reduce_range]


def test_full_range_int8_forced_through_without_vnni_fails_the_agreement_floor(trained, embedded, monkeypatch,
                                                                              capsys):
    """What the refusal prevents: on a CPU without VNNI, the full-range model's INT8 outputs are wrong
    enough that the agreement test's floor catches them (measured here: 14.4 dB, 84 % agreement)."""
    from pqd_lib import hardware

    if hardware.has_int8_vnni():
        pytest.skip("this CPU has AVX-512 VNNI: full-range INT8 is exact here (tested above)")
    # Train full range as if on a VNNI machine, then convert here with the override.
    monkeypatch.setattr(hardware, "has_int8_vnni", lambda caps=None: True)
    prepared = _q_on_embedded(trained, embedded, False)
    monkeypatch.undo()
    with pytest.raises(Q.ActivationRangeError, match="reduce_range=true"):
        Q.convert(prepared)
    fid = Q.fidelity(prepared, Q.convert(prepared, allow_saturation=True), embedded)
    with capsys.disabled():
        print(f"\n[INT8 vs fake-quant, reduce_range=False forced, {hardware.capability_class()}] agreement "
              f"{fid['agreement']:.1f} %, logit SQNR {fid['sqnr_db']:.1f} dB")
    assert fid["sqnr_db"] < _MIN_SQNR_DB[False] and fid["sqnr_db"] < _MIN_SQNR_DB[True]


def _exact_conv_error(qmax: int) -> int:
    """Largest |INT8 conv output - exact integer result| in output steps, for uint8 inputs 0..qmax and
    int8 weights -127..127 (the worst case for 16-bit pair sums: 2 x 255 x 127 > 32,767)."""
    torch.backends.quantized.engine = "x86"
    g = torch.Generator().manual_seed(0)
    xq = torch.randint(0, qmax + 1, (2, 64, 6, 6), generator=g).float()
    wq = torch.randint(-127, 128, (16, 64, 3, 3), generator=g).float()
    xs, ws = 2.0 ** -6, 2.0 ** -7  # powers of two: the float images of the integers are exact
    x = torch.quantize_per_tensor(xq * xs, xs, 0, torch.quint8)
    w = torch.quantize_per_channel(wq * ws, torch.full((16,), ws, dtype=torch.double),
                                   torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    exact = nn.functional.conv2d(xq, wq, padding=1)  # integer sums, exact in float32 (< 2^24)
    conv = torch.ao.nn.quantized.Conv2d(64, 16, 3, padding=1)
    conv.set_weight_bias(w, None)
    conv.scale, conv.zero_point = 2.0 ** math.ceil(math.log2(float(exact.abs().max()) * xs * ws / 120)), 128
    expected = torch.clamp(torch.round(exact * xs * ws / conv.scale), -128, 127)
    got = conv(x).int_repr().float() - 128
    return int((got - expected).abs().max())


def test_x86_int8_conv_is_exact_with_7bit_activations_and_full_range_only_with_vnni():
    """The oracle behind the default: integer sums of the x86 engine against exact arithmetic."""
    from pqd_lib import hardware

    assert _exact_conv_error(127) <= 1  # rounding of the requantisation only
    if hardware.has_int8_vnni():
        assert _exact_conv_error(255) <= 1
    else:  # saturated 16-bit pair sums (vpmaddubsw): measured 11 steps on AMD EPYC AVX2
        assert _exact_conv_error(255) > 1


def test_full_range_is_refused_in_one_line_without_vnni_and_allowed_with_it(monkeypatch, tiny, tmp_path):
    from pqd_lib import hardware

    avx2 = {"architecture": "x86_64", "avx2": True, "avx_vnni": True}
    monkeypatch.setattr(hardware, "capabilities", lambda: avx2)
    assert hardware.capability_class() == "x86-avx2" and not hardware.has_int8_vnni()
    cfg = _cfg(tmp_path, quantize={"reduce_range": False})
    with pytest.raises(Q.ActivationRangeError) as err:
        _run(_model(), cfg, tiny, "Q")
    msg = str(err.value)
    assert "\n" not in msg and "quantize.reduce_range=true" in msg and "VNNI" in msg and "x86-avx2" in msg
    assert not (tmp_path / "cache").exists()
    _run(_model(), _cfg(tmp_path), tiny, "Q")  # the default range runs
    monkeypatch.setattr(hardware, "capabilities", lambda: {**avx2, "avx512_f": True, "avx512_vnni": True})
    (prepared,), _ = _run(_model(), cfg, tiny, "Q")
    assert Q.int8_settings(Q.convert(prepared))["reduce_range"] is False


@pytest.mark.parametrize("reduce_range", [True, False])
def test_deploy_file_stores_the_range_the_model_was_trained_with(reduce_range, monkeypatch, tiny, tmp_path):
    from pqd_lib import deploy
    from pqd_lib import hardware
    from pqd_lib.measure import latency as L

    vnni = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_vnni": True}
    monkeypatch.setattr(hardware, "capabilities", lambda: vnni)  # full range may be built and loaded
    prepared = Q.prepare_qat(_model(), reduce_range=reduce_range, engine="fx")  # an FX deploy file
    Q.calibrate(prepared, tiny, batches=1)
    int8 = Q.convert(prepared)
    arch = {"name": "resnet18", "num_classes": 10, "width": 0.125}
    for path in (deploy.save_deploy(int8, tmp_path / "d.pt", arch=arch, form="int8"),
                 L.save_artifact(int8, tmp_path / "a.pt", arch=arch)):  # no default that disagrees
        assert deploy.read_deploy_info(path)["quantize"]["reduce_range"] is reduce_range
        assert Q.int8_settings(deploy.load_deploy(path))["reduce_range"] is reduce_range
    with pytest.raises(deploy.DeployError, match="converted with reduce_range"):
        deploy.save_deploy(int8, tmp_path / "x.pt", arch=arch, form="int8", reduce_range=not reduce_range)
    assert not (tmp_path / "x.pt").exists()


def test_full_range_deploy_file_is_refused_on_a_cpu_without_vnni_naming_the_fix(monkeypatch, tiny, tmp_path):
    from pqd_lib import deploy
    from pqd_lib import hardware
    from pqd_lib.measure import latency as L

    vnni = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_vnni": True}
    monkeypatch.setattr(hardware, "capabilities", lambda: vnni)
    prepared = Q.prepare_qat(_model(), reduce_range=False, engine="fx")  # an FX deploy file
    Q.calibrate(prepared, tiny, batches=1)
    arch = {"name": "resnet18", "num_classes": 10, "width": 0.125}
    path = deploy.save_deploy(Q.convert(prepared), tmp_path / "full.pt", arch=arch, form="int8")
    monkeypatch.setattr(hardware, "capabilities", lambda: {"architecture": "x86_64", "avx2": True})
    for load in (deploy.load_deploy, deploy.check_range, L.load_artifact):
        with pytest.raises((deploy.DeployError, L.ArtifactError)) as err:
            load(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "quantize.reduce_range=true" in msg and "VNNI" in msg
    with pytest.raises(Q.ActivationRangeError):
        Q.convert(prepared)
    loaded = deploy.load_deploy(path, allow_saturation=True)  # the user's explicit override
    assert Q.int8_settings(loaded) == {"backend": "x86", "reduce_range": False}


def test_quantize_without_the_backend_engine_is_a_one_line_error(monkeypatch, tiny, tmp_path):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", ["qnnpack", "none"])
    cfg = _cfg(tmp_path)
    with pytest.raises(Q.BackendError) as err:
        _run(_model(), cfg, tiny, "Q")
    msg = str(err.value)
    assert "\n" not in msg and "'x86'" in msg and "available: qnnpack" in msg
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------
# D
# ---------------------------------------------------------------------------
def test_kd_loss_equals_hand_computed_kl_times_t_squared_plus_ce():
    s = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    t = np.array([[1.0, 0.0, -1.0], [0.5, 2.5, 0.0]])
    y = np.array([0, 2])
    T, alpha = 4.0, 0.9

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(t / T), softmax(s / T)
    kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    ce = np.mean(-np.log(softmax(s)[np.arange(2), y]))
    args = (torch.tensor(s), torch.tensor(t), torch.tensor(y))
    assert D.kd_loss(*args, T=T, alpha=alpha).item() == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-6)
    assert D.kd_loss(*args, T=T, alpha=1.0).item() == pytest.approx(T * T * kl, rel=1e-6)
    assert D.kd_loss(*args, T=T, alpha=0.0).item() == pytest.approx(ce, rel=1e-6)
    same = torch.tensor(s)
    assert D.kd_loss(same, same, torch.tensor(y), T=T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-7)


def _signature(model: nn.Module):
    return ([(n, type(m)) for n, m in model.named_modules()],
            [(n, p.dtype) for n, p in model.named_parameters()],
            [(n, b.dtype) for n, b in model.named_buffers()])


@pytest.mark.parametrize("before", ["", "PQ"])
def test_distillation_changes_no_module_and_no_dtype(before, tiny, tmp_path):
    cfg = _cfg(tmp_path)
    start = _model()
    teacher = copy.deepcopy(start).eval()
    ctx = StageContext(order=before + "D", epochs=1, teacher=teacher, progress=False)
    model = start
    for i, letter in enumerate(before):
        ctx.position = i
        model = {"P": P.prune, "Q": Q.quantize}[letter](model, cfg, tiny, ctx)
    sig, weights = _signature(model), {k: v.clone() for k, v in model.state_dict().items()}
    ctx.position = len(before)
    out = D.distill(model, cfg, tiny, ctx)
    assert out is model and _signature(out) == sig
    assert any(not torch.equal(weights[k], v) for k, v in out.state_dict().items())  # it did train
    if before:
        assert Q.is_fake_quant(out)
        _assert_masked_zero(out)


def test_teacher_with_another_number_of_classes_is_a_one_line_error(tiny, tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    wrong = models.build("resnet18", num_classes=5, width=0.125)
    with pytest.raises(D.TeacherError) as err:
        _run(_model(), cfg, tiny, "D", teacher=wrong)
    assert "5 classes" in str(err.value) and "10" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_kd_loss_fn_runs_the_teacher_on_the_same_batch_without_grad():
    torch.manual_seed(0)
    teacher = D.frozen_teacher(nn.Linear(4, 3))
    seen = []
    teacher.register_forward_hook(lambda m, i, o: seen.append((i[0], torch.is_grad_enabled())))
    images = torch.randn(5, 4)
    student_logits = torch.randn(5, 3, requires_grad=True)
    loss = D.kd_loss_fn(teacher, temperature=4.0, alpha=0.9)(student_logits, torch.zeros(5, dtype=torch.long), images)
    loss.backward()
    assert seen[0][0] is images and seen[0][1] is False and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters()) and math.isfinite(loss.item())
