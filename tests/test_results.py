"""pqd_lib.results: provenance, one-file-per-record atomic appends, concurrent writers, schema checks."""

from __future__ import annotations

import json
import math
import multiprocessing as mp

import pandas as pd
import pytest

from pqd_lib import config as C
from pqd_lib import results as R


def _writer(results_dir: str, tag: str, n: int) -> None:
    """Append `n` records as fast as possible (run in two processes at once)."""
    for i in range(n):
        R.append({"run_id": "shared-run", "writer": tag, "i": i, "top1": float(i)}, results_dir)


def test_make_record_fills_provenance():
    cfg = C.preset("smoke", data={"source": "embedded"})
    rec = R.make_record(cfg, stage="P", top1=91.5, order="QPD")
    assert rec["schema_version"] == R.SCHEMA_VERSION
    assert rec["run_id"] == C.run_id(cfg, "QPD") and rec["order"] == "QPD"
    assert rec["config_hash"] == C.config_hash(cfg)
    assert rec["config"] == C.to_dict(cfg)
    assert (rec["backbone"], rec["dataset"], rec["preset"], rec["seed"]) == ("resnet18", "cifar10", "smoke", 0)
    assert rec["data_source"] == "embedded" and rec["stage"] == "P" and rec["top1"] == 91.5
    for key in ("git_commit", "git_dirty", "timestamp", "record_id", "cpu_model", "torch_version"):
        assert key in rec
    assert R.make_record(None, top1=1.0)["run_id"] is None


def test_code_version_outside_git_does_not_fail(tmp_path):
    assert R.code_version(tmp_path) == {"git_commit": None, "git_dirty": None}


def test_append_and_load_round_trip(tmp_path):
    cfg = C.preset("smoke", data={"source": "embedded"})
    path = R.append(R.make_record(cfg, stage="Q", top1=88.0, sparsity=0.5, threads=1, batch_size=1,
                                  latency_ms_p50=3.25, extra_tuple=(1, 2), not_finite=float("inf")), tmp_path)
    assert path.parent.name == C.run_id(cfg) and path.suffix == ".json"
    R.append({"run_id": "other", "top1": 50.0}, tmp_path)
    df = R.load_results(tmp_path)
    assert len(df) == 2
    assert list(df.columns[: len(R.COLUMNS)]) == R.COLUMNS
    row = df[df["run_id"] == C.run_id(cfg)].iloc[0]
    assert row["latency_ms_p50"] == 3.25 and row["stage"] == "Q" and row["extra_tuple"] == [1, 2]
    assert row["config"]["model"]["width"] == 0.125
    assert pd.isna(row["not_finite"])
    other = df[df["run_id"] == "other"].iloc[0]
    assert pd.isna(other["latency_ms_p50"]) and pd.isna(other["backbone"])


def test_missing_directory_gives_empty_frame(tmp_path):
    df = R.load_results(tmp_path / "none")
    assert len(df) == 0 and list(df.columns) == R.COLUMNS


def test_concurrent_writers_lose_nothing(tmp_path):
    n = 200
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), tag, n)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = R.load_results(tmp_path)
    assert len(df) == 2 * n and df["record_id"].is_unique
    assert sorted(df.groupby("writer")["i"].apply(sorted).tolist()) == [list(range(n))] * 2
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_wrong_schema_version_names_the_file_and_leaves_it(tmp_path):
    bad = R.append({"run_id": "r", "top1": 1.0}, tmp_path).parent / "old.json"
    text = json.dumps({"schema_version": 999, "run_id": "r"})
    bad.write_text(text)
    with pytest.raises(R.ResultsError, match=r"old\.json.*schema_version 999"):
        R.load_results(tmp_path)
    assert bad.read_text() == text
    with pytest.raises(R.ResultsError, match="schema_version"):
        R.append({"schema_version": 0}, tmp_path)


def test_unreadable_record_names_the_file(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "broken.json").write_text("{not json")
    with pytest.raises(R.ResultsError, match="broken.json"):
        R.load_results(tmp_path)


