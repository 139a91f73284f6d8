"""pqd_lib.measure: the latency protocol, sizes, proxies, accuracy, ONNX Runtime, sparse kernels.

Oracles: a fake clock for the statistics (exact percentiles), hand-computed byte counts for the
encodings, torch's published ResNet-18 CIFAR size (555.4 M MACs, 11.17 M parameters), the PyTorch
INT8 model's own weights for the ONNX export, and the dense model's outputs for the CSR kernels.
Everything that times or exports uses width 0.125 and a handful of runs.

The INT8 agreement tests catch the saturation of x86 kernels without VNNI only when they run on such
a kernel path. On a CI machine *with* AVX-512 VNNI, run them once more with the libraries limited to
their AVX2 kernels: ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (FBGEMM's dispatch override, read by the copy
inside libtorch_cpu; values AVX2, AVX512, AVX512_E1 = VNNI, ...) and ``ONEDNN_MAX_CPU_ISA=AVX2``
(oneDNN's documented dispatcher control, "CPU Dispatcher Control" in its developer guide), both set
before torch is imported. pqd's own VNNI check (``torch.cpu.get_capabilities``) does not see them,
so under them a full-range model is not refused: that job checks the 7-bit default only. ONNX
Runtime's MLAS kernels and OpenVINO document no such limit. Not verified here: the project's
machines at hand have no VNNI.

The INT8 models here come from the FX reference engine (``engine="fx"``): its converted model runs
quantized x86 kernels eagerly, so the latency protocol's tests time it in milliseconds, where the
default engine's PT2E graph would be compiled (tens of seconds) in every worker. What differs for
PT2E -- its program artifact, compiled runtime, ONNX export and weight reader -- is tested in
tests/test_quant_pt2e.py.
"""

from __future__ import annotations

import copy
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pqd_lib.config import MeasureConfig
from pqd_lib.measure import latency as L
from pqd_lib.measure import proxies as P
from pqd_lib.measure import size as S
from pqd_lib.models import build

ARCH = {"name": "resnet18", "num_classes": 10, "width": 0.125}
FAST = dict(threads=(1,), batch_sizes=(1,), warmup=1, min_runs=3, min_seconds=0.0)


