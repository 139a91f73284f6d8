"""The papermill batch runner: planning errors, failures listed, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from pqd_lib import batch
from pqd_lib import config as C

# A stand-in notebook: it writes one record per seed under a deterministic name (as the real
# notebooks do through pqd_lib.results), then optionally sleeps so a test can kill it mid-run.
FAKE_SOURCE = [
    ("code", 'backbone = "resnet18"\ndataset = "cifar10"\npreset = "smoke"\nseed = 0\n'
             'data_source = "embedded"\ndata_root = None\nresults_dir = "results"\ncache_dir = None\nrun_id = "x"',
     {"tags": ["parameters"]}),
    ("code", "import json, os, pathlib, time\n"
             "p = pathlib.Path(results_dir) / f'{run_id}-{NB}.json'\n"
             "tmp = p.with_suffix('.tmp'); tmp.write_text(json.dumps({'run_id': run_id, 'nb': NB, 'seed': seed}))\n"
             "os.replace(tmp, p)\n"
             "time.sleep(float(os.environ.get('FAKE_SLEEP', '0')))\n"
             "assert os.environ.get('FAKE_FAIL') != NB, 'asked to fail'", {}),
]


def _make_notebooks(folder: Path) -> Path:
    folder.mkdir()
    for nb_name in ("01_first.ipynb", "02_second.ipynb"):
        nb = nbformat.v4.new_notebook()
        for kind, src, meta in FAKE_SOURCE:
            prefix = "" if meta else f"NB = {nb_name[:2]!r}\n"
            nb.cells.append(nbformat.v4.new_code_cell(prefix + src, metadata=meta))
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / nb_name)
    return folder


def _batch_cmd(tmp_path: Path, seeds=("0", "1")) -> list[str]:
    return [sys.executable, "-m", "pqd_lib.cli", "batch", "--backbone", "resnet18", "--dataset", "cifar10",
            "--preset", "smoke", "--source", "embedded", "--seeds", *seeds, "--no-progress",
            "--results-dir", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]


def _env(notebooks: Path, **extra) -> dict:
    return {**os.environ, "PQD_NOTEBOOKS": str(notebooks), "PYTHONUNBUFFERED": "1", **extra}


def test_plan_expands_all_cells_and_rejects_bad_input(tmp_path):
    runs = batch.plan("all", "all", "smoke", [0], results_dir=tmp_path / "r", runs_dir=tmp_path / "runs")
    assert {(r.backbone, r.dataset) for r in runs} == {(b, d) for b in batch.BACKBONES for d in batch.DATASETS}
    assert len({r.run_id for r in runs}) == 6
    with pytest.raises(batch.BatchError, match="'resnet50'"):
        batch.plan("resnet50", "cifar10", "smoke", [0], results_dir=tmp_path / "r", runs_dir=tmp_path / "runs")
    with pytest.raises(batch.BatchError, match="'huge'"):
        batch.plan("resnet18", "cifar10", "huge", [0], results_dir=tmp_path / "r", runs_dir=tmp_path / "runs")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: use a path under a file instead
        locked = tmp_path / "a-file"
        locked.write_text("")
        locked = locked / "results"
    with pytest.raises(batch.BatchError, match="not writable"):
        batch.plan("resnet18", "cifar10", "smoke", [0], results_dir=locked, runs_dir=tmp_path / "runs")
    with pytest.raises(C.ConfigError, match="data.source"):
        batch.plan("resnet18", "cifar10", "smoke", [0], data_source="ftp", results_dir=tmp_path / "r",
                   runs_dir=tmp_path / "runs")


def test_relative_paths_are_resolved_where_the_batch_starts(tmp_path, monkeypatch):
    # Notebooks run inside notebooks/: a relative --root must still mean the caller's folder.
    tree = tmp_path / "data" / "tree"
    tree.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    (run,) = batch.plan("resnet18", "cifar10", "smoke", [0], data_source="folder", data_root="data/tree",
                        cache_dir="cache", results_dir="r", runs_dir="runs")
    assert run.parameters["data_root"] == str(tree)
    assert run.parameters["cache_dir"] == str(tmp_path / "cache")
    assert run.parameters["results_dir"] == str(tmp_path / "r")
    with pytest.raises(batch.BatchError, match="--root: .*missing is not a directory"):
        batch.plan("resnet18", "cifar10", "smoke", [0], data_source="folder", data_root="missing",
                   results_dir="r", runs_dir="runs")


def test_wrong_parameter_type_is_refused_before_any_notebook(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    runs = batch.plan("resnet18", "cifar10", "smoke", [0], results_dir=tmp_path / "r", runs_dir=tmp_path / "runs")
    bad = [batch.Run(**{**r.__dict__, "parameters": {**r.parameters, "seed": "zero"}}) for r in runs]
    with pytest.raises(batch.BatchError, match="seed='zero'.*int"):
        batch.run_batch(bad, ["01_first.ipynb"], notebooks_dir=notebooks, progress=False, log=lambda *_: None)
    assert not list((tmp_path / "runs").rglob("*.ipynb"))


def test_notebook_selection(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    assert batch.notebook_names(notebooks, "02") == ["02_second.ipynb"]
    assert batch.notebook_names(notebooks, "01-02") == ["01_first.ipynb", "02_second.ipynb"]
    with pytest.raises(batch.BatchError, match="matches none"):
        batch.notebook_names(notebooks, "05-07")


def test_failures_are_listed_and_the_batch_goes_on(tmp_path):
    # One seed: the batch going on past a failure is its next notebook running (each kernel start costs seconds).
    notebooks = _make_notebooks(tmp_path / "nb")
    proc = subprocess.run(_batch_cmd(tmp_path, seeds=("0",)), env=_env(notebooks, FAKE_FAIL="01"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stdout.count("FAILED") == 1 and "asked to fail" in proc.stdout
    assert "1 executed, 0 already done, 1 failed" in proc.stdout
    failed = [line.split("FAILED", 1)[1].strip() for line in proc.stdout.splitlines() if "FAILED" in line]
    assert all(Path(p).is_file() and p.endswith("01_first.ipynb") for p in failed)  # papermill kept the outputs
    # the failed notebooks are redone, the finished ones skipped
    again = subprocess.run(_batch_cmd(tmp_path, seeds=("0",)), env=_env(notebooks), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "1 executed, 1 already done, 0 failed" in again.stdout


def test_sigkill_mid_batch_resumes_with_no_record_lost_or_duplicated(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    results = tmp_path / "results"
    proc = subprocess.Popen(_batch_cmd(tmp_path), env=_env(notebooks, FAKE_SLEEP="60"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(results.rglob("*.json")):
        time.sleep(0.2)
    assert list(results.rglob("*.json")), "the first notebook never wrote its record"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, with no chance to clean up
    proc.wait()
    assert not list((tmp_path / "runs").rglob("*.done"))
    # The killed notebook's record stays staged: nothing is visible in the store.
    assert not list(results.glob("*.json")) and list(results.glob(f"{batch.STAGING}/*/*/*.json"))

    done = subprocess.run(_batch_cmd(tmp_path), env=_env(notebooks), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(p.read_text()) for p in results.glob("*.json")]
    keys = sorted((str(r["seed"]), r["nb"]) for r in records)
    assert keys == [("0", "01"), ("0", "02"), ("1", "01"), ("1", "02")]
    assert len(list((tmp_path / "runs").rglob("*.done"))) == 4
    assert not list(results.glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--seeds", "-1"], "--seeds: -1 is not allowed"),
    (["--seeds", "0", "--notebooks", "09"], "--notebooks: '09' matches none"),
    (["--seeds", "0", "--preset", "huge"], "huge"),
])
def test_bad_input_creates_nothing(tmp_path, args, message):
    notebooks = _make_notebooks(tmp_path / "nb")
    cmd = [a for a in _batch_cmd(tmp_path, seeds=()) if a != "--seeds"]
    if "--preset" in args:
        cmd[cmd.index("--preset") + 1:cmd.index("--preset") + 2] = []
        cmd.remove("--preset")
    proc = subprocess.run(cmd + args, env=_env(notebooks), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_failed_notebook_publishes_no_record(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    proc = subprocess.run(_batch_cmd(tmp_path, seeds=("0",)), env=_env(notebooks, FAKE_FAIL="02"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    results = tmp_path / "results"
    assert [json.loads(p.read_text())["nb"] for p in results.glob("*.json")] == ["01"]  # 02 wrote, then failed
    staged = list(results.glob(f"{batch.STAGING}/*/02_second/*.json"))  # where load_results never looks
    assert [json.loads(p.read_text())["nb"] for p in staged] == ["02"]


def test_a_second_batch_of_the_same_run_skips_it(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    (run,) = batch.plan("resnet18", "cifar10", "smoke", [0], results_dir=tmp_path / "results",
                        runs_dir=tmp_path / "runs")
    lines = []
    with batch._run_lock(run.folder) as held:  # another batch is executing this run
        assert held
        result = batch.run_batch([run], ["01_first.ipynb"], notebooks_dir=notebooks, progress=False,
                                 log=lines.append)
    assert result.busy == [run.run_id] and not result.ok and not result.executed
    assert not (run.folder / "01_first.ipynb.done").exists() and "BUSY" in "\n".join(lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_batch_ends_the_kernel_it_started(tmp_path, sig):
    # SIGTERM: the batch shuts its kernel down; SIGKILL: the kernel's parent poller (JPY_PARENT_PID) ends it.
    notebooks = _make_notebooks(tmp_path / "nb")
    proc = subprocess.Popen(_batch_cmd(tmp_path, seeds=("0",)), env=_env(notebooks, FAKE_SLEEP="60"),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "results").rglob("*.json")):
        time.sleep(0.2)
    kernels = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert kernels, "the batch started no kernel"
    os.kill(proc.pid, sig)  # the batch alone: the kernel runs in a session of its own
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{k}").exists() for k in kernels):
        time.sleep(0.2)
    alive = [k for k in kernels if Path(f"/proc/{k}").exists()]
    for k in alive:
        os.kill(int(k), signal.SIGKILL)  # do not leave it behind for the next test
    assert not alive, f"kernel(s) {alive} outlived the batch"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_commit_makes_one_commit_per_seed_and_a_fresh_clone_continues_from_it(tmp_path):
    # The repository layout of a real checkout: records committed, the runs folder git-ignored.
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    (repo / ".gitignore").write_text("/reports/runs/\n")
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.org"}
    _git(repo, "add", ".gitignore")
    subprocess.run(["git", "-C", str(repo), "commit", "--quiet", "-m", "start"], env={**os.environ, **identity},
                   check=True)
    notebooks = _make_notebooks(tmp_path / "nb")

    def run_in(root: Path, fail: str = "") -> subprocess.CompletedProcess:
        cmd = _batch_cmd(root / "reports")[:-4] + ["--results-dir", str(root / "reports" / "results"),
                                                    "--runs-dir", str(root / "reports" / "runs"), "--commit"]
        return subprocess.run(cmd, env=_env(notebooks, FAKE_FAIL=fail, **identity), capture_output=True, text=True,
                              timeout=300)

    first = run_in(repo, fail="02")  # seed 0 and 1: notebook 01 succeeds, 02 fails
    assert first.returncode == 1 and first.stdout.count("COMMIT") == 2, first.stdout + first.stderr
    log = _git(repo, "log", "--format=%s").splitlines()
    assert len(log) == 3 and all("1/2 notebooks done" in line for line in log[:2])
    committed = _git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert any(p.startswith("reports/results/") and p.endswith(".json") for p in committed)
    assert any(p.startswith("reports/runs/") and p.endswith("01_first.ipynb.done") for p in committed)
    assert not any(batch.STAGING in p for p in committed)  # the failed notebook's staged record is not a result

    clone = tmp_path / "clone"  # a later session: a fresh checkout holding only what was committed
    _git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    second = run_in(clone)
    assert second.returncode == 0 and "2 executed, 2 already done, 0 failed" in second.stdout, second.stdout
    assert _git(clone, "log", "--format=%s").count("2/2 notebooks done") == 2
    runs = batch.plan("resnet18", "cifar10", "smoke", [0, 1], data_source="embedded",
                      results_dir=clone / "reports" / "results", runs_dir=clone / "reports" / "runs")
    assert not any(batch.commit_run(run, ["01_first.ipynb", "02_second.ipynb"], log=print) for run in runs)
    assert len(_git(clone, "log", "--format=%s").splitlines()) == 5  # nothing new: no empty commit


def test_commit_outside_a_work_tree_is_refused_before_anything_runs(tmp_path):
    notebooks = _make_notebooks(tmp_path / "nb")
    proc = subprocess.run(_batch_cmd(tmp_path) + ["--commit"], env=_env(notebooks, GIT_CEILING_DIRECTORIES=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--commit:" in proc.stderr and "not inside a git work tree" in proc.stderr
    assert not list((tmp_path / "runs").rglob("*.done"))


def test_backbone_takes_a_comma_separated_list(tmp_path):
    runs = batch.plan("wrn28_10,vgg16_bn", "cifar10", "smoke", [0], results_dir=tmp_path / "r",
                      runs_dir=tmp_path / "runs")
    assert [r.backbone for r in runs] == ["wrn28_10", "vgg16_bn"]
    with pytest.raises(batch.BatchError, match="'vgg16'"):
        batch.plan("wrn28_10,vgg16", "cifar10", "smoke", [0], results_dir=tmp_path / "r", runs_dir=tmp_path / "runs")


def test_seed_0s_executed_notebooks_are_kept_under_reports_when_small(tmp_path, monkeypatch):
    notebooks = _make_notebooks(tmp_path / "nb")
    runs = batch.plan("resnet18", "cifar10", "smoke", [0, 1], results_dir=tmp_path / "results",
                      runs_dir=tmp_path / "runs")
    lines = []
    monkeypatch.setattr(batch, "MAX_KEPT_NOTEBOOK_BYTES", 10**9)
    batch.run_batch(runs, ["01_first.ipynb"], notebooks_dir=notebooks, progress=False, log=lines.append,
                    keep_notebooks=tmp_path / "reports")
    kept = batch.kept_notebook_path(runs[0], "01_first.ipynb", tmp_path / "reports")
    assert kept == tmp_path / "reports" / "resnet18-cifar10-smoke" / "notebooks" / "01_first.ipynb"
    assert kept.read_bytes() == (runs[0].folder / "01_first.ipynb").read_bytes()  # the executed one, outputs included
    assert [p.name for p in kept.parent.iterdir()] == ["01_first.ipynb"]  # seed 1's is not kept
    monkeypatch.setattr(batch, "MAX_KEPT_NOTEBOOK_BYTES", 10)
    batch.run_batch(runs[:1], ["02_second.ipynb"], notebooks_dir=notebooks, progress=False, log=lines.append,
                    keep_notebooks=tmp_path / "reports")
    assert not (kept.parent / "02_second.ipynb").exists() and "NOT KEPT 02_second.ipynb" in "\n".join(lines)
