"""The rounds protocol: latency comparisons that survive a shared machine.

Timing one model per window, one after another, turns every change of the machine's state (another
job starting, a frequency step, a noisy neighbour VM) into a difference between models: three
identical ResNet-18s measured 25.2 / 29.7 / 28.4 ms that way on a loaded 2-core VM. This protocol
makes the machine's state cancel instead, after pyperf (calibrated blocks, many short samples) and
MLPerf (a stated protocol, every parameter recorded). All fields come from
:class:`~pqd_lib.config.MeasureConfig`:

1. **One process per model** (``python -m pqd_lib.measure.rounds --worker``), started fresh and
   kept alive across rounds, fed commands over a pipe. Kept alive rather than re-spawned per
   round: loading, ``torch.compile``/ONNX Runtime/OpenVINO compilation and warm-up cost 1-60 s per
   full-width model, which 15 rounds x every model would repeat; what a fresh process varies
   (memory layout, the core it lands on) is sampled *between* models instead -- every model has its
   own process -- and the identical-models spread reported beside each comparison measures exactly
   that effect. The thread environment (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) is set before the
   interpreter starts, so before torch is imported; with ``pin_cores`` the process is pinned
   (``os.sched_setaffinity``, inherited from the moment it starts) to ``threads`` cores -- 1-thread
   runs to one core, the same core for every model.
2. **Load and calibrate**: every worker loads its model (in parallel, untimed; the compile time is
   recorded as ``compile_s``), then, one at a time, runs ``warmup`` calls and calibrates how many
   calls make one block of ``block_seconds``.
3. **Rounds** [``rounds=15``]: each round times one block of every model, in an order rotated by
   one each round (round r starts with model r), between two blocks of a fixed **reference** model
   (first and last in the round). A model's value in a round is its block's median call time; its
   **relative latency** in the round is that / the geometric mean of the round's two reference
   blocks, so whatever the machine did during the round divides out.
4. **Contention**: around every block the parent reads ``/proc/stat`` (busy and steal time of all
   CPUs) and the worker's own CPU time (``/proc/<pid>/stat``); a block during which other processes
   used more than ``contention_cores`` cores, or steal exceeded 2 %, is marked, and so is a round
   whose two reference blocks differ by more than ``canary_drift``. A marked round is re-run, up to
   ``max_reruns`` extra rounds per comparison. The statistics use the unmarked rounds when at least
   ``max(5, rounds // 2)`` exist, else every round, and say so (``rounds_used``,
   ``rounds_marked``, ``contended``).
5. **Report** per model: ``relative_to_reference`` = median over rounds of the relative latency,
   with a 95 % percentile-bootstrap CI over rounds (``relative_ci_low``/``_high``); the absolute
   ``latency_ms_p50``/``p90`` of all its timed calls in the used rounds; the reference's own p50.
   Relative latencies are comparable within one run on a loaded machine; absolute ones are not.

:func:`compare` runs one comparison per (threads, batch size); :func:`latency_phase` measures each
distinct deploy signature of a set of models once and hands the record to every model sharing it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MeasureConfig
from ..deploy import model_form, save_artifact
from ..models import build
from ..hardware import hardware_info
from .latency import child_env, error_records
from .proxies import weight_sparsity
from .runtimes import check_runtime, default_runtime, prepare
from .timing import bootstrap_ci, calibrate_block, check_positive, resolve_threads, spread

__all__ = ["Candidate", "compare", "identical_spread", "deploy_signature", "latency_phase", "cpu_snapshot",
           "cores_for", "main"]

_STEAL_LIMIT = 0.02


@dataclass(frozen=True)
class Candidate:
    """One model of a comparison: a saved artifact (pqd deploy file or ONNX) and the runtime that runs it."""

    label: str
    source: Path
    runtime: str = "torch-eager"
    form: str | None = None
    # Extra plain fields copied into this model's records (e.g. width, order, sparsity target).
    fields: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# The machine's state: /proc/stat and a process's own CPU time
# ---------------------------------------------------------------------------
def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy, steal, total) seconds of all CPUs since boot from ``/proc/stat``; None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    ticks = [int(v) for v in parts[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already counted in user/nice]
    user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def _process_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (``/proc/<pid>/stat``); None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields_ = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def cores_for(threads: int, allowed: Sequence[int] | None = None) -> list[int] | None:
    """The cores a `threads`-thread run is pinned to: the last `threads` allowed cores; None = no pinning.

    The last ones, because the first core takes most interrupts on common Linux set-ups; None when
    `threads` covers every allowed core (nothing to choose) or exceeds them.
    """
    if allowed is None:
        allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    allowed = sorted(allowed)
    if not allowed or threads >= len(allowed):
        return None
    return allowed[-threads:]


# ---------------------------------------------------------------------------
# Workers: a fresh process per model (or, for tests, this process)
# ---------------------------------------------------------------------------
class _Worker:
    """One model in its own process, driven over stdin/stdout JSON lines."""

    def __init__(self, candidate: Candidate, *, threads: int, batch_size: int, input_shape: tuple[int, ...],
                 cores: list[int] | None, trusted: bool = False, **_: Any) -> None:
        self.candidate = candidate
        cmd = [sys.executable, "-m", "pqd_lib.measure.rounds", "--worker"]
        preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        # stderr to a file, not a pipe: a worker that warns a lot would block on a full pipe nobody reads.
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=child_env(threads), preexec_fn=preexec)
        self.pid = self.proc.pid
        self._send({"load": str(candidate.source), "runtime": candidate.runtime, "form": candidate.form,
                    "threads": threads, "batch_size": batch_size, "input_shape": list(input_shape),
                    "trusted": trusted})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        """The worker's next answer; an ``error`` answer when it died (with the end of its stderr)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_TAG):
                return json.loads(line[len(_TAG):])
        self.proc.wait()
        self.stderr.seek(0)
        tail = " | ".join(self.stderr.read().strip().splitlines()[-3:])[-400:]
        return {"error": f"latency worker exited with code {self.proc.returncode}: {tail}"}

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            self._send(message)
        except (BrokenPipeError, OSError):
            pass  # the reply says why
        return self.reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send({"quit": True})
                self.proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()


