"""Tests for pqd_lib.models: exact parameter counts, shapes, tracing, FX graph-mode QAT."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn
from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

from pqd_lib.models import MODELS, build, rebuild
from pqd_lib.models._common import scale_channels

pytestmark = [
    # torch.ao's own deprecation notices are raised at our call sites, not inside torch.ao.
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Please use quant_min and quant_max:UserWarning"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning"),
]

NAMES = ["resnet18", "wrn28_10", "vgg16_bn"]
# Small enough that trace, export and QAT of all three stay within seconds on 2 CPU cores.
SMALL = 0.125

# Published counts at width 1.0. 10 classes: kuangliu/pytorch-cifar ResNet18 and VGG('VGG16'),
# xternalz/WideResNet-pytorch WideResNet(28, 10, 10). 100 classes: + 90 * (in_features + 1).
PARAMS = {
    ("resnet18", 10): 11_173_962,
    ("resnet18", 100): 11_220_132,
    ("wrn28_10", 10): 36_479_194,
    ("wrn28_10", 100): 36_536_884,
    ("vgg16_bn", 10): 14_728_266,
    ("vgg16_bn", 100): 14_774_436,
}

FIRST_CONV_AND_CLASSIFIER = {
    "resnet18": ("conv1", "fc"),
    "wrn28_10": ("conv1", "fc"),
    "vgg16_bn": ("features.0", "classifier"),
}


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Seed every test; one intra-op thread, because tiny convs gain nothing from more and
    oversubscribed OpenMP threads on a shared 2-core machine slow them down a hundredfold."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(name: str, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build without allocating or initialising storage: counting 36M parameters stays instant."""
    with torch.device("meta"):
        return build(name, num_classes, width)


