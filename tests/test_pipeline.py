"""The ordered pipeline: every order of P, Q, D ends in the deploy form its letters imply; bad input
fails in one line before anything is written; compress works on a user's CNN; deploy files reload
to identical outputs, also in a fresh process.

Q runs on the default engine (PT2E); the two tests of FX deploy files (a state dict rebuilt into an FX
skeleton) pin ``quantize.engine=fx``."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from pqd_lib import config as C
from pqd_lib import data as data_mod
from pqd_lib import deploy, pipeline, train
from pqd_lib.stages import distill as D
from pqd_lib.stages import prune as P
from pqd_lib.stages import quantize as Q

ORDERS = ["".join(p) for k in (1, 2, 3) for p in itertools.permutations("PQD", k)]


@pytest.fixture(scope="module")
def small(embedded):
    return embedded.subset(train=256, test=128, seed=0)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path_factory.mktemp("pipe-cache")))


@pytest.fixture(scope="module")
def baseline(cfg, small):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's per-test setting
    try:
        model, info = train.train_baseline(cfg, small, progress=False)
    finally:
        torch.set_num_threads(threads)
    return model


class SmallCNN(nn.Module):
    """A user's own network: conv-BN-ReLU blocks, global pooling, a linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.conv3, self.bn3, self.relu3 = nn.Conv2d(16, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _trained_small_cnn(cfg, data):
    torch.manual_seed(0)
    model = SmallCNN()
    train.fit(model, data, cfg, epochs=1, lr=0.05, momentum=0.9, weight_decay=5e-4)
    return model


def _images(data, n=16):
    return next(iter(data_mod.batches(data, "test", n, shuffle=False, augment=False)))[0]


# ---------------------------------------------------------------------------
# Every order
# ---------------------------------------------------------------------------
def test_there_are_fifteen_orders():
    assert len(ORDERS) == 15 and len(set(ORDERS)) == 15


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_runs_and_ends_in_the_form_its_letters_imply(order, baseline, cfg, small):
    out, records = pipeline.run_stages(baseline, cfg, small, order=order, teacher=baseline, progress=False)
    assert [r["stage"] for r in records] == list(order)
    assert [r["position"] for r in records] == list(range(1, len(order) + 1))
    assert [r["epochs"] for r in records] == [1] * len(order)
    assert all(r["allocation"] == "by_stage" and r["wall_s"] > 0 and len(r["history"]) == 1 for r in records)
    # INT8 modules iff Q ran; never a fake-quant deploy model.
    assert Q.is_int8(out) == ("Q" in order) and not Q.is_fake_quant(out)
    final = records[-1]
    assert final["deploy_form"] == ("int8" if "Q" in order else "fp32")
    assert 0 <= final["deploy_top1"] <= 100 and final["deploy_device"] == "cpu"
    assert ("int8_agreement" in final) == ("Q" in order)
    from pqd_lib.stats import unpack_correct  # per-image hits agree with the deploy top-1

    assert 100 * unpack_correct(final["correct_bits"], final["n"]).mean() == pytest.approx(final["deploy_top1"])
    # Masks and sparsity iff P ran (from P's stage on); the deploy form carries the zeros, not masks.
    p_at = order.find("P")
    for i, r in enumerate(records):
        pruned = p_at != -1 and i >= p_at
        assert (r["masked_layers"] > 0) == pruned
        assert r["sparsity"] == (pytest.approx(cfg.prune.target_sparsity, abs=1e-3) if pruned else 0.0)
    if p_at != -1:
        assert final["deploy_sparsity"] == pytest.approx(cfg.prune.target_sparsity, abs=1e-3)
    else:  # FP32 has no exact zeros; INT8 rounds a few tiny weights to 0
        assert final["deploy_sparsity"] < (0.05 if "Q" in order else 1e-9)
    assert not P.masks(out)
    # The starting model was not touched.
    assert not P.masks(baseline) and not Q.is_fake_quant(baseline)


