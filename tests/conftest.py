"""Shared test fixtures: a private cache, one thread, seeds, the embedded data set."""

from __future__ import annotations

import pytest
import torch

from pqd_lib import config as C


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """A cache directory private to this test session (decoded data, baselines)."""
    return tmp_path_factory.mktemp("pqd-cache")


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch, session_cache):
    """Seed torch, use one thread (tiny models are slower with OpenMP contention), never touch ~/.cache."""
    monkeypatch.setenv("PQD_CACHE", str(session_cache))
    monkeypatch.setenv("PQD_PROGRESS", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedded(session_cache):
    """The embedded real CIFAR-10 subset (5,000 train + 1,000 test images), decoded once per session."""
    from pqd_lib import data as D

    return D.load(C.DataConfig(source="embedded"), cache_dir=session_cache)


@pytest.fixture
def smoke_cfg(tmp_path):
    """The smoke preset on the embedded data, with results and checkpoints under tmp_path."""
    return C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"),
                    results_dir=str(tmp_path / "results"))


@pytest.fixture(scope="session")
def trained_small(embedded, tmp_path_factory):
    """(data, cfg, baseline): 256 + 128 embedded images, the smoke config with its own cache, and the
    FP32 baseline trained on them once per session (for pipeline-level tests that need a trained start)."""
    from pqd_lib import train

    small = embedded.subset(train=256, test=128, seed=0)
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path_factory.mktemp("trained-small")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test setting
    try:
        model, _ = train.train_baseline(cfg, small, progress=False)
    finally:
        torch.set_num_threads(threads)
    return small, cfg, model