class FakeClock:
    """A clock that only moves when the timed function runs: each call advances it by the next duration."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now = 0.0
        self.calls = 0

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build(**ARCH).eval()


@pytest.fixture(scope="module")
def tiny_qat_int8():
    """(QAT-prepared, INT8) twins of the tiny ResNet, observers and BN frozen as after stage Q."""
    from pqd_lib.stages import quantize as Q

    torch.manual_seed(0)
    model = build(**ARCH)
    prepared = Q.prepare_qat(model, engine="fx")
    with torch.no_grad():
        for _ in range(3):
            prepared(torch.randn(16, 3, 32, 32))
    Q.freeze_observers(prepared)
    Q.freeze_bn_stats(prepared)
    prepared.eval()
    return prepared, Q.convert(prepared)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tiny_qat_int8, tmp_path_factory):
    """{"fp32", "qat"}: the tiny ResNet and its QAT twin exported to ONNX once for the module's tests
    (the dynamo exporter takes seconds per call; the tests only read the files)."""
    from pqd_lib.measure import onnx_runtime as O

    work = tmp_path_factory.mktemp("onnx")
    prepared, _ = tiny_qat_int8
    return {"fp32": O.export_onnx(tiny, work / "fp32.onnx"), "qat": O.export_qat_onnx(prepared, work / "qat.onnx")}


# ---------------------------------------------------------------------------
# The protocol's statistics on a fake clock
# ---------------------------------------------------------------------------
def test_statistics_exact_on_fake_clock():
    clock = FakeClock([k / 1000 for k in range(1, 11)])  # 1..10 ms
    stats = L.measure_callable(clock.work, warmup=0, min_runs=10, min_seconds=0.0, batch_size=4, timer=clock)
    assert stats["runs"] == 10
    assert stats["latency_ms_p50"] == pytest.approx(5.5)
    assert stats["latency_ms_p90"] == pytest.approx(9.1)  # linear interpolation: 9 + 0.1 * (10 - 9)
    assert stats["latency_ms_p99"] == pytest.approx(9.91)
    assert stats["latency_ms_mean"] == pytest.approx(5.5)
    assert stats["latency_ms_std"] == pytest.approx(math.sqrt(sum((k - 5.5) ** 2 for k in range(1, 11)) / 9))
    assert stats["images_per_s"] == pytest.approx(4 * 1000 / 5.5)
    assert stats["timed_seconds"] == pytest.approx(0.055)


def test_warmup_is_not_timed():
    clock = FakeClock([1.0, 1.0, 1.0, 0.25])  # three slow warm-up calls, then 0.25 s
    times = L.time_runs(clock.work, warmup=3, min_runs=4, min_seconds=0.0, timer=clock)
    assert clock.calls == 3 + 4
    assert times[0] == 0.25


def test_stops_at_min_runs_when_seconds_are_reached_first():
    clock = FakeClock([0.5])
    assert len(L.time_runs(clock.work, warmup=0, min_runs=7, min_seconds=1.0, timer=clock)) == 7


def test_stops_at_min_seconds_when_runs_are_reached_first():
    clock = FakeClock([0.125])  # exact in binary: 8 runs make exactly 1.0 s
    times = L.time_runs(clock.work, warmup=2, min_runs=3, min_seconds=1.0, timer=clock)
    assert len(times) == 8


def test_threads_must_be_positive(tiny):
    with pytest.raises(ValueError, match="threads"):
        L.measure_latency(tiny, threads=(0,), isolate=False)
    with pytest.raises(ValueError, match="threads"):
        L.measure_latency(tiny, MeasureConfig(threads=(1, -2)), isolate=False)
    assert L.resolve_threads(None) == sorted({1, os.cpu_count() or 1})


def test_unknown_option_is_named(tiny):
    with pytest.raises(ValueError, match="warmpu"):
        L.measure_latency(tiny, warmpu=3)


# ---------------------------------------------------------------------------
# Isolation, artifacts, failures
# ---------------------------------------------------------------------------
def test_isolated_child_uses_requested_threads_and_its_own_process(tiny):
    records = L.measure_latency(tiny, arch=ARCH, **FAST)
    assert len(records) == 1
    r = records[0]
    assert r["error"] is None
    assert r["isolated"] is True and r["pid"] != os.getpid()
    assert r["threads"] == 1 and r["threads_observed"] == 1
    assert r["form"] == "fp32" and r["runtime"] == "torch-eager" and r["runs"] >= 3
    for key in ("cpu_model", "cpu_count", "isa_avx2", "isa_avx512_vnni", "isa_amx", "torch_version",
                "quantized_engine"):
        assert key in r


def test_in_process_measures_fp32_sparse_and_int8(tiny, tiny_qat_int8):
    sparse = build(**ARCH).eval()
    with torch.no_grad():
        for m in sparse.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    _, int8 = tiny_qat_int8
    forms = {}
    for model in (tiny, sparse, int8):
        (r,) = L.measure_latency(model, **FAST, isolate=False)
        assert r["error"] is None and r["pid"] == os.getpid() and r["latency_ms_p50"] > 0
        forms[r["form"]] = r["model_sparsity"]
    assert set(forms) == {"fp32", "fp32-sparse", "int8"}
    assert forms["fp32-sparse"] > 0.4


def test_int8_artifact_round_trip_in_child(tiny_qat_int8, tmp_path):
    _, int8 = tiny_qat_int8
    path = L.save_artifact(int8, tmp_path / "int8.pt", arch=ARCH)
    loaded = L.load_artifact(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), int8(x))
    (r,) = L.measure_latency(path, **FAST)
    assert r["error"] is None and r["form"] == "int8" and r["pid"] != os.getpid()


def test_int8_on_cuda_is_refused_with_a_clear_message(tiny_qat_int8, tmp_path):
    _, int8 = tiny_qat_int8
    with pytest.raises(ValueError, match="INT8 runs on CPU"):
        L.measure_latency(int8, device="cuda", **FAST)
    path = L.save_artifact(int8, tmp_path / "int8.pt", arch=ARCH)
    with pytest.raises(ValueError, match="INT8 runs on CPU"):
        L.measure_latency(path, device="cuda", **FAST)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(L.ArtifactError, match="nope.pt"):
        L.load_artifact(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00 not a torch file")
    with pytest.raises(L.ArtifactError, match="corrupt.pt"):
        L.load_artifact(corrupt)
    # In a sweep the same failures become error fields, not exceptions.
    (r,) = L.measure_latency(missing, **FAST, isolate=False)
    assert "nope.pt" in r["error"] and "not found" in r["error"]
    (r,) = L.measure_latency(corrupt, **FAST)  # through the child process
    assert "corrupt.pt" in r["error"]
    (r,) = L.measure_latency(tmp_path / "bad.onnx", **FAST, isolate=False)
    assert "bad.onnx" in r["error"]


def test_failing_forward_becomes_an_error_field():
    class NoKernel(nn.Module):
        def forward(self, x):
            raise NotImplementedError("Could not run 'quantized::conv2d' with arguments from the 'CPU' backend")

    records = L.measure_latency(NoKernel(), threads=(1,), batch_sizes=(1, 2), warmup=0, min_runs=1,
                                min_seconds=0.0, isolate=False)
    assert len(records) == 2
    assert all("quantized::conv2d" in r["error"] for r in records)
    assert all(r.get("latency_ms_p50") is None for r in records)


def test_crashed_child_becomes_an_error_field(tiny, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a "Python" that exits 1 at once
    (r,) = L.measure_latency(tiny, arch=ARCH, **FAST)
    assert "exited with code 1" in r["error"]


def test_save_artifact_falls_back_to_torch_export_without_arch(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    path = L.save_artifact(model, tmp_path / "custom.pt")
    assert path.suffix == ".pt2"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(L.load_artifact(path)(x), model(x), atol=1e-6)


# ---------------------------------------------------------------------------
# Sizes, against hand-computed byte counts
# ---------------------------------------------------------------------------
def _small_conv() -> nn.Conv2d:
    conv = nn.Conv2d(1, 2, kernel_size=2)  # weight (2, 1, 2, 2): 8 values, bias 2
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.5, 0, 0, -0.25, 0, 0, 0, 1.0]).view(2, 1, 2, 2))  # 3 non-zeros
        conv.bias.copy_(torch.tensor([0.1, -0.1]))
    return conv


def test_sparse_encoding_fp32_by_hand():
    conv = _small_conv()
    # bitmask ceil(8/8) = 1 + 3 non-zeros x 4 B + bias 2 x 4 B = 21
    assert S.sparse_encoding_bytes(conv) == 1 + 3 * 4 + 2 * 4
    h = -(3 / 8) * math.log2(3 / 8) - (5 / 8) * math.log2(5 / 8)
    assert S.entropy_bound_bytes(conv) == pytest.approx((3 * 32 + 8 * h) / 8 + 8)


def test_stored_size_picks_the_cheaper_form_per_layer_by_hand():
    conv = _small_conv()
    # 3 of 8 non-zero: bitmask 1 + 3 x 4 B beats dense 8 x 4 B; + bias 2 x 4 B.
    assert S.stored_bytes(conv) == 1 + 3 * 4 + 2 * 4
    with torch.no_grad():
        conv.weight.fill_(0.5)
    # Nothing pruned: dense 8 x 4 B beats bitmask 1 + 8 x 4 B, so no bitmask is paid.
    assert S.stored_bytes(conv) == 8 * 4 + 2 * 4 < S.sparse_encoding_bytes(conv)


def test_sparse_encoding_int8_by_hand():
    from torch.ao.nn.quantized import Conv2d as QConv2d

    conv = _small_conv()
    scales = torch.tensor([0.5 / 127, 1.0 / 127], dtype=torch.double)
    qweight = torch.quantize_per_channel(conv.weight.detach(), scales, torch.zeros(2, dtype=torch.long), 0, torch.qint8)
    qconv = QConv2d(1, 2, 2)
    qconv.set_weight_bias(qweight, conv.bias.detach())
    qconv.scale, qconv.zero_point = 0.1, 0
    # bitmask 1 + 3 non-zeros x 1 B + 2 scales x 4 B + 2 zero points x 1 B + bias 2 x 4 B
    # + the output scale (float32, 4 B) and zero point (int64, 8 B) as stored in the state dict
    layer = 1 + 3 + 2 * 4 + 2 * 1 + 2 * 4
    assert S.sparse_encoding_bytes(qconv) == layer + 4 + 8
    h = -(3 / 8) * math.log2(3 / 8) - (5 / 8) * math.log2(5 / 8)
    assert S.entropy_bound_bytes(qconv) == pytest.approx((3 * 8 + 8 * h) / 8 + 2 * 4 + 2 + 2 * 4 + 12)


def test_model_sizes_and_compression(tiny):
    sizes = S.model_sizes(tiny)
    assert sizes["size_bytes"] == len(S.saved_bytes(tiny))
    assert 0 < sizes["size_xz_bytes"] < sizes["size_bytes"] and 0 < sizes["size_gzip_bytes"] < sizes["size_bytes"]
    # Dense FP32: the sparse encoding pays a bitmask on top of all values.
    n_w = sum(w.numel() for w in P.weight_tensors(tiny).values())
    assert sizes["size_sparse_bytes"] > 4 * n_w
    assert S.binary_entropy(0.5) == 1.0 and S.binary_entropy(0.0) == 0.0
    assert S.mib(3 * 2**20) == 3.0


# ---------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------
def test_resnet18_macs_and_params():
    model = build("resnet18", 10, 1.0)
    out = P.proxies(model)
    assert out["macs"] == 555_422_720
    assert 0.555e9 <= out["macs"] <= 0.557e9
    assert out["params"] == 11_173_962
    assert out["nonzero_macs"] == out["macs"]  # dense
    assert sum(layer["macs"] for layer in out["layers"]) == out["macs"]


def test_proxies_nonzero_counts_on_hand_pruned_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 2, bias=False), nn.Flatten(), nn.Linear(2 * 3 * 3, 3, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0] = 0  # half of the conv's 8 weights
        model[2].weight.fill_(1.0)
        model[2].weight[:, :9] = 0  # 27 of the linear's 54 weights
    out = P.proxies(model, (1, 1, 4, 4))
    layers = {layer["layer"]: layer for layer in out["layers"]}
    assert layers["0"]["macs"] == 2 * 1 * 2 * 2 * 3 * 3 == 72
    assert layers["0"]["nonzero_weights"] == 4 and layers["0"]["nonzero_macs"] == 36
    assert layers["2"]["macs"] == 54 and layers["2"]["nonzero_macs"] == 27
    assert out["params"] == 8 + 54 and out["nonzero_params"] == 4 + 27
    assert out["macs"] == 126 and out["nonzero_macs"] == 63
    assert P.weight_sparsity(model) == pytest.approx(31 / 62)


def test_proxies_of_int8_model_use_the_fp32_reference(tiny_qat_int8):
    _, int8 = tiny_qat_int8
    with pytest.raises(ValueError, match="fp32_reference"):
        P.proxies(int8)
    out = P.proxies(int8, fp32_reference=build(**ARCH))
    assert out["macs"] == P.proxies(build(**ARCH))["macs"]
    assert len(out["layers"]) == 21  # 17 convs of the blocks and stem, 3 shortcuts, the classifier


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------
class _Constant(nn.Module):
    """Logits that rank class 0 first, 1 second, ...: predictions known without running a network."""

    def __init__(self, classes):
        super().__init__()
        self.register_buffer("logits", -torch.arange(classes, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_accuracy_top1_top5_against_known_predictions():
    from pqd_lib.measure.accuracy import accuracy

    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0] * 3 + [3] * 5 + [7] * 12)
    out = accuracy(_Constant(100), x=x, y=y, mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=7)
    assert out["top1"] == pytest.approx(100 * 3 / 20) and out["top5"] == pytest.approx(100 * 8 / 20)
    assert out["n"] == 20
    from pqd_lib.stats import unpack_correct

    assert unpack_correct(out["correct_bits"], 20).tolist() == [True] * 3 + [False] * 17  # per image, in order
    assert accuracy(_Constant(10), x=x, y=y, mean=(0.5,) * 3, std=(0.25,) * 3)["top5"] is None
    with pytest.raises(ValueError, match="uint8"):
        accuracy(_Constant(10), x=x.float(), y=y, mean=(0.5,) * 3, std=(0.25,) * 3)


# ---------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------
def test_onnx_exports_quantize_and_time(tiny, tiny_qat_int8, tiny_onnx, tmp_path):
    from onnx import load, numpy_helper

    from pqd_lib.measure import onnx_runtime as O
    from pqd_lib.stages import quantize as Q

    _, int8 = tiny_qat_int8
    fp32, qat = tiny_onnx["fp32"], tiny_onnx["qat"]
    ort_int8 = O.quantize_static_onnx(fp32, tmp_path / "ort_int8.onnx", torch.randn(32, 3, 32, 32), batch_size=16)
    assert O.onnx_form(fp32) == "fp32" and O.onnx_form(ort_int8) == "int8" and O.onnx_form(qat) == "int8"

    x = torch.randn(5, 3, 32, 32)  # a batch size unseen at export: the batch axis is dynamic
    with torch.no_grad():
        assert np.allclose(O.predict(fp32, x), tiny(x).numpy(), atol=1e-4)

    # The QAT export carries exactly the PyTorch INT8 model's integer weights.
    ours = np.sort(np.concatenate([w.flatten().numpy() for w in Q.int8_weights(int8).values()]))
    inits = [numpy_helper.to_array(t) for t in load(str(qat)).graph.initializer]
    exported = np.sort(np.concatenate([a.flatten() for a in inits if a.dtype == np.int8 and a.ndim >= 2]))
    assert np.array_equal(ours, exported)

    records = L.measure_latency(qat, **FAST, isolate=False)
    assert records[0]["runtime"] == "onnxruntime" and records[0]["form"] == "int8" and records[0]["error"] is None
    with pytest.raises(ValueError, match="CPU"):
        L.measure_latency(qat, device="cuda", **FAST)


def _sqnr_db(reference, other):
    noise = float(((reference.astype(np.float64) - other) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((reference.astype(np.float64) ** 2).sum()) / noise)


def test_onnx_int8_kernels_agree_with_the_float_run_of_the_same_file(tiny_onnx, tmp_path):
    """ORT's integer kernels against the oracle of the same QDQ file run op by op in float: catches the
    u8 x s8 16-bit saturation of CPUs without VNNI. Measured on AMD EPYC AVX2 with this setup: ORT's
    U8S8 post-training INT8 27.9 dB, the U8U8 chosen there 52.9 dB; the QAT export with 0..127
    activations 37.5 dB, with 0..255 24.8 dB (with a trained model: 14.3, 48.3, 31.8, 14.4 dB)."""
    from pqd_lib.measure import onnx_runtime as O

    torch.manual_seed(0)
    calibration, x = torch.randn(64, 3, 32, 32), torch.randn(64, 3, 32, 32)
    ptq = O.quantize_static_onnx(tiny_onnx["fp32"], tmp_path / "ptq.onnx", calibration, batch_size=32)
    qat = tiny_onnx["qat"]
    assert O.read_metadata(qat)["pqd_reduce_range"] == "true"
    for path, floor in ((ptq, 35.0), (qat, 30.0)):
        kernels = O.predict(O.session(path), x)
        simulated = O.predict(O.session(path, optimize=False), x)
        assert _sqnr_db(simulated, kernels) >= floor, path.name


def test_qat_onnx_clamps_7bit_activations_like_fake_quant_and_keeps_integer_kernels(tmp_path):
    """With 7-bit activations (reduce_range, 0..127) the exported file must clamp where fake-quant clamps.

    Ranges calibrated on small inputs, then inputs 6x larger drive activations past them. Measured
    on AMD EPYC AVX2: without the clip (QuantizeLinear saturating at 255) ORT's kernels, ORT's float
    run of the file and OpenVINO all gave -1.3 dB logit SQNR against fake-quant; with it 37.8, 47.2
    and 46.0 dB. The clip must not unfuse ORT's integer convolutions."""
    import onnxruntime as ort
    from onnx import load

    from pqd_lib.measure import onnx_runtime as O
    from pqd_lib.stages import quantize as Q

    torch.manual_seed(0)
    prepared = Q.prepare_qat(build(**ARCH), reduce_range=True, engine="fx")
    with torch.no_grad():
        prepared(0.5 * torch.randn(32, 3, 32, 32))
    Q.freeze_observers(prepared)
    Q.freeze_bn_stats(prepared)
    prepared.eval()
    x = 3.0 * torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        fake_quant = prepared(x).numpy()
    qat = O.export_qat_onnx(prepared, tmp_path / "qat.onnx")
    assert _sqnr_db(fake_quant, O.predict(O.session(qat), x)) > 25
    assert _sqnr_db(fake_quant, O.predict(O.session(qat, optimize=False), x)) > 35
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(qat), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in load(str(tmp_path / "optimized.onnx")).graph.node]
    convs = sum(n.op_type == "Conv" for n in load(str(qat)).graph.node)
    assert optimized.count("QLinearConv") == convs and "Conv" not in optimized
    from pqd_lib.measure import openvino_runtime as V

    if V.version() is not None:  # the optional extra: checked where installed
        assert _sqnr_db(fake_quant, V.predict(qat, x)) > 25