def test_records_are_never_rewritten(tmp_path):
    R.append({"run_id": "r", "record_id": "fixed", "top1": 1.0}, tmp_path)
    with pytest.raises(R.ResultsError, match="never rewritten"):
        R.append({"run_id": "r", "record_id": "fixed", "top1": 2.0}, tmp_path)
    assert R.load_results(tmp_path)["top1"].tolist() == [1.0]
    assert not math.isnan(R.load_results(tmp_path)["schema_version"].iloc[0])


def test_replace_rewrites_only_the_same_record_id(tmp_path):
    from pqd_lib import results

    first = results.append({"run_id": "r", "record_id": "nb02-P", "top1": 1.0}, tmp_path)
    with pytest.raises(results.ResultsError, match="exists already"):
        results.append({"run_id": "r", "record_id": "nb02-P", "top1": 2.0}, tmp_path)
    again = results.append({"run_id": "r", "record_id": "nb02-P", "top1": 2.0}, tmp_path, replace=True)
    assert again == first
    df = results.load_results(tmp_path)
    assert len(df) == 1 and df["top1"].iloc[0] == 2.0


def test_replace_rewrites_only_the_same_record(tmp_path):
    R.append({"run_id": "r", "record_id": "nb-01", "top1": 1.0}, tmp_path)
    R.append({"run_id": "r", "record_id": "nb-02", "top1": 5.0}, tmp_path)
    R.append({"run_id": "r", "record_id": "nb-01", "top1": 2.0}, tmp_path, replace=True)
    df = R.load_results(tmp_path).sort_values("record_id")
    assert df["top1"].tolist() == [2.0, 5.0]


# --- several machines side by side (issue 17) -----------------------------------------------------
def _copy_tree(src, dst):
    """What a git merge of two results folders does: the union of their files."""
    for path in src.rglob("*.json"):
        target = dst / path.relative_to(src)
        assert not target.exists(), f"{target}: the same path in both folders"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())


def test_two_machines_results_merge_without_loss(tmp_path, monkeypatch):
    cfg = C.preset("smoke", data={"source": "embedded"})
    for machine, top1 in (("lab-a", 90.0), ("laptop-b", 80.0)):
        monkeypatch.setenv("PQD_MACHINE", machine)
        for seed in (0, 1):  # the same run and record ids on both machines
            R.append(R.make_record(cfg, record_id=f"01-baseline-s{seed}", top1=top1 + seed), tmp_path / machine,
                     replace=True)
    merged = tmp_path / "merged"
    _copy_tree(tmp_path / "lab-a", merged)
    _copy_tree(tmp_path / "laptop-b", merged)
    df = R.load_results(merged)
    assert len(df) == 4 and sorted(df["machine"].unique()) == ["lab-a", "laptop-b"]
    assert sorted(R.load_results(merged, machine="lab-a")["top1"]) == [90.0, 91.0]
    assert sorted(R.load_results(merged, machine="laptop-b")["top1"]) == [80.0, 81.0]
    with pytest.raises(R.ResultsError, match="no-such.*lab-a, laptop-b"):
        R.load_results(merged, machine="no-such")


def test_the_machine_is_in_the_record_and_its_path(tmp_path, monkeypatch):
    monkeypatch.delenv("PQD_MACHINE", raising=False)
    rec = R.make_record(None, run_id="r", top1=1.0)
    assert rec["machine"] == R.machine_key(rec)
    assert rec["cpu_capability_class"] in rec["machine"]
    path = R.append(rec, tmp_path)
    assert path.relative_to(tmp_path).parts == (rec["machine"], "r", f"{rec['record_id']}.json")
    monkeypatch.setenv("PQD_MACHINE", "bad/name")
    with pytest.raises(R.ResultsError, match="PQD_MACHINE"):
        R.this_machine()