@pytest.mark.parametrize("capped", [True, False])
def test_stages_after_q_train_at_most_at_q_learning_rate(capped, baseline, cfg, small):
    # A 10x larger rate after Q collapsed the fake-quant model on the mini preset (59 -> 40 % in D).
    cfg_c = C.with_section(cfg, "pipeline", qat_lr_after_q=capped)
    _, records = pipeline.run_stages(baseline, cfg_c, small, order="DQP", teacher=baseline, progress=False)
    lrs = {r["stage"]: r["details"]["lr"] for r in records}
    assert lrs["D"] == cfg.distill.lr and lrs["Q"] == cfg.quantize.lr  # D ran before Q: its own rate
    assert lrs["P"] == (min(cfg.prune.lr, cfg.quantize.lr) if capped else cfg.prune.lr)
    assert cfg.quantize.lr < cfg.prune.lr  # otherwise the test would not test anything


def test_epoch_allocation_by_stage_and_by_position():
    assert pipeline.allocate_epochs("PQD", (20, 40, 40), "by_stage") == [20, 40, 40]
    assert pipeline.allocate_epochs("DP", (20, 40, 40), "by_stage") == [40, 20]
    assert pipeline.allocate_epochs("QD", (20, 40, 30), "by_stage") == [40, 30]
    assert pipeline.allocate_epochs("DP", (20, 40, 30), "by_position") == [20, 40]
    assert pipeline.allocate_epochs("D", (5, 40, 30), "by_position") == [5]


def test_zero_epoch_stages_prune_one_shot_and_quantize_post_training(baseline, cfg, small):
    c = C.apply_overrides(cfg, {"pipeline.allocation": "by_position", "pipeline.epochs": [1, 0, 0]})
    out, records = pipeline.run_stages(baseline, c, small, order="DPQ", teacher=baseline, progress=False)
    assert [r["epochs"] for r in records] == [1, 0, 0] and records[0]["allocation"] == "by_position"
    assert records[1]["history"] == [] and records[1]["details"]["mask_updates"] == {0: 0.5}
    assert Q.is_int8(out) and records[-1]["deploy_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert records[-1]["int8_agreement"] > 50  # calibrated observers, not default scales


# ---------------------------------------------------------------------------
# Bad input: one line, nothing written
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [("PX", "unknown letter"), ("PPQ", "repeats P"), ("", "empty"),
                                        ("pqd", "unknown letter")])
def test_bad_orders_are_one_line_errors_and_write_nothing(bad, words, tmp_path, small):
    with pytest.raises(C.ConfigError, match=words):
        C.preset("smoke", data={"source": "embedded"}, pipeline={"order": bad})
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(C.ConfigError, match=words) as err:
        pipeline.compress(SmallCNN(), small, order=bad, config=cfg)
    assert "\n" not in str(err.value) and "pipeline.order" in str(err.value)
    with pytest.raises(C.ConfigError):
        pipeline.run_stages(SmallCNN(), cfg, small, order=bad)
    assert not (tmp_path / "cache").exists()


def test_non_string_order_and_wrong_argument_types_are_clear(small, tmp_path):
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(C.ConfigError, match="pipeline.order"):
        pipeline.compress(SmallCNN(), small, order=["P"], config=cfg)
    with pytest.raises(TypeError, match="DataSplits"):
        pipeline.compress(SmallCNN(), (torch.zeros(1), torch.zeros(1)), order="P", config=cfg)
    assert not (tmp_path / "cache").exists()