def test_onnx_accuracy_matches_torch(tiny, tiny_onnx):
    from pqd_lib.measure.accuracy import accuracy

    path = tiny_onnx["fp32"]
    x = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (40,))
    kw = dict(x=x, y=y, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert accuracy(path, **kw)["top1"] == accuracy(tiny, **kw)["top1"]


# ---------------------------------------------------------------------------
# Sparse kernels and hardware
# ---------------------------------------------------------------------------
def test_csr_kernels_match_dense(tiny):
    from pqd_lib.measure.sparse_kernels import to_csr_kernels

    pruned = build(**ARCH).eval()
    with torch.no_grad():
        for m in pruned.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight[torch.rand_like(m.weight) < 0.9] = 0
    csr = to_csr_kernels(pruned)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(csr(x), pruned(x), atol=1e-4, rtol=1e-4)
    (r,) = L.measure_latency(pruned, runtime="torch-sparse-csr", **FAST, isolate=False)
    assert r["error"] is None and r["form"] == "fp32-sparse"


def test_hardware_info_fields():
    from pqd_lib.hardware import describe, hardware_info

    info = hardware_info()
    assert info["cpu_count"] == os.cpu_count() and info["torch_version"] == torch.__version__
    assert all(isinstance(info[k], bool) for k in ("isa_avx2", "isa_avx512f", "isa_avx512_vnni", "isa_avx_vnni",
                                                   "isa_avx512_bf16", "isa_amx", "int8_vnni"))
    assert info["quantized_engine"] == torch.backends.quantized.engine
    assert str(info["cpu_count"]) in describe(info) and info["cpu_capability_class"] in describe(info)


def test_hardware_info_comes_from_torch_cpu_capabilities(monkeypatch):
    from pqd_lib import hardware

    zen4 = {"architecture": "x86_64", "cpu_name": "Test CPU", "avx2": True, "avx512_f": True,
            "avx512_vnni": True, "avx512_bf16": True, "amx_int8": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: zen4)
    hardware.capabilities.cache_clear()
    hardware._static_info.cache_clear()
    try:
        info = hardware.hardware_info()
        assert info["cpu_model"] == "Test CPU" and info["isa_avx512_vnni"] and info["isa_avx512f"]
        assert not info["isa_amx"] and info["cpu_capability_class"] == "x86-avx512-vnni" and info["int8_vnni"]
    finally:
        hardware.capabilities.cache_clear()
        hardware._static_info.cache_clear()


@pytest.mark.parametrize("caps, cls, vnni", [
    ({"architecture": "x86_64", "avx2": True}, "x86-avx2", False),
    ({"architecture": "x86_64", "avx2": True, "avx_vnni": True}, "x86-avx2", False),  # AVX-VNNI: not used by the x86 engine
    ({"architecture": "x86_64", "avx2": True, "avx512_f": True}, "x86-avx512", False),
    ({"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_vnni": True}, "x86-avx512-vnni", True),
    ({"architecture": "x86_64", "avx512_f": True, "avx512_vnni": True, "amx_int8": True}, "x86-amx", True),
    ({"architecture": "x86_64", "sse4_2": True}, "x86", False),
    ({"architecture": "arm64", "neon": True}, "arm64", True),
    ({}, "unknown", False),
])
def test_capability_class_and_int8_vnni(caps, cls, vnni):
    from pqd_lib import hardware

    assert hardware.capability_class(caps) == cls and hardware.has_int8_vnni(caps) is vnni


def test_records_without_the_class_get_it_from_their_isa_columns():
    from pqd_lib.hardware import record_capability_class

    old = {"isa_avx2": True, "isa_avx512f": True, "isa_avx512_vnni": True, "isa_avx512_bf16": True, "isa_amx": False}
    assert record_capability_class(old) == "x86-avx512-vnni"
    assert record_capability_class({**old, "isa_avx512f": False, "isa_avx512_vnni": False}) == "x86-avx2"
    assert record_capability_class({"cpu_capability_class": "x86-amx", **old}) == "x86-amx"
    assert record_capability_class({"cpu_model": "?"}) == "unknown"


def test_module_without_arch_is_measured_in_child_as_itself():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    (r,) = L.measure_latency(model, **FAST)
    assert r["error"] is None and r["pid"] != os.getpid() and r["form"] == "fp32"


def test_pickled_modules_are_not_loaded_from_elsewhere(tmp_path):
    path = tmp_path / "x.module.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(L.ArtifactError, match="pickled module"):
        L.load_artifact(path)


def test_a_pickled_module_given_by_path_is_refused_not_unpickled(tmp_path):
    import torch as _torch

    from pqd_lib.measure import latency as L

    path = tmp_path / "user.module.pt"
    _torch.save(_torch.nn.Linear(2, 2), path)
    with pytest.raises(L.ArtifactError, match="runs code"):
        L.artifact_form(path)


# ---------------------------------------------------------------------------
# The rounds protocol (pqd_lib.measure.rounds) and its statistics (pqd_lib.measure.timing)
# ---------------------------------------------------------------------------
from pqd_lib.measure import rounds as R  # noqa: E402
from pqd_lib.measure import timing as T  # noqa: E402

ROUNDS = dict(threads=(1,), batch_sizes=(1,), warmup=1, rounds=3, block_seconds=0.0, max_reruns=0)


def test_calibrate_block_reaches_the_block_time_on_a_fake_clock():
    clock = FakeClock([0.003])
    calls = T.calibrate_block(clock.work, 0.1, timer=clock)
    assert calls * 0.003 >= 0.1 and (calls - 1) * 0.003 < 0.1 * 10  # enough calls, not absurdly many
    assert T.calibrate_block(clock.work, 0.0, timer=clock) == 1


def test_bootstrap_ci_is_seeded_and_brackets_the_median():
    values = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.8]
    low, high = T.bootstrap_ci(values)
    assert (low, high) == T.bootstrap_ci(values)
    assert low <= float(np.median(values)) <= high
    assert T.bootstrap_ci([2.0]) == (2.0, 2.0)
    assert T.median_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert T.spread([1.0, 1.05, 1.02]) == pytest.approx(0.05)