def test_migration_moves_old_records_keeping_their_content(tmp_path):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "migrate_results_machine.py"
    spec = importlib.util.spec_from_file_location("migrate", script)
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    old = {"schema_version": R.SCHEMA_VERSION, "record_id": "01-x", "run_id": "run", "timestamp": "2026-01-01",
           "hostname": "vm", "cpu_model": "AMD EPYC", "cpu_count": 2, "top1": 50.0}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "01-x.json").write_text(json.dumps(old))
    assert migrate.migrate(tmp_path) == 1 and migrate.migrate(tmp_path) == 0
    (moved,) = tmp_path.rglob("*.json")
    assert moved.relative_to(tmp_path).parts == ("vm-amd-epyc-2c", "run", "01-x.json")
    assert json.loads(moved.read_text()) == {**old, "machine": "vm-amd-epyc-2c"}
    assert not (tmp_path / "run").exists()


def test_same_cpu_name_different_capabilities_are_different_machines(tmp_path):
    """A Zen 4 (AVX-512 VNNI) and an AVX2-only EPYC both report "AMD EPYC, 2 cores": their records must
    not share a machine, and the migration re-keys records named with the first key."""
    import importlib.util
    from pathlib import Path

    base = {"schema_version": R.SCHEMA_VERSION, "run_id": "run", "timestamp": "2026-01-01",
            "hostname": "vm", "cpu_model": "AMD EPYC", "cpu_count": 2, "machine": "vm-amd-epyc-2c"}
    zen4 = {**base, "record_id": "zen4", "isa_avx2": True, "isa_avx512f": True, "isa_avx512_vnni": True}
    avx2 = {**base, "record_id": "avx2", "cpu_capability_class": "x86-avx2"}
    chosen = {**base, "record_id": "mine", "machine": "my-lab"}
    assert R.machine_key(zen4) == "vm-amd-epyc-x86-avx512-vnni-2c"
    assert R.machine_key(avx2) == "vm-amd-epyc-x86-avx2-2c"
    for rec in (zen4, avx2, chosen):
        folder = tmp_path / rec["machine"] / "run"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rec['record_id']}.json").write_text(json.dumps(rec))
    script = Path(__file__).resolve().parents[1] / "scripts" / "migrate_results_machine.py"
    spec = importlib.util.spec_from_file_location("migrate", script)
    migrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migrate)
    assert migrate.migrate(tmp_path) == 2 and migrate.migrate(tmp_path) == 0
    df = R.load_results(tmp_path)
    assert sorted(df["machine"]) == ["my-lab", "vm-amd-epyc-x86-avx2-2c", "vm-amd-epyc-x86-avx512-vnni-2c"]
    assert not (tmp_path / "vm-amd-epyc-2c").exists()


def test_comparisons_stay_within_one_machine(tmp_path, monkeypatch):
    from pqd_lib import claims, report

    cfg = C.preset("smoke", data={"source": "embedded"})
    for machine in ("lab-a", "laptop-b"):
        monkeypatch.setenv("PQD_MACHINE", machine)
        R.append(R.make_record(cfg, record_id="01-baseline", notebook="01", kind="measured", top1=50.0), tmp_path)
    df = R.load_results(tmp_path)
    with pytest.raises(ValueError, match="2 machines .*lab-a, laptop-b"):
        claims.select(df)
    assert set(claims.select(df, machine="lab-a")["machine"]) == {"lab-a"}
    origin = report.provenance(df)
    assert sorted(origin["machine"]) == ["lab-a", "laptop-b"]


def test_staged_records_are_not_loaded_and_a_write_error_names_the_file(tmp_path):
    R.append({"run_id": "r", "record_id": "visible", "top1": 1.0}, tmp_path)
    R.append({"run_id": "r", "record_id": "staged", "top1": 2.0}, tmp_path / ".staging" / "run" / "05_pipeline")
    assert R.load_results(tmp_path)["record_id"].tolist() == ["visible"]
    blocked = tmp_path / "full"
    blocked.write_text("a file where the store's folder should be")
    with pytest.raises(R.ResultsError) as err:
        R.append({"run_id": "r", "record_id": "x", "top1": 1.0}, blocked)
    assert "x.json" in str(err.value) and "cannot write" in str(err.value)