def test_teacher_with_another_number_of_classes_fails_before_training(small, tmp_path):
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(D.TeacherError) as err:
        pipeline.compress(SmallCNN(), small, order="PQD", teacher=SmallCNN(num_classes=5), config=cfg)
    assert "5 classes" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_quantize_order_without_the_engine_fails_before_training(monkeypatch, small, tmp_path):
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", ["qnnpack"])
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(Q.BackendError, match="available: qnnpack"):
        pipeline.compress(SmallCNN(), small, order="DPQ", config=cfg)
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------
# compress on a user's CNN
# ---------------------------------------------------------------------------
def test_compress_a_user_cnn_with_pqd_returns_int8_and_records(small, tmp_path):
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"))
    model = _trained_small_cnn(cfg, small)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out, records = pipeline.compress(model, small, order="PQD", config=cfg)
    assert Q.is_int8(out) and not Q.is_fake_quant(out)
    assert [r["stage"] for r in records] == ["P", "Q", "D"] and records[-1]["deploy_form"] == "int8"
    assert records[0]["arch"] == {"name": "SmallCNN"}
    assert records[-1]["deploy_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    # The teacher: a baseline of the user's architecture, trained once and cached under its own name.
    cached = list((tmp_path / "cache" / "baselines").glob("SmallCNN-*.pt"))
    assert len(cached) == 1
    out(_images(small))  # the INT8 model runs


# ---------------------------------------------------------------------------
# Deploy artifacts
# ---------------------------------------------------------------------------
def test_pruned_fp32_deploy_file_reloads_to_identical_outputs(baseline, cfg, small, tmp_path):
    out, records = pipeline.run_stages(baseline, cfg, small, order="P", progress=False)
    path = deploy.save_deploy(out, tmp_path / "p.pt", arch=train.arch_spec(cfg), form="fp32",
                              metadata={"top1": records[-1]["deploy_top1"]})
    loaded = deploy.load_deploy(path, arch=train.arch_spec(cfg))
    x = _images(small)
    with torch.no_grad():
        assert torch.equal(out(x), loaded(x))
    sparsity = P.sparsity_of(P.float_weights(loaded), list(P.prunable_layers(loaded)))["sparsity"]
    assert sparsity == pytest.approx(0.5, abs=1e-3)
    assert deploy.read_deploy_info(path)["metadata"]["top1"] == records[-1]["deploy_top1"]


def test_int8_deploy_file_reloads_to_identical_outputs_in_a_fresh_process(baseline, cfg, small, tmp_path):
    """FX: a deploy file holds an FX INT8 state dict (a PT2E graph is a torch.export program instead,
    tested in test_quant_pt2e)."""
    out, _ = pipeline.run_stages(baseline, C.with_section(cfg, "quantize", engine="fx"), small, order="PQ",
                                 progress=False)
    path = deploy.save_deploy(out, tmp_path / "int8.pt", arch=train.arch_spec(cfg), form="int8")
    loaded = deploy.load_deploy(path)
    x = _images(small)
    with torch.no_grad():
        expected = out(x)
        assert torch.equal(expected, loaded(x))
    assert all(torch.equal(a, b) for a, b in zip(Q.int8_weights(out).values(), Q.int8_weights(loaded).values()))
    torch.save({"x": x, "y": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import torch
        from pqd_lib.deploy import load_deploy
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        model = load_deploy({str(path)!r})
        with torch.no_grad():
            assert torch.equal(model(io["x"]), io["y"]), "outputs differ"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_user_model_deploy_needs_its_constructor(small, tmp_path):
    """FX: only an FX deploy file is rebuilt from its constructor (a PT2E program carries its graph)."""
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"), quantize={"engine": "fx"})
    out, records = pipeline.compress(_trained_small_cnn(cfg, small), small, order="PQ", config=cfg)
    path = deploy.save_deploy(out, tmp_path / "user.pt", arch=records[0]["arch"], form="int8")
    with pytest.raises(deploy.DeployError, match="build_fn"):
        deploy.load_deploy(path)
    loaded = deploy.load_deploy(path, build_fn=SmallCNN)
    x = _images(small)
    with torch.no_grad():
        assert torch.equal(out(x), loaded(x))


def test_deploy_errors_are_one_line_and_name_path_and_architectures(baseline, cfg, small, tmp_path):
    arch = train.arch_spec(cfg)
    out, _ = pipeline.run_stages(baseline, cfg, small, order="P", progress=False)
    path = deploy.save_deploy(out, tmp_path / "r18.pt", arch=arch, form="fp32")
    other = {**arch, "width": 0.25}
    errors = []
    with pytest.raises(deploy.DeployError) as err:
        deploy.load_deploy(path, arch=other)
    errors.append(str(err.value))
    assert str(path) in errors[-1] and "width 0.125" in errors[-1] and "width 0.25" in errors[-1]
    from pqd_lib import models

    with pytest.raises(deploy.DeployError) as err:
        deploy.load_deploy(path, build_fn=lambda: models.build("resnet18", 10, 0.25))
    errors.append(str(err.value))
    assert str(path) in errors[-1] and "does not fit" in errors[-1]
    with pytest.raises(deploy.DeployError, match="not found") as err:
        deploy.load_deploy(tmp_path / "missing.pt")
    errors.append(str(err.value))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(deploy.DeployError, match="not a readable") as err:
        deploy.load_deploy(tmp_path / "junk.pt")
    errors.append(str(err.value))
    with pytest.raises(deploy.DeployError, match="form"):
        deploy.save_deploy(out, tmp_path / "x.pt", arch=arch, form="int8")
    assert not (tmp_path / "x.pt").exists()
    assert all("\n" not in e for e in errors)