@pytest.mark.parametrize(("name", "num_classes"), sorted(PARAMS))
def test_parameter_count_is_exact(name, num_classes):
    assert n_params(build_meta(name, num_classes)) == PARAMS[name, num_classes]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_classifier_has_num_classes_outputs(name, num_classes):
    first_conv, classifier = FIRST_CONV_AND_CLASSIFIER[name]
    model = build_meta(name, num_classes)
    head = model.get_submodule(classifier)
    assert isinstance(head, nn.Linear) and head.out_features == num_classes
    assert isinstance(model.get_submodule(first_conv), nn.Conv2d)
    # The classifier is the last module with parameters, the first conv the first one.
    with_params = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert (with_params[0], with_params[-1]) == (first_conv, classifier)


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_every_channel_and_shrinks_params(name):
    counts = [n_params(build_meta(name, 10, w)) for w in (0.125, 0.25, 0.5, 1.0)]
    assert counts == sorted(set(counts))
    full, half = build_meta(name, 10, 1.0), build_meta(name, 10, 0.5)
    full_convs = [m for m in full.modules() if isinstance(m, nn.Conv2d)]
    half_convs = [m for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert [scale_channels(c.out_channels, 0.5) for c in full_convs] == [c.out_channels for c in half_convs]
    first_conv, _ = FIRST_CONV_AND_CLASSIFIER[name]
    assert half.get_submodule(first_conv).in_channels == 3  # RGB input is never scaled


def test_scale_channels_rounds_half_up_and_keeps_one():
    assert scale_channels(64, 0.125) == 8
    assert scale_channels(5, 0.5) == 3  # 2.5 -> 3 (Python's round would give 2)
    assert scale_channels(3, 0.5) == 2
    assert scale_channels(16, 0.01) == 1
    assert scale_channels(640, 1.0) == 640


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_shape(name, num_classes):
    model = build(name, num_classes, SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic_under_a_seed(name):
    torch.manual_seed(1)
    a = build(name, 10, SMALL).state_dict()
    torch.manual_seed(1)
    b = build(name, 10, SMALL).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", NAMES)
def test_init_kaiming_convs_identity_bn(name):
    model = build(name, 10, 1.0 if name != "wrn28_10" else 0.5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    big = max(convs, key=lambda c: c.weight.numel())
    fan_out = big.out_channels * big.kernel_size[0] * big.kernel_size[1]
    assert big.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


@pytest.mark.parametrize("name", NAMES)
def test_symbolic_trace_matches_and_is_quantization_ready(name):
    model = build(name, 10, SMALL).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)

    nodes = list(traced.graph.nodes)
    # Residual additions go through FloatFunctional (torch.add), never a bare `+`.
    assert not any(n.op == "call_function" and n.target in (operator.add, operator.iadd) for n in nodes)
    # Every ReLU module is called exactly once, so fusion and observers never share one.
    relu_names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    relu_calls = [n.target for n in nodes if n.op == "call_module" and n.target in set(relu_names)]
    assert sorted(relu_calls) == sorted(relu_names)
    if name != "wrn28_10":  # pre-activation WRN is documented as only partly fusable
        for node in nodes:
            if node.op == "call_module" and isinstance(traced.get_submodule(node.target), nn.Conv2d):
                (user,) = node.users
                assert isinstance(traced.get_submodule(user.target), nn.BatchNorm2d), node.target


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_matches_eager(name):
    model = build(name, 10, SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


# Exact quantized module census after convert_fx (x86): conv-bn(-relu) fully folded for
# ResNet-18 (9 conv-bn-relu: stem + 8 first convs; 11 conv-bn: 8 second convs + 3 projections)
# and VGG-16-BN (13 conv-bn-relu); WRN-28-10 keeps standalone BN+ReLU as quantized BNReLU2d.
QUANTIZED_CENSUS = {
    "resnet18": {nniq.ConvReLU2d: 9, nnq.Conv2d: 11, nniq.BNReLU2d: 0, nnq.Linear: 1},
    "vgg16_bn": {nniq.ConvReLU2d: 13, nnq.Conv2d: 0, nniq.BNReLU2d: 0, nnq.Linear: 1},
    "wrn28_10": {nniq.ConvReLU2d: 13, nnq.Conv2d: 15, nniq.BNReLU2d: 12, nnq.Linear: 1},
}


@pytest.fixture
def x86_engine():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    yield
    torch.backends.quantized.engine = previous


@pytest.mark.usefixtures("x86_engine")
@pytest.mark.parametrize("name", NAMES)
def test_fx_qat_prepare_convert_runs_int8(name):
    model = build(name, 10, SMALL).train()
    qconfig_mapping = tq.get_default_qat_qconfig_mapping("x86")
    prepared = prepare_qat_fx(model, qconfig_mapping, example_inputs=(torch.randn(1, 3, 32, 32),))
    for _ in range(3):  # a few batches so BN running statistics and observer ranges settle
        prepared(torch.randn(8, 3, 32, 32))
    prepared.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        fake_quant = prepared(x)
    quantized = convert_fx(prepared)
    with torch.no_grad():
        out = quantized(x)

    assert out.shape == (4, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    census = {cls: sum(type(m) is cls for m in quantized.modules()) for cls in QUANTIZED_CENSUS[name]}
    assert census == QUANTIZED_CENSUS[name]
    # Nothing is left in float: every conv, BN and linear was folded or replaced.
    assert not any(type(m) in (nn.Conv2d, nn.BatchNorm2d, nn.Linear) for m in quantized.modules())
    # The INT8 model computes what its fake-quant twin computes. A loose bound (0.96-0.99 seen
    # at this width, random init, 3 batches): a broken graph lands far below; the tight
    # INT8-vs-fake-quant oracle belongs to the quantize stage's tests.
    cosine = nn.functional.cosine_similarity(out.flatten(), fake_quant.flatten(), dim=0)
    assert cosine > 0.9


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError) as info:
        build("resnet50", 10)
    message = str(info.value)
    assert "\n" not in message and "'resnet50'" in message
    assert all(name in message for name in MODELS)


def test_registry_holds_the_three_backbones():
    assert list(MODELS) == NAMES


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True, "10"])
def test_bad_num_classes_is_rejected(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build("resnet18", num_classes)


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "1", None])
def test_bad_width_is_rejected(width):
    with pytest.raises(ValueError, match="width"):
        build("resnet18", 10, width)


def test_rebuild_prefers_build_fn_then_registry_and_says_none_otherwise():
    arch = {"name": "resnet18", "num_classes": 10, "width": 0.125}
    assert sum(p.numel() for p in rebuild(arch).parameters()) == sum(p.numel() for p in build(**arch).parameters())
    sentinel = torch.nn.Linear(2, 2)
    assert rebuild({"name": "mine"}, lambda: sentinel) is sentinel
    assert rebuild({"name": "mine"}) is None