class _LocalWorker:
    """The same commands answered in this process (``isolate=False``: tests, quick looks)."""

    def __init__(self, candidate: Candidate, *, threads: int, batch_size: int, input_shape: tuple[int, ...],
                 timer: Callable[[], float] = time.perf_counter, **_: Any) -> None:
        self.candidate, self.pid, self.timer = candidate, os.getpid(), timer
        self.state = _WorkerState(timer)
        self._pending = self.state.handle({"load": candidate.source, "runtime": candidate.runtime,
                                           "form": candidate.form, "threads": threads, "batch_size": batch_size,
                                           "input_shape": list(input_shape), "trusted": False})

    def reply(self) -> dict[str, Any]:
        return self._pending

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.state.handle(message)

    def close(self) -> None:
        self.state.close()


class _WorkerState:
    """What a worker process does with each command; also run in-process by :class:`_LocalWorker`."""

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer
        self.call: Callable[[], Any] | None = None
        self.calls_per_block = 1
        self.threads_before: int | None = None

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            if "load" in message:
                return self._load(message)
            if "calibrate" in message:
                return self._calibrate(message)
            if "block" in message:
                return self._block()
        except Exception as exc:  # reported as the model's error record, never a crashed comparison
            text = str(exc).strip()
            return {"error": f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"}
        return {"error": f"unknown command {sorted(message)}"}

    def _load(self, m: dict[str, Any]) -> dict[str, Any]:
        import torch

        start = time.perf_counter()
        self.threads_before = torch.get_num_threads()
        torch.set_num_threads(int(m["threads"]))
        source = m["load"] if isinstance(m["load"], Path) else Path(m["load"])
        ready = prepare(source, m["runtime"], threads=int(m["threads"]), batch_size=int(m["batch_size"]),
                        input_shape=tuple(m["input_shape"]), form=m.get("form"), trusted=bool(m.get("trusted")))
        self.call = ready.call
        affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return {"form": ready.form, "model_sparsity": ready.sparsity, "compile_s": ready.compile_s,
                "load_s": time.perf_counter() - start, "threads_observed": ready.threads_observed,
                "pinned_cores": affinity, "pid": os.getpid()}

    def _calibrate(self, m: dict[str, Any]) -> dict[str, Any]:
        assert self.call is not None
        for _ in range(int(m["warmup"])):
            self.call()
        self.calls_per_block = calibrate_block(self.call, float(m["block_seconds"]), timer=self.timer)
        return {"calls_per_block": self.calls_per_block}

    def _block(self) -> dict[str, Any]:
        assert self.call is not None
        times = []
        cpu0 = time.process_time()
        for _ in range(self.calls_per_block):
            t0 = self.timer()
            self.call()
            times.append(self.timer() - t0)
        return {"times": times, "cpu_s": time.process_time() - cpu0}

    def close(self) -> None:
        if self.threads_before is not None:
            import torch

            torch.set_num_threads(self.threads_before)


_TAG = "PQD-ROUNDS "


def _worker_loop() -> int:
    state = _WorkerState()
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("quit"):
            break
        print(_TAG + json.dumps(state.handle(message)), flush=True)
    return 0


# ---------------------------------------------------------------------------
# One comparison
# ---------------------------------------------------------------------------
def _validated(cfg: MeasureConfig) -> MeasureConfig:
    check_positive("rounds", [cfg.rounds])
    check_positive("warmup", [cfg.warmup], minimum=0)
    check_positive("max_reruns", [cfg.max_reruns], minimum=0)
    for name in ("block_seconds", "canary_drift", "contention_cores"):
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"{name}: {getattr(cfg, name)!r} must be >= 0")
    return cfg