def test_cores_for_pins_the_last_cores_and_not_all_of_them():
    assert R.cores_for(1, [0, 1, 2, 3]) == [3]
    assert R.cores_for(2, [0, 1, 2, 3]) == [2, 3]
    assert R.cores_for(4, [0, 1, 2, 3]) is None


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    """Three identical-architecture FP32 deploy files and one INT8 file of the tiny ResNet."""
    from pqd_lib.deploy import save_artifact
    from pqd_lib.stages import quantize as Q

    work = tmp_path_factory.mktemp("rounds")
    torch.manual_seed(0)
    paths = {f"fp32-{i}": save_artifact(build(**ARCH).eval(), work / f"fp32-{i}.pt", arch=ARCH) for i in range(3)}
    prepared = Q.prepare_qat(build(**ARCH), reduce_range=True, engine="fx")
    with torch.no_grad():
        prepared(torch.randn(8, 3, 32, 32))
    paths["int8"] = save_artifact(Q.convert(prepared.eval()), work / "int8.pt", arch=ARCH, reduce_range=True)
    return paths


def test_rounds_in_process_give_every_model_a_relative_latency_with_its_ci(tiny_artifacts):
    ref = R.Candidate("ref", tiny_artifacts["fp32-0"])
    cands = [R.Candidate("a", tiny_artifacts["fp32-1"]), R.Candidate("int8", tiny_artifacts["int8"], fields={"x": 1})]
    records = R.compare(cands, ref, MeasureConfig(**ROUNDS, isolate=False))
    by = {r["label"]: r for r in records}
    assert set(by) == {"ref", "a", "int8"} and all(r["error"] is None for r in records)
    assert by["ref"]["relative_to_reference"] == pytest.approx(1.0, rel=0.5)  # its own blocks vs their geometric mean
    for r in records:
        assert r["relative_ci_low"] <= r["relative_to_reference"] <= r["relative_ci_high"]
        assert r["rounds_used"] <= r["rounds_run"] and r["protocol"] == "rounds" and r["reference"] == "ref"
        assert r["latency_ms_p50"] > 0 and r["threads"] == 1 and r["batch_size"] == 1
    assert by["int8"]["form"] == "int8" and by["a"]["form"] == "fp32" and by["int8"]["x"] == 1
    assert R.identical_spread(records, ["ref", "a"]) >= 0


