"""Batch runs of the numbered notebooks through papermill, resumable.

    pqd batch --backbone resnet18 --dataset cifar10 --preset mini --seeds 0 1 2

One *run* is one backbone x dataset x preset x seed; it gets a folder
``reports/runs/<run id>/`` holding the executed notebooks. A notebook counts as done only
when a ``<notebook>.done`` marker is written after papermill returns, so a batch that was
killed (even by SIGKILL) redoes exactly the notebook it was in and skips the finished ones.
Records a notebook appends carry deterministic ids (see :mod:`pqd_lib.results`), so redoing a
notebook overwrites its own records instead of duplicating them.

A notebook's records become visible only when it succeeds: it writes them into a staging
folder ``<results>/.staging/<run id>/<notebook>/`` (hidden from :func:`pqd_lib.results.load_results`),
and they are moved into the store (the same relative paths) after papermill returns. A failed or
killed notebook leaves its records staged, never counted; redoing it clears them first.

With ``--commit`` each run's published records and its ``.done`` markers (which hold each notebook's
wall time) are committed to git as soon as the run's notebooks have finished, one commit per
backbone x dataset x seed: a session that ends mid-grid leaves every finished seed in the history, and
a later session on a fresh clone skips what the committed markers say is done.

One batch at a time per run: a run's folder holds a lock (``flock`` on ``.lock``, released by the
kernel even when the batch is killed) while its notebooks execute; a second batch of the same run
skips it and says so. A batch ended by SIGTERM or Ctrl-C shuts down the kernel it started (a
SIGKILLed one cannot: its kernel notices the lost parent within a second, ipykernel's parent poller).

Failures do not stop the batch: they are listed at the end with the path of the executed
notebook, in which papermill keeps the outputs up to the failing cell and the error.
Bad input (unknown backbone, dataset, preset or notebook, a negative seed, parameters of the wrong
type, an unwritable results directory) is reported in one line before anything is created.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

try:
    import fcntl  # POSIX: the per-run lock
except ImportError:  # Windows: runs are not locked
    fcntl = None

from . import backbones as backbones_mod
from . import config as config_mod
from ._atomic import atomic_write_text

__all__ = ["BatchError", "Run", "BatchResult", "NOTEBOOKS_DIR", "plan", "run_batch", "notebook_names", "git_root",
           "commit_run"]

BACKBONES = backbones_mod.BACKBONES
DATASETS = ("cifar10", "cifar100")
#: The hidden folder of the results store where a notebook's records wait until it succeeds.
STAGING = ".staging"
NOTEBOOKS_DIR = Path(os.environ.get("PQD_NOTEBOOKS", Path(__file__).resolve().parents[1] / "notebooks"))


class BatchError(ValueError):
    """Bad input to a batch, reported before any notebook runs."""


@dataclass(frozen=True)
class Run:
    """One backbone x dataset x preset x seed, and where its executed notebooks go."""

    run_id: str
    backbone: str
    dataset: str
    preset: str
    seed: int
    parameters: dict[str, Any]
    folder: Path


@dataclass
class BatchResult:
    """What a batch did: notebooks executed, skipped (already done) and failed (with their paths)."""

    executed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    #: Runs another batch was executing (their lock was held): not touched by this batch.
    busy: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no notebook failed and no run was left to another batch."""
        return not self.failed and not self.busy