def compare(candidates: Sequence[Candidate], reference: Candidate, cfg: MeasureConfig | None = None, *,
            input_shape: tuple[int, ...] = (3, 32, 32), log: Callable[[str], None] | None = None,
            timer: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Time `candidates` against `reference` under the rounds protocol (module docstring).

    One comparison per thread count x batch size of `cfg` (``threads``, ``batch_sizes``); within
    each, every model (the reference included) gets one record: ``label``, ``runtime``, ``form``,
    ``threads``, ``batch_size``, ``relative_to_reference`` (+ ``relative_ci_low``/``_high``),
    ``latency_ms_p50``/``_p90``/``_mean``, ``images_per_s``, ``compile_s``, ``calls_per_block``,
    ``rounds``/``rounds_used``/``rounds_marked``, the contention readings, ``protocol`` =
    ``"rounds"`` and the machine (``hardware_info``). A model that fails to load or run gets an
    error record (:func:`pqd_lib.measure.latency.error_records`) and the others go on; a failed
    reference fails the whole comparison the same way.

    Raises:
        ValueError: no candidates, two with the same label, a bad protocol value, an unknown runtime
            (the message lists the valid ones).
        RuntimeUnavailable: a candidate on ``openvino`` without OpenVINO installed (names the extra).
    """
    cfg = _validated(cfg or MeasureConfig())
    models = [reference, *candidates]
    labels = [c.label for c in models]
    if not candidates:
        raise ValueError("compare: no candidates; give at least one model to compare with the reference")
    if len(set(labels)) != len(labels):
        raise ValueError(f"compare: labels must be unique (the reference's too), got {labels}")
    for c in models:
        check_runtime(c.runtime)
    records = []
    for threads in resolve_threads(cfg.threads):
        for batch in check_positive("batch_sizes", cfg.batch_sizes):
            records += _one_comparison(models, cfg, threads=threads, batch_size=batch, input_shape=input_shape,
                                       log=log or (lambda s: None), timer=timer)
    return records


def _one_comparison(models: list[Candidate], cfg: MeasureConfig, *, threads: int, batch_size: int,
                    input_shape: tuple[int, ...], log: Callable[[str], None],
                    timer: Callable[[], float]) -> list[dict[str, Any]]:
    cores = cores_for(threads) if cfg.pin_cores and cfg.isolate else None
    kind = _Worker if cfg.isolate else _LocalWorker
    workers: dict[str, Any] = {}
    loaded: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    t0 = time.perf_counter()
    try:
        for c in models:  # started together: loading and compiling are not timed
            workers[c.label] = kind(c, threads=threads, batch_size=batch_size, input_shape=input_shape,
                                    cores=cores, timer=timer)
        for c in models:
            answer = workers[c.label].reply()
            if "error" in answer:
                failed[c.label] = answer["error"]
            else:
                loaded[c.label] = answer
        for c in models:  # one at a time: warm-up and block calibration see a machine without the others
            if c.label in loaded:
                answer = workers[c.label].ask({"calibrate": True, "warmup": cfg.warmup,
                                               "block_seconds": cfg.block_seconds})
                if "error" in answer:
                    failed[c.label] = answer["error"]
                    del loaded[c.label]
                else:
                    loaded[c.label].update(answer)
        log(f"{threads} thread(s), batch {batch_size}: {len(loaded)} models loaded in "
            f"{time.perf_counter() - t0:.0f} s" + (f", pinned to cores {cores}" if cores else ""))
        ref = models[0].label
        if ref not in loaded:
            failed = {c.label: f"reference {ref!r} failed: {failed.get(ref, '?')}" for c in models}
            rounds: list[dict[str, Any]] = []
        else:
            rounds = _run_rounds([c for c in models[1:] if c.label in loaded], ref, workers, cfg, log, failed)
    finally:
        for w in workers.values():
            w.close()

    def fields(c: Candidate) -> dict[str, Any]:
        return {"label": c.label, "reference": models[0].label, "protocol": "rounds", "input_shape":
                "x".join(map(str, input_shape)), "rounds": cfg.rounds, "block_seconds": cfg.block_seconds,
                "warmup": cfg.warmup, "canary_drift_limit": cfg.canary_drift, "contention_cores_limit":
                cfg.contention_cores, "max_reruns": cfg.max_reruns, "pin_cores": cfg.pin_cores, **c.fields}

    out = []
    stats = _statistics(rounds, [c.label for c in models if c.label not in failed], ref, cfg)
    for c in models:
        if c.label in failed:
            out += error_records(failed[c.label], runtime=c.runtime, device="cpu", threads=[threads],
                                 batch_sizes=[batch_size], isolated=cfg.isolate, form=c.form,
                                 artifact=str(c.source), **fields(c))
            continue
        info = {k: v for k, v in loaded[c.label].items()}
        out.append({"runtime": c.runtime, "device": "cpu", "isolated": cfg.isolate, "artifact": str(c.source),
                    **fields(c), "threads": threads, "batch_size": batch_size, **info,
                    **stats.get(c.label, {}), "images_per_s": batch_size * 1e3 / stats[c.label]["latency_ms_p50"]
                    if stats.get(c.label) else None, **hardware_info(), "error": None})
    return out


def _run_rounds(models: list[Candidate], ref: str, workers: dict[str, Any], cfg: MeasureConfig,
                log: Callable[[str], None], failed: dict[str, str]) -> list[dict[str, Any]]:
    """Rounds until `cfg.rounds` unmarked ones or the re-run budget is spent; each a dict of blocks and marks."""
    rounds: list[dict[str, Any]] = []
    unmarked, reruns, r = 0, 0, 0
    while unmarked < cfg.rounds and (len(rounds) < cfg.rounds or reruns < cfg.max_reruns):
        if len(rounds) >= cfg.rounds:
            reruns += 1
        active = [c.label for c in models if c.label not in failed]
        order = active[r % len(active):] + active[:r % len(active)] if active else []
        r += 1
        blocks: dict[str, Any] = {}
        marks: list[str] = []
        first = _timed_block(workers[ref], cfg)
        for label in order:
            b = _timed_block(workers[label], cfg)
            if "error" in b:
                failed[label] = b["error"]
                continue
            blocks[label] = b
            if b["contended"]:
                marks.append(f"{label}: {b['contended']}")
        last = _timed_block(workers[ref], cfg)
        if "error" in first or "error" in last:
            failed[ref] = first.get("error") or last.get("error")
            for label in active:
                failed.setdefault(label, f"reference {ref!r} failed: {failed[ref]}")
            return []
        ref_ms = math.sqrt(first["median_ms"] * last["median_ms"])
        drift = abs(last["median_ms"] / first["median_ms"] - 1.0)
        if drift > cfg.canary_drift:
            marks.append(f"reference drifted {drift:.0%} within the round")
        marks += [f"reference: {b['contended']}" for b in (first, last) if b["contended"]]
        blocks[ref] = {"times": first["times"] + last["times"], "median_ms": ref_ms,
                       "other_cores": max(first["other_cores"], last["other_cores"]),
                       "steal": max(first["steal"], last["steal"])}
        rounds.append({"blocks": blocks, "ref_ms": ref_ms, "drift": drift, "marks": marks})
        unmarked += not marks
        if marks:
            log(f"round {len(rounds)} marked: {'; '.join(marks)[:200]}")
    return rounds


def _timed_block(worker: Any, cfg: MeasureConfig) -> dict[str, Any]:
    """One block of `worker`'s model, with the machine's state around it."""
    before, cpu_before, t0 = cpu_snapshot(), _process_cpu(worker.pid), time.perf_counter()
    answer = worker.ask({"block": True})
    wall = time.perf_counter() - t0
    after, cpu_after = cpu_snapshot(), _process_cpu(worker.pid)
    if "error" in answer:
        return answer
    other = steal = 0.0
    if before is not None and after is not None and wall > 0:
        own = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else answer["cpu_s"]
        if worker.pid == os.getpid():
            own = answer["cpu_s"]
        # Less two clock ticks: /proc counts in ticks (10 ms), so a short block reads up to 2 ticks too busy.
        other = max(0.0, (after[0] - before[0]) - own - 2.0 / os.sysconf("SC_CLK_TCK")) / wall
        total = after[2] - before[2]
        steal = (after[1] - before[1]) / total if total > 0 else 0.0
    reasons = []
    if other > cfg.contention_cores:
        reasons.append(f"other processes used {other:.2f} cores")
    if steal > _STEAL_LIMIT:
        reasons.append(f"steal {steal:.0%}")
    times_ms = np.asarray(answer["times"]) * 1e3
    return {"times": answer["times"], "median_ms": float(np.median(times_ms)), "other_cores": other,
            "steal": steal, "contended": ", ".join(reasons)}


def _statistics(rounds: list[dict[str, Any]], labels: list[str], ref: str,
                cfg: MeasureConfig) -> dict[str, dict[str, Any]]:
    clean = [r for r in rounds if not r["marks"]]
    enough = len(clean) >= max(5, cfg.rounds // 2) or (clean and len(clean) == len(rounds))
    used = clean if enough else rounds
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = [r for r in used if label in r["blocks"]]
        if not mine:
            continue
        ratios = [r["blocks"][label]["median_ms"] / r["ref_ms"] for r in mine]
        low, high = bootstrap_ci(ratios)
        times_ms = np.concatenate([np.asarray(r["blocks"][label]["times"]) * 1e3 for r in mine])
        p50, p90 = (float(v) for v in np.percentile(times_ms, [50, 90]))
        out[label] = {
            "relative_to_reference": float(np.median(ratios)), "relative_ci_low": low, "relative_ci_high": high,
            "latency_ms_p50": p50, "latency_ms_p90": p90, "latency_ms_mean": float(times_ms.mean()),
            "runs": int(times_ms.size), "reference_ms_p50": float(np.median([r["ref_ms"] for r in mine])),
            "rounds_run": len(rounds), "rounds_used": len(mine), "rounds_marked": sum(bool(r["marks"]) for r in rounds),
            "contended": not enough,
            "canary_drift_max": float(max(r["drift"] for r in mine)),
            "other_cores_max": float(max(r["blocks"][label]["other_cores"] for r in mine)),
            "steal_max": float(max(r["blocks"][label]["steal"] for r in mine)),
        }
    return out


def identical_spread(records: Sequence[dict[str, Any]], labels: Sequence[str]) -> float | None:
    """max/min - 1 of the relative latencies of models that are identical (same architecture and form).

    The protocol's own trust figure: how far apart models that must take the same time land in
    the same run. None when fewer than two of them were measured.
    """
    values = [r["relative_to_reference"] for r in records if r.get("label") in set(labels) and not r.get("error")]
    return spread(values) if len(values) >= 2 else None


# ---------------------------------------------------------------------------
# The latency phase: each distinct deploy signature measured once
# ---------------------------------------------------------------------------
def deploy_signature(model: Any, arch: dict[str, Any], runtime: str = "torch-eager") -> tuple:
    """What a model's latency depends on: (architecture, form, the sparsity pattern that matters, runtime).

    Dense kernels (every runtime but ``torch-sparse-csr``) do the same work whatever the weights, so
    two pruned models of the same architecture and form share a signature; for the CSR kernels the
    number of non-zeros is the work, so the sparsity (to 0.1 %) is part of it.
    """
    form = model_form(model)
    dense_form = "int8" if form == "int8" else "fp32"
    pattern = f"{weight_sparsity(model):.3f}" if runtime == "torch-sparse-csr" else "dense-kernels"
    return (json.dumps(dict(arch), sort_keys=True), dense_form, pattern, runtime)


def latency_phase(models: dict[Any, Any], arch: dict[str, Any], cfg: MeasureConfig, *,
                  runtime: str | None = None, reference: Any | None = None,
                  input_shape: tuple[int, ...] = (3, 32, 32),
                  log: Callable[[str], None] | None = None) -> dict[Any, dict[tuple[int, int], dict[str, Any]]]:
    """Time every distinct deploy signature of `models` once, in one rounds comparison; give each key its record.

    Run it after all training (nothing else computing). `models` maps any key (an order, a run) to
    a deploy model of architecture `arch`; models sharing a :func:`deploy_signature` are measured
    once (the first one's weights; dense-kernel latency does not depend on them) and the same
    record is attached to each, with ``shared_by`` = how many keys share it. The reference is
    `reference` (a module) or, by default, the FP32 model of `arch` freshly built. `runtime` None
    times each model on its deploy runtime (:func:`~pqd_lib.measure.runtimes.default_runtime`:
    ``torch-compile`` for a PT2E INT8 graph, ``torch-eager`` otherwise); the records say which.

    Returns:
        ``{key: {(threads, batch_size): record}}``.
    """
    groups: dict[tuple, list[Any]] = {}
    for key, model in models.items():
        # None: each model's deploy runtime (torch-compile for a PT2E INT8 graph, else torch-eager).
        groups.setdefault(deploy_signature(model, arch, runtime or default_runtime(model)), []).append(key)
    with tempfile.TemporaryDirectory(prefix="pqd-latency-phase-") as work:
        work_path = Path(work)
        ref_model = reference if reference is not None else build(**arch).eval()
        ref = Candidate("reference (FP32 dense)", save_artifact(ref_model, work_path / "reference.pt", arch=arch,
                                                                input_shape=input_shape), "torch-eager")
        candidates = []
        for i, (signature, keys) in enumerate(groups.items()):
            path = save_artifact(models[keys[0]], work_path / f"model{i}.pt", arch=arch, input_shape=input_shape)
            candidates.append(Candidate(f"{signature[1]} {signature[2]} {signature[3]} #{i}", path, signature[3],
                                        fields={"shared_by": len(keys)}))
        records = compare(candidates, ref, cfg, input_shape=input_shape, log=log)
    out: dict[Any, dict[tuple[int, int], dict[str, Any]]] = {}
    for candidate, keys in zip(candidates, groups.values()):
        for r in records:
            if r["label"] == candidate.label:
                for key in keys:
                    out.setdefault(key, {})[r["threads"], r["batch_size"]] = {**r, "artifact": None}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pqd_lib.measure.rounds --worker``: a latency worker (commands on stdin, answers on stdout)."""
    parser = argparse.ArgumentParser(prog="python -m pqd_lib.measure.rounds",
                                     description="A worker process of pqd's rounds latency protocol.")
    parser.add_argument("--worker", action="store_true", help="answer JSON commands on stdin")
    args = parser.parse_args(argv)
    if not args.worker:
        parser.error("only --worker is supported; compare models with pqd_lib.measure.rounds.compare")
    return _worker_loop()


if __name__ == "__main__":
    sys.exit(main())
