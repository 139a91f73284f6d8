"""Stage Q on torchao PT2E (``quantize.engine: pt2e``, the default): the scheme, the QAT recipe, pruned
zeros through export, QAT, distillation and INT8, INT8 against its fake-quant twin, and the APIs it needs.

PT2E's prepare and convert cost tens of seconds each (torchao exports its own match patterns on
every call), so one module fixture runs P -> Q -> D once and converts once; the tests read it.
"""

from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
from torch import nn

from pqd_lib import config as C
from pqd_lib import data as data_mod
from pqd_lib import models
from pqd_lib.stages import StageContext
from pqd_lib.stages import distill as D
from pqd_lib.stages import prune as P
from pqd_lib.stages import quantize as Q
from pqd_lib.stages import quantize_pt2e as Q2


@pytest.mark.parametrize("module, name", Q2.API, ids=[f"{m}.{n}" for m, n in Q2.API])
def test_every_torch_and_torchao_api_pqd_depends_on_exists(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} disappeared: pqd's PT2E path needs it"


def _model(seed=0):
    torch.manual_seed(seed)
    return models.build("resnet18", num_classes=10, width=0.125)


@pytest.fixture(scope="module")
def pqd_run(embedded, tmp_path_factory):
    """P (50 %) -> Q (PT2E) -> D on 256 embedded images, then the INT8 conversion: models after each."""
    data = embedded.subset(train=256, test=128, seed=0)
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path_factory.mktemp("pt2e")),
                   prune={"target_sparsity": 0.5}, quantize={"engine": "pt2e", "reduce_range": True})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = _model()
        ctx = StageContext(order="PQD", epochs=1, teacher=copy.deepcopy(start).eval(), progress=False)
        out = {}
        for i, (letter, stage) in enumerate((("P", P.prune), ("Q", Q.quantize), ("D", D.distill))):
            ctx.position = i
            start = stage(start, cfg, data, ctx)
            out[letter] = start
            if letter == "Q":
                out["frozen_after_q"] = _frozen(start)
                out["running_mean_after_q"] = _running_means(start)
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # the maintained path warns about nothing
            out["int8"] = Q.convert(out["D"])
    finally:
        torch.set_num_threads(threads)
    return out, ctx, data


def _frozen(model):
    fqs = Q2.fake_quants(model)
    bn = [n for n in model.graph.nodes if str(n.target) in Q2._BATCH_NORM_OPS]
    model.train()
    bn_eval = all(n.args[5] is False for n in bn)
    return bool(fqs) and bool(bn) and all(int(m.observer_enabled) == 0 for m in fqs) and bn_eval


def _running_means(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("running_mean")}


def test_prepared_model_is_an_exported_graph_with_the_fx_paths_scheme(pqd_run):
    (out, _, _) = pqd_run
    prepared = out["Q"]
    assert Q2.is_exported(prepared) and Q.is_fake_quant(prepared) and not Q.is_int8(prepared)
    fqs = Q2.fake_quants(prepared)
    weights = [m for m in fqs if m.qscheme == torch.per_channel_symmetric]
    acts = [m for m in fqs if m.qscheme == torch.per_tensor_affine]
    assert len(weights) == 21 and len(acts) >= 21  # 20 convs + fc of ResNet-18; every quantized activation
    for fq in weights:
        assert (fq.dtype, fq.quant_min, fq.quant_max, fq.ch_axis) == (torch.int8, -128, 127, 0)
        # The unfused fake-quant: its scale is the observer's, exactly what convert_pt2e uses.
        assert type(fq).__name__ == "FakeQuantize"
    for fq in acts:
        assert (fq.dtype, fq.quant_min, fq.quant_max) == (torch.uint8, 0, 127)  # reduce_range
    full = Q2.quantization_config(reduce_range=False)
    assert full.input_activation.quant_max == 255 and full.weight.qscheme == torch.per_channel_symmetric