def test_rounds_isolated_workers_are_fresh_pinned_processes(tiny_artifacts, tmp_path):
    """One worker per model, pinned; a worker that fails to load (a directory as artifact) reports why, the rest go on."""
    records = R.compare([R.Candidate("b", tiny_artifacts["fp32-1"]), R.Candidate("dir", tmp_path)],
                        R.Candidate("ref", tiny_artifacts["fp32-0"]), MeasureConfig(**ROUNDS))
    failed = [r for r in records if r["label"] == "dir"]
    assert len(failed) == 1 and str(tmp_path) in failed[0]["error"]
    records = [r for r in records if r["label"] != "dir"]
    assert all(r["error"] is None for r in records)
    pids = {r["pid"] for r in records}
    assert os.getpid() not in pids and len(pids) == 2  # one process per model
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) > 1:
        assert all(len(r["pinned_cores"]) == 1 for r in records)  # 1 thread: one core
        assert len({tuple(r["pinned_cores"]) for r in records}) == 1  # the same core for every model
    assert all(r["threads_observed"] == 1 for r in records)


def test_a_model_that_fails_gets_an_error_record_and_the_others_go_on(tiny_artifacts, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    records = R.compare([R.Candidate("broken", broken), R.Candidate("ok", tiny_artifacts["fp32-1"])],
                        R.Candidate("ref", tiny_artifacts["fp32-0"]), MeasureConfig(**ROUNDS, isolate=False))
    by = {r["label"]: r for r in records}
    assert "broken.pt" in by["broken"]["error"] and by["broken"].get("latency_ms_p50") is None
    assert by["ok"]["error"] is None and by["ok"]["latency_ms_p50"] > 0


def test_contended_rounds_are_marked_and_rerun(tiny_artifacts, monkeypatch):
    """Other processes busy on every core (a fake /proc/stat): every round marked, re-runs spent, records say so."""
    state = {"busy": 0.0}

    def busy_machine():
        state["busy"] += 100.0  # far more CPU seconds than any block's own time
        return state["busy"], 0.0, state["busy"] * 2

    monkeypatch.setattr(R, "cpu_snapshot", busy_machine)
    cfg = MeasureConfig(**{**ROUNDS, "max_reruns": 2}, isolate=False)
    records = R.compare([R.Candidate("a", tiny_artifacts["fp32-1"])], R.Candidate("ref", tiny_artifacts["fp32-0"]), cfg)
    r = next(r for r in records if r["label"] == "a")
    assert r["rounds_run"] == 5 and r["rounds_marked"] == 5 and r["contended"] is True


def test_unknown_runtime_and_missing_openvino_are_one_line_errors(tiny_artifacts, monkeypatch):
    with pytest.raises(ValueError, match="choose one of torch-eager, .*openvino"):
        R.compare([R.Candidate("a", tiny_artifacts["fp32-1"], runtime="tensorrt")],
                  R.Candidate("ref", tiny_artifacts["fp32-0"]), MeasureConfig(**ROUNDS))
    with pytest.raises(ValueError, match="does not exist; choose one of"):
        L.measure_latency(tiny_artifacts["fp32-1"], runtime="onnx-runtime", **FAST)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    from pqd_lib.measure.openvino_runtime import RuntimeUnavailable

    with pytest.raises(RuntimeUnavailable, match=r"pip install 'pqd\[openvino\]'") as info:
        L.measure_latency(tiny_artifacts["fp32-1"], runtime="openvino", **FAST)
    assert "\n" not in str(info.value)


def test_latency_phase_measures_each_signature_once(tiny):
    pruned = copy.deepcopy(tiny)
    with torch.no_grad():
        pruned.layer1[0].conv1.weight[:, :4] = 0  # another sparsity, the same dense-kernel work
    phase = R.latency_phase({"PQD": tiny, "QPD": pruned}, ARCH, MeasureConfig(**ROUNDS, isolate=False))
    assert set(phase) == {"PQD", "QPD"}
    a, b = phase["PQD"][1, 1], phase["QPD"][1, 1]
    assert a is not b and a["label"] == b["label"] and a["shared_by"] == 2
    assert R.deploy_signature(tiny, ARCH, "torch-sparse-csr") != R.deploy_signature(pruned, ARCH, "torch-sparse-csr")


def _c6_rows(b1_ms: dict[str, float], b32_per_image: dict[str, float] | None = None):
    import pandas as pd

    rows = [{"kind": "c6-latency", "backbone": b, "label": f"{b} ORT INT8 (QDQ)", "threads": 1, "batch_size": 1,
             "latency_ms_p50": ms, "per_image_ms": ms, "error": None, "cpu_model": "CPU", "cpu_capability_class": "x86-avx2"}
            for b, ms in b1_ms.items()]
    rows += [{"kind": "c6-latency", "backbone": b, "label": f"{b} PyTorch INT8", "threads": 2, "batch_size": 32,
              "latency_ms_p50": 32 * ms, "per_image_ms": ms, "error": None, "cpu_model": "CPU",
              "cpu_capability_class": "x86-avx2"} for b, ms in (b32_per_image or {}).items()]
    return pd.DataFrame(rows)


def test_c6_verdict_reads_batch1_and_batch32_records():
    from pqd_lib import claims

    (v,) = claims.c6(_c6_rows({"resnet18": 1.2, "vgg16_bn": 0.9, "wrn28_10": 1.4}))
    assert v["verdict"] == claims.HOLDS and "x86-avx2" in v["evidence"]
    (v,) = claims.c6(_c6_rows({"resnet18": 4.0, "vgg16_bn": 3.0, "wrn28_10": 40.0},
                              {"resnet18": 1.0, "vgg16_bn": 0.8, "wrn28_10": 1.3}))
    assert v["verdict"] == claims.FAILS and "plausible as time per image at batch 32" in v["evidence"]
    (v,) = claims.c6(_c6_rows({"resnet18": 1.0, "wrn28_10": 40.0}))
    assert v["verdict"] == claims.UNRESOLVED
    (v,) = claims.c6(_c6_rows({}).reindex(columns=["kind", "latency_ms_p50"]))
    assert v["verdict"] == claims.UNRESOLVED and "paper_latency" in v["evidence"]



def test_openvino_runs_the_onnx_files_pqd_writes(tiny, tiny_onnx):
    """OpenVINO (optional extra) reads pqd's FP32 and QAT QDQ files and computes what ONNX Runtime computes."""
    pytest.importorskip("openvino", reason="the optional 'openvino' extra is not installed")
    from pqd_lib.measure import onnx_runtime as O
    from pqd_lib.measure import openvino_runtime as V

    fp32, qat = tiny_onnx["fp32"], tiny_onnx["qat"]
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert np.allclose(V.predict(fp32, x, batch_size=4), tiny(x).numpy(), atol=1e-4)  # 4 + a ragged 2
    # 7-bit activations (the QAT twin's reduce_range): ONNX Runtime is exact on every x86 CPU then
    # (no u8s8 saturation without VNNI).
    assert O.read_metadata(qat)["pqd_reduce_range"] == "true"
    ov, ort = V.predict(qat, x), O.predict(qat, x)
    sqnr_db = 10 * np.log10((ort ** 2).sum() / ((ov - ort) ** 2).sum())
    assert ov.shape == (6, 10) and sqnr_db > 25  # measured 34 dB: requantisation rounding only
    (r,) = L.measure_latency(qat, runtime="openvino", **FAST, isolate=False)
    assert r["error"] is None and r["runtime"] == "openvino" and r["form"] == "int8" and r["compile_s"] > 0


def test_the_qat_onnx_export_names_its_engine_and_refuses_a_model_it_cannot_lower(tiny, tiny_qat_int8, tiny_onnx,
                                                                                    tmp_path):
    """export_qat_onnx is the one QAT ONNX export of both Q engines (PT2E's is in tests/test_quant_pt2e.py):
    its file says which engine made it; an FP32 or FX-converted model is a one-line error naming the fix."""
    from pqd_lib.measure import onnx_runtime as O

    assert O.read_metadata(tiny_onnx["qat"])["pqd_engine"] == "fx"
    _, fx_int8 = tiny_qat_int8
    for model in (tiny, fx_int8):
        with pytest.raises(O.OnnxError) as err:
            O.export_qat_onnx(model, tmp_path / "x.onnx")
        assert "\n" not in str(err.value) and "QAT-prepared" in str(err.value)
    assert not (tmp_path / "x.onnx").exists()