def notebook_names(notebooks_dir: Path = NOTEBOOKS_DIR, select: str | None = None) -> list[str]:
    """The numbered notebooks (``NN_name.ipynb``), optionally a range like ``"01-05"`` or a list ``"01,07"``."""
    names = sorted(p.name for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not names:
        raise BatchError(f"{notebooks_dir}: no numbered notebooks (NN_name.ipynb) found")
    if not select:
        return names
    wanted: set[str] = set()
    for part in select.split(","):
        lo, _, hi = part.strip().partition("-")
        hi = hi or lo
        if not (lo.isdigit() and hi.isdigit()):
            raise BatchError(f"--notebooks: {select!r} is not a range like 01-05 or a list like 01,07")
        wanted |= {f"{i:02d}" for i in range(int(lo), int(hi) + 1)}
    chosen = [n for n in names if n[:2] in wanted]
    if not chosen:
        raise BatchError(f"--notebooks: {select!r} matches none of {', '.join(names)}")
    return chosen


def _expand(value: str, allowed: Sequence[str], what: str) -> list[str]:
    """'all' -> every allowed value; else one value or a comma-separated list (e.g. ``wrn28_10,vgg16_bn``)."""
    values = list(allowed) if value == "all" else list(dict.fromkeys(v.strip() for v in value.split(",")))
    for v in values:
        if v not in allowed:
            raise BatchError(f"--{what}: {v!r} is not known; choose one of {', '.join(allowed)} or 'all'")
    return values


def _check_writable(directory: Path, what: str) -> None:
    """Refuse a folder that could not be created or written, without creating anything."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "not a directory" if not existing.is_dir() else "no write permission"
        raise BatchError(f"{what} {directory} is not writable ({existing}: {why}); choose another with "
                         f"--{what.replace(' ', '-')}")


def _notebook_parameters(path: Path) -> dict[str, type | None]:
    """The notebook's parameters and the type of each default value (None: any type).

    Read from the ``parameters`` cell with :func:`ast.literal_eval` on each assignment, so the
    notebook's code is never executed to learn them.
    """
    nb = json.loads(Path(path).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise BatchError(f"{path.name}: no cell tagged 'parameters'; papermill needs one")
    declared: dict[str, type | None] = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(target, ast.Name):
                try:
                    default = ast.literal_eval(node.value)
                except ValueError:
                    default = None
                declared[target.id] = None if default is None else type(default)
    return declared


def _check_types(notebook: Path, declared: dict[str, type | None], given: dict[str, Any]) -> dict[str, Any]:
    """Keep the parameters this notebook declares; refuse values whose type contradicts its default's."""
    passed = {}
    for name, value in given.items():
        if name not in declared:
            continue
        expected = declared[name]
        compatible = (value is None or expected is None or isinstance(value, expected)
                      or (expected is float and isinstance(value, int))
                      or (expected in (list, tuple) and isinstance(value, (list, tuple))))
        if not compatible or (expected is int and isinstance(value, bool)):
            raise BatchError(f"{notebook.name}: parameter {name}={value!r} is a {type(value).__name__}, "
                             f"the notebook declares {expected.__name__}")
        passed[name] = value
    return passed


def plan(backbone: str, dataset: str, preset: str, seeds: Sequence[int], *, data_source: str | None = None,
         data_root: str | None = None, results_dir: str | os.PathLike = config_mod.DEFAULT_RESULTS_DIR,
         runs_dir: str | os.PathLike = "reports/runs", cache_dir: str | None = None) -> list[Run]:
    """Resolve and validate every run of a batch (no notebook runs); raise BatchError/ConfigError on bad input."""
    backbones = _expand(backbone, BACKBONES, "backbone")
    datasets = _expand(dataset, DATASETS, "dataset")
    if preset not in config_mod.PRESETS:
        raise BatchError(f"--preset: {preset!r} does not exist; choose one of {', '.join(config_mod.PRESETS)}")
    if not seeds:
        raise BatchError("--seeds: give at least one seed")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise BatchError(f"--seeds: {negative[0]} is not allowed; seeds are integers >= 0")
    results_dir, runs_dir = Path(results_dir).resolve(), Path(runs_dir).resolve()
    # Notebooks run with the notebooks folder as working directory: relative paths given here
    # must mean what they meant where the batch was started.
    data_root = str(Path(data_root).expanduser().resolve()) if data_root else None
    cache_dir = str(Path(cache_dir).expanduser().resolve()) if cache_dir else None
    if data_source == "folder" and data_root and not Path(data_root).is_dir():
        raise BatchError(f"--root: {data_root} is not a directory; the folder source needs an image-folder "
                         f"tree train/<class>/*, test/<class>/* there")
    runs = []
    for bb, ds, seed in itertools.product(backbones, datasets, seeds):
        data = {k: v for k, v in (("source", data_source), ("root", data_root)) if v is not None}
        cfg = config_mod.cell(bb, ds, preset=preset, seed=seed, data=data, cache_dir=cache_dir)
        run_id = config_mod.run_id(cfg, preset)
        params = {"backbone": bb, "dataset": ds, "preset": preset, "seed": seed,
                  "data_source": cfg.data.source, "data_root": cfg.data.root, "results_dir": str(results_dir),
                  "cache_dir": cache_dir, "run_id": run_id}
        runs.append(Run(run_id, bb, ds, preset, seed, params, runs_dir / run_id))
    # Last: every value is valid by now, and nothing has been created.
    _check_writable(results_dir, "results dir")
    _check_writable(runs_dir, "runs dir")
    return runs


def _staging(run: Run, notebook: str) -> Path:
    """Where `notebook` of `run` writes its records until it succeeds (hidden: its name starts with '.')."""
    return Path(run.parameters["results_dir"]) / STAGING / run.run_id / Path(notebook).stem


def _publish(staging: Path, results_dir: Path) -> int:
    """Move every staged file into the store at the same relative path (atomic per file); return how many."""
    moved = 0
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and not p.name.startswith(".")):
        target = results_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved += 1
    shutil.rmtree(staging, ignore_errors=True)
    return moved


