"""The one training loop: learning, determinism, checkpoints, resume, the cached baseline."""

from __future__ import annotations

import os

import pytest
import yaml
import torch

from pqd_lib import config as C
from pqd_lib import models, train


@pytest.fixture
def tiny(embedded):
    return embedded.subset(train=300, test=100, seed=0)


def _model(cfg):
    torch.manual_seed(cfg.seed)
    return models.build(cfg.model.name, num_classes=cfg.num_classes, width=cfg.model.width)


def test_fit_learns_and_is_deterministic(tiny, smoke_cfg):
    cfg = C.apply_overrides(smoke_cfg, {"train.epochs": 2})
    runs = []
    for _ in range(2):
        m = _model(cfg)
        hist = train.fit(m, tiny, cfg, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)
        runs.append((hist, m.state_dict()))
    (h1, s1), (h2, s2) = runs
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert set(h1[0]) >= {"epoch", "loss", "train_top1", "test_top1", "images_per_s", "lr"}
    assert h1[-1]["loss"] < 2.35  # below the loss of a uniform guess over 10 classes (ln 10 = 2.30) + margin


def test_hooks_run_after_every_step_and_epoch(tiny, smoke_cfg):
    steps, epochs = [], []
    m = _model(smoke_cfg)
    train.fit(m, tiny, smoke_cfg, epochs=2, lr=0.01, momentum=0.9, weight_decay=0.0,
              after_step=[lambda: steps.append(1)], on_epoch_start=[epochs.append])
    per_epoch = 300 // smoke_cfg.train.batch_size + (1 if 300 % smoke_cfg.train.batch_size > 1 else 0)
    assert len(steps) == 2 * per_epoch and epochs == [0, 1]


def test_resume_after_interruption_matches_uninterrupted(tiny, smoke_cfg, tmp_path):
    ref = _model(smoke_cfg)
    train.fit(ref, tiny, smoke_cfg, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4)

    ckpt = tmp_path / "partial.pt"

    class Killed(Exception):
        pass

    def kill_at_second_epoch(epoch):
        if epoch == 1:
            raise Killed

    m = _model(smoke_cfg)
    with pytest.raises(Killed):
        train.fit(m, tiny, smoke_cfg, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, checkpoint=ckpt,
                  on_epoch_start=[kill_at_second_epoch])
    assert ckpt.is_file()
    resumed = _model(smoke_cfg)  # a fresh process would start from a fresh model
    hist = train.fit(resumed, tiny, smoke_cfg, epochs=2, lr=0.05, momentum=0.9, weight_decay=5e-4, checkpoint=ckpt)
    assert [h["epoch"] for h in hist] == [1, 2]
    assert not ckpt.exists()
    for k, v in ref.state_dict().items():
        assert torch.allclose(v.float(), resumed.state_dict()[k].float(), atol=1e-6), k


def test_checkpoint_round_trip_and_architecture_mismatch(tmp_path, smoke_cfg):
    m = _model(smoke_cfg)
    path = train.save_checkpoint(tmp_path / "m.pt", m, arch=train.arch_spec(smoke_cfg), cfg=smoke_cfg)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    m2 = _model(C.apply_overrides(smoke_cfg, {"seed": 1}))
    payload = train.load_checkpoint(path, m2, arch=train.arch_spec(smoke_cfg))
    assert C.from_dict(yaml.safe_load(payload["config_yaml"])) == smoke_cfg
    x = torch.randn(2, 3, 32, 32)
    m.eval(), m2.eval()
    assert torch.equal(m(x), m2(x))

    vgg_cfg = C.apply_overrides(smoke_cfg, {"model.name": "vgg16_bn"})
    with pytest.raises(train.CheckpointError) as err:
        train.load_checkpoint(path, _model(vgg_cfg), arch=train.arch_spec(vgg_cfg))
    assert "resnet18" in str(err.value) and "vgg16_bn" in str(err.value)
    with pytest.raises(train.CheckpointError, match="does not fit"):
        train.load_checkpoint(path, _model(vgg_cfg))

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(train.CheckpointError, match="corrupt.pt"):
        train.load_checkpoint(corrupt)
    with pytest.raises(train.CheckpointError, match="not found"):
        train.load_checkpoint(tmp_path / "missing.pt")


def test_train_baseline_is_cached_by_config_hash(embedded, smoke_cfg):
    m1, info1 = train.train_baseline(smoke_cfg, embedded)
    assert not info1["cached"] and os.path.isfile(info1["path"])
    assert info1["test"]["images"] == embedded.y_test.numel()
    m2, info2 = train.train_baseline(smoke_cfg, embedded)
    assert info2["cached"] and info2["path"] == info1["path"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    # a stage setting does not change the teacher; a baseline setting does
    assert train.baseline_path(C.apply_overrides(smoke_cfg, {"prune.target_sparsity": 0.9}), embedded) == \
        train.baseline_path(smoke_cfg, embedded)
    assert train.baseline_path(C.apply_overrides(smoke_cfg, {"train.lr": 0.05}), embedded) != \
        train.baseline_path(smoke_cfg, embedded)


def test_evaluate_counts_every_test_image(tiny, smoke_cfg):
    m = _model(smoke_cfg)
    res = train.evaluate(m, tiny, batch_size=33)
    assert res["images"] == 100 and 0 <= res["top1"] <= res["top5"] <= 100


def test_channels_last_training_refuses_a_users_cnn_that_oneDNN_gets_wrong_and_trains_it_nchw(tiny, smoke_cfg):
    # oneDNN #6035 (pqd_lib.backbones.ONEDNN_SAFE_INPUT_CHANNELS): a stride-2 1x1 conv with 4 inputs would
    # crash (AVX2) or get a wrong weight gradient (AVX-512) in NHWC; fit refuses before the first step.
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 8, 1, stride=2),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    nhwc = C.apply_overrides(smoke_cfg, {"train.channels_last": True, "model.width": 0.25})
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    with pytest.raises(ValueError, match=r"^2: a stride-2 1x1 convolution with 4 input channels.*channels_last=false"):
        train.fit(cnn, tiny, nhwc, epochs=1, lr=0.01, momentum=0.9, weight_decay=0.0)
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())  # refused before any step
    hist = train.fit(cnn, tiny, smoke_cfg, epochs=1, lr=0.01, momentum=0.9, weight_decay=0.0)  # smoke: NCHW
    assert len(hist) == 1 and hist[0]["loss"] == hist[0]["loss"]


def test_cuda_request_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the error path is for machines without it")
    with pytest.raises(ValueError, match="no CUDA device"):
        train.resolve_device("cuda")


def test_holdout_validation_is_fixed_disjoint_and_leaves_test_alone():
    from pqd_lib import data as data_mod
    from pqd_lib import train as T

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.arange(100) % 10
    splits = data_mod.DataSplits(x, y, x[:7], y[:7], tuple("abcdefghij"), "synthetic", (0.5,) * 3, (0.25,) * 3)
    fitting, split = T.holdout_validation(splits, 20, seed=3)
    again, _ = T.holdout_validation(splits, 20, seed=3)
    assert len(fitting.y_train) == 80 and len(fitting.y_test) == 20 and split["eval_split"] == "validation"
    assert torch.equal(fitting.x_test, again.x_test)  # the same split every time
    # Every training image is in exactly one part (the pixels identify them here).
    rows = {tuple(v.flatten().tolist()) for v in torch.cat([fitting.x_train, fitting.x_test])}
    assert len(rows) == len({tuple(v.flatten().tolist()) for v in x})
    with pytest.raises(ValueError, match="images must be"):
        T.holdout_validation(splits, 100)