def test_masks_are_matched_by_name_across_export_and_pruned_zeros_stay_zero_through_qat_kd_and_int8(pqd_run):
    (out, _, _) = pqd_run
    eager_names = list(P.prunable_layers(_model()))
    masks = P.masks(out["D"])
    assert list(masks) == eager_names and list(P.prunable_layers(out["Q"])) == eager_names
    for letter in "PQD":
        weights = P.float_weights(out[letter])
        for name, mask in masks.items():
            assert torch.count_nonzero(weights[name][~mask]) == 0, (letter, name)
    int8 = Q.int8_weights(out["int8"])
    assert len(int8) == 21 and all(w.dtype == torch.int8 for w in int8.values())
    for name, mask in masks.items():  # symmetric weights: a float 0 is the integer 0
        assert torch.count_nonzero(int8[name][~mask]) == 0, name
    assert P.sparsity_of(int8, list(masks))["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_q_freezes_observers_and_bn_and_a_later_stage_retrains_then_refreezes(pqd_run):
    (out, ctx, _) = pqd_run
    assert out["frozen_after_q"] and len(ctx.stage_hooks) == 1
    # D (same model object) re-enabled BN statistics at its start, so they moved, then froze again.
    assert out["D"] is out["Q"]
    after = _running_means(out["D"])
    assert any(not torch.equal(out["running_mean_after_q"][n], after[n]) for n in after)
    assert _frozen(out["D"])


def test_frozen_bn_stays_frozen_when_the_training_loop_switches_modes(pqd_run):
    (out, _, _) = pqd_run
    prepared = copy.deepcopy(out["D"])  # a prepared model of its own, without a third prepare_pt2e
    Q2.freeze_bn_stats(prepared)
    prepared = copy.deepcopy(prepared)  # the mode switch and the freeze survive a copy
    before = _running_means(prepared)
    prepared.eval()
    prepared.train()
    assert prepared.training
    prepared(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(before[n], b) for n, b in _running_means(prepared).items())
    Q2.update_bn_stats(prepared)
    prepared(torch.randn(4, 3, 32, 32))
    assert any(not torch.equal(before[n], b) for n, b in _running_means(prepared).items())
    prepared.eval()  # eval: BN uses running statistics, whatever the freeze state
    assert all(n.args[5] is False for n in prepared.graph.nodes if str(n.target) in Q2._BATCH_NORM_OPS)


def test_int8_graph_agrees_with_its_fake_quant_twin(pqd_run):
    (out, _, data) = pqd_run
    int8 = out["int8"]
    assert Q.is_int8(int8) and not Q.is_fake_quant(int8)
    assert "quantize_per_tensor" in int8.code and "dequantize_per_channel" in int8.code
    fid = Q.fidelity(out["D"], int8, data)
    # Eager, the converted graph computes the INT8 arithmetic in FP32 from the same scales: it can
    # differ from the fake-quant forward only by rounding of the folded BN (measured 100 %, 48 dB).
    assert fid["agreement"] >= 99.0 and fid["sqnr_db"] >= 35.0
    assert int8(torch.zeros(1, 3, 32, 32)).shape == (1, 10)  # batch 1 although trained at 64


def test_a_model_torch_export_cannot_capture_is_a_one_line_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # Python control flow on a tensor value
                return y
            return -y

    with pytest.raises(ValueError) as err:
        Q2.prepare_qat(DataDependent(), reduce_range=True)
    msg = str(err.value)
    assert "\n" not in msg and "torch.export" in msg and "quantize.engine: fx" in msg


def test_unknown_engine_is_a_one_line_error():
    with pytest.raises(C.ConfigError) as err:
        C.preset("smoke", quantize={"engine": "eager"})
    assert "\n" not in str(err.value) and "quantize.engine" in str(err.value)


class UserCNN(nn.Module):
    """A user's network as people write it: functional ReLU and a residual ``+`` (no FloatFunctional)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def user_cnn_twice(embedded, tmp_path_factory):
    """P -> Q (PT2E) of a UserCNN through pipeline.compress, run twice on one stage cache: (data, first, again).

    The second run rebuilds both stages from the cache; one fixture serves the compress test and the
    replay test, so the module pays one PT2E training run less (each prepare/convert costs seconds)."""
    from pqd_lib import pipeline

    data = embedded.subset(train=128, test=64, seed=0)
    # The default engine: compress() on a user's CNN must go through PT2E without asking for it.
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path_factory.mktemp("pt2e-user")),
                   quantize={"reduce_range": True}, prune={"target_sparsity": 0.5})
    assert cfg.quantize.engine == "pt2e"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for _ in range(2):
            torch.manual_seed(0)
            runs.append(pipeline.compress(UserCNN(), data, order="PQ", config=cfg, progress=False))
    finally:
        torch.set_num_threads(threads)
    return data, runs[0], runs[1]


def test_compress_a_user_cnn_through_pt2e_gives_int8_that_saves_and_reloads(user_cnn_twice, tmp_path):
    data, (out, records), _ = user_cnn_twice
    assert Q.is_int8(out) and Q2.is_exported(out) and records[-1]["deploy_form"] == "int8"
    assert records[-1]["details"]["engine"] == "pt2e" and records[-1]["int8_agreement"] >= 95.0
    assert records[-1]["deploy_sparsity"] == pytest.approx(0.5, abs=0.01)  # conv2 pruned (conv1, fc excluded)
    x = next(iter(data_mod.batches(data, "test", 8, shuffle=False, augment=False)))[0]
    expected = out(x)
    # The saved program: graph and plain tensors, no pickled code; batch size free.
    program = Q2.save_program(out, tmp_path / "int8.pt2")
    assert torch.allclose(Q2.load_program(program)(x), expected, atol=1e-5)
    assert Q2.load_program(program)(x[:1]).shape == (1, 10)


def test_sizes_and_proxies_read_pt2e_int8_weights_through_the_one_reader(pqd_run):
    from pqd_lib.measure import proxies, size

    (out, _, _) = pqd_run
    int8 = out["int8"]
    layers = Q.int8_layers(int8)
    assert len(layers) == 21 and all(q.qparams == q.values.shape[0] for q in layers.values())
    enc = {e["layer"]: e for e in size.layer_encodings(int8)}
    assert set(enc) == set(layers) and all(e["value_bytes"] == 1 for e in enc.values())
    masks = P.masks(out["D"])
    for name, mask in masks.items():
        assert enc[name]["nonzero"] <= int(mask.sum())
    counted = proxies.count_params(int8)
    weights = sum(q.values.numel() for q in layers.values())
    biases = sum(q.bias.numel() for q in layers.values() if q.bias is not None)
    assert counted["params"] == weights + biases  # each weight once: the float copies are gone
    # The state dict holds the INT8 weights and nothing of the float ones or of P's masks.
    state = int8.state_dict()
    assert sum(v.numel() for v in state.values() if v.dtype == torch.int8) == weights
    assert not any(k.endswith(("conv1.weight", P.MASK)) for k in state)
    assert proxies.weight_tensors(int8).keys() == layers.keys()


def test_the_int8_graph_exports_to_qdq_onnx_that_onnx_runtime_runs_like_the_reference(pqd_run, tmp_path):
    import onnx
    import onnxruntime as ort

    from pqd_lib.measure import onnx_runtime as O

    (out, _, data) = pqd_run
    int8 = out["int8"]
    path = O.export_qat_onnx(int8, tmp_path / "int8.onnx")  # the one QAT ONNX export, either engine
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(ops)
    # 7-bit activations: every activation QuantizeLinear is clamped to 0..127 (ONNX's drops the range).
    assert ops.count("Clip") == ops.count("QuantizeLinear") > 0
    assert O.read_metadata(path)["pqd_engine"] == "pt2e" and O.read_metadata(path)["pqd_reduce_range"] == "true"
    x = next(iter(data_mod.batches(data, "test", 16, shuffle=False, augment=False)))[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    expected = int8(x)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    # ONNX Runtime runs integer kernels that round differently from the FP32-arithmetic reference:
    # close, not equal (a wrong scale or a missing QDQ pair gives single-digit dB).
    sqnr = 10 * torch.log10((expected ** 2).sum() / ((expected - got) ** 2).sum())
    assert sqnr >= 20.0


def test_a_pt2e_int8_artifact_is_a_program_that_records_its_range_and_refuses_full_range_without_vnni(
        pqd_run, tmp_path, monkeypatch):
    from pqd_lib import deploy, hardware

    (out, _, data) = pqd_run
    int8 = out["int8"]
    path = deploy.save_artifact(int8, tmp_path / "int8.pt", arch={"name": "resnet18", "num_classes": 10, "width": 0.125})
    assert path.suffix == ".pt2" and deploy.artifact_kind(path) == "export"
    assert Q2.read_program_settings(path) == {"backend": "x86", "reduce_range": True, "engine": "pt2e"}
    x = next(iter(data_mod.batches(data, "test", 4, shuffle=False, augment=False)))[0]
    assert torch.allclose(deploy.load_artifact(path)(x), int8(x), atol=1e-5)
    assert deploy.artifact_form(path) == "int8"
    # A fresh process (the latency worker) loads it too: the INT8 operators are registered on load.
    import subprocess
    import sys

    code = (f"import torch; from pqd_lib.deploy import load_artifact; "
            f"print(tuple(load_artifact({str(path)!r})(torch.zeros(2, 3, 32, 32)).shape))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and "(2, 10)" in child.stdout, child.stderr[-500:]
    # Latency times the compiled form by default, never the slow eager reference.
    from pqd_lib.measure import runtimes

    assert runtimes.default_runtime(int8) == "torch-compile" == runtimes.default_runtime(path)
    assert runtimes.default_runtime(out["D"]) == "torch-eager"
    # A full-range program on a CPU whose INT8 kernels saturate: refused in one line naming the fix.
    full = Q2.save_program(int8, tmp_path / "full.pt2", settings={"backend": "x86", "reduce_range": False})
    monkeypatch.setattr(hardware, "has_int8_vnni", lambda caps=None: False)
    with pytest.raises(deploy.ArtifactError) as err:
        deploy.load_artifact(full)
    assert "\n" not in str(err.value) and "reduce_range=true" in str(err.value)
    assert deploy.load_artifact(full, allow_saturation=True)(x).shape == (4, 10)


def test_a_cached_pt2e_q_stage_replays_to_the_same_int8_model(user_cnn_twice):
    """The grid resumes from the stage cache: a PT2E Q stage rebuilt from it (export + prepare, then its
    state dict) must give the INT8 model the uninterrupted run gave."""
    _, (_, first), (_, again) = user_cnn_twice
    assert [r["cached_stage"] for r in first] == [False, False] and [r["cached_stage"] for r in again] == [True, True]
    for key in ("deploy_top1", "correct_bits", "int8_agreement", "fake_quant_top1"):
        assert again[-1][key] == first[-1][key], key


def test_convert_folds_every_batchnorm_and_leaves_torchaos_pattern_passes_untouched(pqd_run):
    """prepare and convert limit torchao's conv-BN patterns to the conv kinds present (minutes -> seconds):
    the INT8 graph must still have every BatchNorm folded into its conv, and torchao's own functions be
    restored afterwards.
    (That the limited fold gives bit-identical logits to torchao's full one is checked by
    scripts/pt2e_convert_time.py: the full fold costs ~2 minutes, too slow for a test.)"""
    from torchao.quantization.pt2e import qat_utils

    out, _, _ = pqd_run
    ops = {str(n.target) for n in out["int8"].graph.nodes if n.op == "call_function"}
    assert not ops & set(Q2._BATCH_NORM_OPS), "a BatchNorm was left unfolded in the INT8 graph"
    assert len(Q2.int8_layers(out["int8"])) == len(Q2.weight_layers(out["D"]))
    for name in Q2._PATTERN_HELPERS:  # restored after prepare and convert
        assert getattr(qat_utils, name).__module__ == qat_utils.__name__ and getattr(qat_utils, name).__name__ == name


def test_patterns_captured_once_per_process_give_the_same_int8_graph(pqd_run):
    """torchao captures its conv-BN patterns afresh on every call; pqd captures each once per process
    (quantize_pt2e._PATTERN_GRAPHS). A convert from captured patterns must equal one that captures them."""
    out, _, data = pqd_run
    Q2._PATTERN_GRAPHS.clear()
    cold = Q.convert(out["D"])
    assert Q2._PATTERN_GRAPHS  # the conv2d patterns of prepare/convert were captured and kept
    warm = Q.convert(out["D"])
    assert warm.code == cold.code
    a, b = Q.int8_weights(cold), Q.int8_weights(warm)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = next(iter(data_mod.batches(data, "test", 16, shuffle=False, augment=False)))[0]
    assert torch.equal(cold(x), warm(x)) and torch.equal(warm(x), out["int8"](x))


def test_a_deferred_measurement_names_the_runtime_each_model_will_be_timed_on(pqd_run):
    """The grid defers latency: its records must already name the runtime the latency phase will use
    (torch-compile for a PT2E INT8 graph, eager for FP32), so the timed record replaces the deferred one."""
    from pqd_lib.measure.table import ModelRun, measure_models

    out, _, data = pqd_run
    cfg = C.preset("smoke", data={"source": "embedded"}, quantize={"engine": "pt2e"})
    fp32 = _model()
    table = measure_models({"INT8": ModelRun(cfg, out["int8"], "PQD"), "FP32": ModelRun(cfg, fp32, "baseline")}, data,
                           reference=_model(), latency=False)
    runtime = dict(zip(table["model"], table["runtime"]))
    assert runtime == {"INT8": "torch-compile", "FP32": "torch-eager"}
    assert table["latency_deferred"].all()