@contextlib.contextmanager
def _run_lock(folder: Path) -> Iterator[bool]:
    """Hold the run's lock while the block runs; yield False (not held) when another batch holds it.

    ``flock`` is released by the kernel when the holder exits, even by SIGKILL, so a stale lock
    never blocks a resumed batch. Where ``fcntl`` does not exist (Windows) runs are not locked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while notebooks run, so papermill shuts the kernel down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_batch(runs: Sequence[Run], notebooks: Sequence[str], *, notebooks_dir: Path = NOTEBOOKS_DIR,
              kernel_name: str = "python3", progress: bool = True, log=print,
              after_run: Callable[[Run, Sequence[str]], None] | None = None) -> BatchResult:
    """Execute `notebooks` for every run with papermill; skip what is done, list what failed.

    `after_run(run, notebooks)` is called once per run after its notebooks (done, skipped or failed),
    while the run's lock is still held, e.g. :func:`commit_run`.
    """
    import papermill  # the [notebooks] extra: `pip install pqd` alone has no papermill

    notebooks_dir = Path(notebooks_dir)
    declared = {nb: _notebook_parameters(notebooks_dir / nb) for nb in notebooks}
    jobs = [(run, nb, _check_types(notebooks_dir / nb, declared[nb], run.parameters))
            for run in runs for nb in notebooks]  # every type checked before the first notebook starts
    result = BatchResult()
    bar = tqdm(total=len(jobs), desc="pqd batch", unit="notebook", disable=not progress, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with _terminate_as_interrupt():
        for run, run_jobs in itertools.groupby(jobs, key=lambda job: job[0]):
            run_jobs = list(run_jobs)
            with _run_lock(run.folder) as held:
                if not held:
                    result.busy.append(run.run_id)
                    bar.update(len(run_jobs))
                    continue
                for _, nb, params in run_jobs:
                    _execute(papermill, run, nb, params, notebooks_dir, kernel_name, result, bar)
                    bar.update()
                if after_run is not None:
                    after_run(run, [nb for _, nb, _ in run_jobs])
    bar.close()
    log(f"pqd batch: {len(result.executed)} executed, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed")
    for path, reason in result.failed:
        log(f"  FAILED {path}\n         {reason}")
    for run_id in result.busy:
        log(f"  BUSY   {run_id}: another batch is executing this run (its lock is held); run again later")
    return result


def _execute(papermill: Any, run: Run, nb: str, params: dict[str, Any], notebooks_dir: Path, kernel_name: str,
             result: BatchResult, bar: Any) -> None:
    """Execute one notebook of `run` unless done; publish its staged records only when it succeeds."""
    out = run.folder / nb
    marker = run.folder / f"{nb}.done"
    bar.set_postfix_str(f"{run.run_id} {nb}", refresh=False)
    if marker.is_file():
        result.skipped.append(out)
        return
    staging = _staging(run, nb)
    shutil.rmtree(staging, ignore_errors=True)  # records of an earlier failed or killed attempt
    staging.mkdir(parents=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(notebooks_dir / nb), str(out), parameters={**params, "results_dir": str(staging)},
                                   kernel_name=kernel_name, progress_bar=False, cwd=str(notebooks_dir))
    except Exception as exc:  # papermill raises its own error types and kernel errors alike
        reason = f"{getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', str(exc))}"
        result.failed.append((out, reason.splitlines()[0][:300]))
        return
    published = _publish(staging, Path(run.parameters["results_dir"]))
    done = {"run_id": run.run_id, "notebook": nb, "seconds": round(time.perf_counter() - start, 2),
            "records": published, "parameters": params}
    atomic_write_text(marker, json.dumps(done, indent=1))
    result.executed.append(out)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def git_root(path: str | os.PathLike) -> Path:
    """The work tree holding `path` (or its nearest existing parent); BatchError when there is none."""
    existing = Path(path).resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        found = _git(existing, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        raise BatchError("--commit: git is not installed; install it or run without --commit") from None
    if found.returncode != 0:
        raise BatchError(f"--commit: {path} is not inside a git work tree; run from a clone or without --commit")
    return Path(found.stdout.strip())


def commit_run(run: Run, notebooks: Sequence[str], *, log=print) -> bool:
    """Commit `run`'s records and ``.done`` markers to git (one commit per run); return True when one was made.

    Adds the results store (its hidden staging folder left out: a failed notebook's records are not
    results) and the run's markers (their folder is git-ignored, so they are added by name: they are
    what lets a later session skip the finished notebooks, and they hold each notebook's wall time).
    The commit touches only those paths, whatever else is staged. A git failure is logged in one line
    and the batch goes on: the records stay on disk for the next commit.
    """
    results_dir = Path(run.parameters["results_dir"])
    repo = git_root(results_dir)
    markers = [run.folder / f"{nb}.done" for nb in notebooks if (run.folder / f"{nb}.done").is_file()]
    paths = [str(p) for p in (results_dir, *markers) if p.exists()]
    if not paths:
        return False
    staged = _git(repo, "add", "--force", "--", *paths, f":(exclude){results_dir / STAGING}")
    if staged.returncode == 0 and _git(repo, "diff", "--cached", "--quiet", "--", *paths).returncode == 0:
        return False  # nothing new since the last commit (e.g. every notebook was already done)
    seconds = {m.name.removesuffix(".done"): json.loads(m.read_text()).get("seconds", 0.0) for m in markers}
    body = "\n".join(f"{nb}: {s / 60:.1f} min" for nb, s in seconds.items())
    title = (f"records: {run.run_id}, {len(markers)}/{len(notebooks)} notebooks done "
             f"({sum(seconds.values()) / 60:.0f} min of notebook time)")
    made = staged if staged.returncode != 0 else _git(repo, "commit", "--quiet", "-m", title, "-m", body, "--", *paths)
    if made.returncode != 0:
        log(f"  GIT    {run.run_id}: not committed ({(made.stderr or made.stdout).strip().splitlines()[-1:]}); "
            "the records stay on disk")
        return False
    log(f"  COMMIT {run.run_id}: {title}")
    return True
