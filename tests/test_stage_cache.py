"""The stage cache: a killed pipeline resumes at its first unfinished stage, repeats none, and ends where
an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from pqd_lib import config as C
from pqd_lib import data, pipeline, train

KEYS = ("stage", "top1", "sparsity", "form")


@pytest.fixture(scope="module")
def reference(trained_small):
    """P → Q → D computed afresh, without the cache."""
    small, cfg, baseline = trained_small
    return pipeline.run_stages(baseline, cfg, small, order="PQD", teacher=baseline, cache=False)[1]


def _counting_fit(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = train.fit

    def fit(*args, **kwargs):
        calls.append(kwargs.get("desc", "?"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "fit", fit)
    return calls


def _same(records, reference):
    assert [{k: r[k] for k in KEYS} for r in records] == [{k: r[k] for k in KEYS} for r in reference]
    assert records[-1]["deploy_top1"] == reference[-1]["deploy_top1"]
    assert records[-1]["correct_bits"] == reference[-1]["correct_bits"]


def test_a_shared_prefix_is_reused_and_the_result_is_unchanged(trained_small, reference, monkeypatch):
    small, cfg, baseline = trained_small
    pipeline.run_stages(baseline, cfg, small, order="PQ", teacher=baseline)  # caches P and P → Q
    calls = _counting_fit(monkeypatch)
    _, records = pipeline.run_stages(baseline, cfg, small, order="PQD", teacher=baseline)
    assert calls == ["PQD:D"]  # only the unfinished stage trains
    assert [r["cached_stage"] for r in records] == [True, True, False]
    _same(records, reference)
    # A second run repeats nothing at all.
    calls.clear()
    _, again = pipeline.run_stages(baseline, cfg, small, order="PQD", teacher=baseline)
    assert calls == [] and all(r["cached_stage"] for r in again)
    _same(again, reference)


def test_a_replayed_seed_ends_in_the_state_the_trained_one_ended_in(trained_small, embedded):
    """A seed replayed from the stage cache (the grid's latency phase) ends where its training run ended: same
    per-image hits and logits, with the test set reported apart from the split evaluated on, as in the grid.
    Replayed stages freeze observers and BN statistics as trained ones end (StageContext.fit; PT2E keeps BN's
    frozen state in graph meta, outside the cached state dict). At this scale the order still agrees without
    that; the smoke grid (tests/test_grid.py's settings on PT2E) reported D → Q → P, P → D → Q and
    Q → D → P (own lr) one image in 60 off before it."""
    small, cfg, baseline = trained_small
    test = embedded.subset(train=256, test=128, seed=1)  # reported on other images than evaluated on, as the grid
    for order in ("DQP",):
        fresh, trained = pipeline.run_stages(baseline, cfg, small, order=order, teacher=baseline, test=test)
        replayed, again = pipeline.run_stages(baseline, cfg, small, order=order, teacher=baseline, test=test)
        assert all(r["cached_stage"] for r in again)
        assert again[-1]["correct_bits"] == trained[-1]["correct_bits"]
        images, _ = next(iter(data.batches(test, "test", 128, shuffle=False, augment=False, device="cpu")))
        with torch.no_grad():
            assert torch.equal(fresh.eval()(images), replayed.eval()(images))


def test_a_killed_run_resumes_at_the_next_unfinished_stage(trained_small, reference, monkeypatch, tmp_path):
    small = trained_small[0]
    cache = tmp_path / "cache"
    killed_cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(cache))
    # The baseline is cached under the new directory first, so the child starts straight at P.
    train.train_baseline(killed_cfg, small, progress=False)
    script = textwrap.dedent(f"""
        import torch
        from pqd_lib import config as C, data, pipeline, train
        torch.set_num_threads(1)
        cfg = C.preset("smoke", data={{"source": "embedded"}}, cache_dir={str(cache)!r})
        small = data.load(C.DataConfig(source="embedded"), cache_dir=cfg.cache_path).subset(train=256, test=128, seed=0)
        model, _ = train.train_baseline(cfg, small, progress=False)
        pipeline.run_stages(model, cfg, small, order="PQD", teacher=model, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    stages = cache / "stages"
    deadline = time.monotonic() + 300
    try:
        while not list(stages.glob("*-P-*.json")):  # P finished: kill during Q
            assert child.poll() is None, "the child ended before P was cached"
            assert time.monotonic() < deadline, "P was never cached"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert not list(stages.glob("*-PQD-*.json"))  # killed before the end
    calls = _counting_fit(monkeypatch)
    model, _ = train.train_baseline(killed_cfg, small, progress=False)
    _, records = pipeline.run_stages(model, killed_cfg, small, order="PQD", teacher=model)
    finished = [r["stage"] for r in records if r["cached_stage"]]
    assert finished[:1] == ["P"] and calls == [f"PQD:{s}" for s in "PQD" if s not in finished]
    _same(records, reference)


def test_stages_before_q_keep_their_cache_keys_across_the_engine_default():
    """P and D prefixes do not depend on the quantization engine, so their cache keys stay those written
    while quantize.engine defaulted to "fx" (the standard grid's seed-0 stages, folder source), whichever
    engine a run names; a prefix with Q keys by its engine."""
    cfg = C.cell("resnet18", "cifar10", preset="standard", seed=0, data={"source": "folder"})
    written_under_fx_default = {"P": "40c93b7b80695d6e", "D": "d097d8fd99e8c851", "PD": "bfc0f8b67251d3ab",
                                "DP": "c9fb0c804b10c124"}
    for engine in ("pt2e", "fx"):
        named = C.with_section(cfg, "quantize", engine=engine)
        assert {p: pipeline._prefix_hash(named, p) for p in written_under_fx_default} == written_under_fx_default
    assert pipeline._prefix_hash(C.with_section(cfg, "quantize", engine="fx"), "PQ") != pipeline._prefix_hash(
        C.with_section(cfg, "quantize", engine="pt2e"), "PQ")
