"""Re-time a run's latency under the rounds protocol on this machine, without its trained weights.

    pqd retime --preset mini --plan                  # the deploy signatures and the time they will take
    pqd retime --preset mini                         # time them; records go to reports/results/<this machine>/

Records made before the rounds protocol (:mod:`pqd_lib.measure.rounds`) timed one model per window,
one after another, right after training: their latencies measured the machine's state as much as
the models (identical INT8 models ranged 0.95-2.0 ms). Their accuracy stays valid; their latency
is re-measured here. The trained weights are not needed: dense and INT8 kernels do the same work
whatever the weight values, so what a latency depends on is the **deploy signature**
(:class:`Signature`): architecture (backbone, classes, width), deploy form, runtime, the sparsity
level (to 10 %) and, for INT8, the quantization settings and the Q engine that made the model (FX
and PT2E INT8 models are different programs: their records never share a signature); then threads
and batch size.

For each distinct signature of the selected records a model is built: seeded weights
(``torch.manual_seed(0)``), globally magnitude-pruned to the signature's sparsity (zeros kept in
the weights, as a pruned model is deployed), and for INT8 QAT-prepared by the recorded engine with
the recorded backend, calibrated on a few real images (the embedded CIFAR-10 set) and converted; the ONNX forms are
exported from those. The sparsity is part of *every* signature, dense kernels included: claim C2
(and C5's latency axis) asks precisely whether zeros change a dense kernel's time, so that is
measured, not assumed.

Timing: one rounds comparison per (width, threads, batch size) holding every signature of that
point, against the FP32 dense eager model of the same width (the reference), plus an identical
twin of the reference whose distance from it is the comparison's trust figure
(``identical_spread``). Each signature is timed once, whatever the number of runs, seeds and
notebooks sharing it.

Each result is a record of kind :data:`KIND` for *this* machine, naming what it re-times:
``retimes`` (the source run ids), ``retimed_records`` (how many source records share it),
``source_machines``, ``weights`` = :data:`WEIGHTS`, ``protocol`` = ``"rounds"``. The source
records are left as they are; :mod:`pqd_lib.latency_source` folds these records into them for the
verdicts, machine by machine.

Full-range activations (``quantize.reduce_range=false``) are refused on a CPU without AVX-512 VNNI
(their kernels saturate). There the INT8 signatures are timed with 7-bit activations, which run the
same kernels (the range only changes the scales): ``reduce_range`` is what was timed,
``recorded_reduce_range`` what the runs trained with.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .. import hardware
from ..config import MeasureConfig
from ..labels import Kind
from .runtimes import ONNX_RUNTIMES

__all__ = ["KIND", "WEIGHTS", "DEPLOYS", "Signature", "signature_of", "plan", "estimate_seconds", "retime"]

#: Record kind of re-timed latencies (``pqd_lib.latency_source`` reads it).
KIND = Kind.RETIMED
#: What the re-timed models share with the runs they stand for.
WEIGHTS = "architecture-only"
#: Deploy forms a signature can have: a torch module (FP32, INT8) or one of the three ONNX files.
DEPLOYS = ("fp32", "int8", "onnx-fp32", "onnx-int8-static-ptq", "onnx-int8-qat")
#: Record kinds that carry a latency of a trained run.
_SOURCE_KINDS = (Kind.MEASURED, Kind.DEPLOY, Kind.LATENCY)
_REFERENCE = ("fp32", "torch-eager", 0.0)


@dataclass(frozen=True)
class Signature:
    """What one latency depends on, apart from threads and batch size (module docstring)."""

    backbone: str
    num_classes: int
    width: float
    deploy: str
    runtime: str
    sparsity: float
    backend: str | None = None
    reduce_range: bool | None = None
    # The Q engine of an INT8 model pqd made ("fx" or "pt2e"; None for FP32 and ONNX Runtime's own PTQ).
    engine: str | None = None

    @property
    def arch(self) -> dict[str, Any]:
        """The architecture spec of :func:`pqd_lib.models.build`."""
        return {"name": self.backbone, "num_classes": self.num_classes, "width": self.width}

    @property
    def label(self) -> str:
        """A short unique name inside one comparison (one width), e.g. ``int8 50% · torch-eager``, or
        ``int8 50% · torch-compile · pt2e``: the engine is named unless it is FX, so the names (and record ids)
        of signatures re-timed before the engine was part of them stay what they were."""
        return f"{self.deploy} {self.sparsity:.0%} · {self.runtime}" + self._engine_suffix(" · ")

    def _engine_suffix(self, sep: str) -> str:
        return f"{sep}{self.engine}" if self.engine not in (None, "fx") else ""


def _get(record: dict[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def signature_of(record: dict[str, Any], *, vnni: bool | None = None) -> Signature | None:
    """The deploy signature of a record's latency; None when it has none (no latency, an error, no width).

    `vnni`: whether the timing CPU has AVX-512 VNNI (default: this one); without it INT8 signatures
    use 7-bit activations (module docstring).
    """
    if record.get("kind") not in _SOURCE_KINDS or _missing(record.get("latency_ms_p50")):
        return None
    if not _missing(record.get("error")):
        return None
    width, backbone = record.get("width"), record.get("backbone")
    if _missing(width) or _missing(backbone):
        return None
    runtime = str(record.get("runtime") or "torch-eager")
    name = str(record.get("model") or "")
    if runtime in ONNX_RUNTIMES:
        deploy = ("onnx-int8-static-ptq" if "PTQ" in name else "onnx-int8-qat" if "QAT" in name else "onnx-fp32")
    else:
        form = record.get("form") or record.get("deploy_form")
        deploy = "int8" if form == "int8" else "fp32"
    target = record.get("target_sparsity")
    sparsity = target if not _missing(target) else record.get("sparsity")
    if deploy.startswith("onnx") or _missing(sparsity):
        sparsity = 0.0  # the ONNX files were made from the dense model
    classes = _get(record, "arch", "num_classes") or (100 if record.get("dataset") == "cifar100" else 10)
    backend = reduce_range = engine = None
    if "int8" in deploy:
        backend = _get(record, "config", "quantize", "backend") or "x86"
        recorded = _get(record, "config", "quantize", "reduce_range")
        vnni = hardware.has_int8_vnni() if vnni is None else vnni
        reduce_range = bool(recorded) if (recorded is not None and vnni) else True
    if deploy in ("int8", "onnx-int8-qat"):
        # A record without the field predates quantize.engine: FX was the only engine then.
        engine = _get(record, "config", "quantize", "engine") or "fx"
    # Sparsity to 10 %: an INT8 model's weights that round to zero (1-3 %) are not a pruning level.
    return Signature(str(backbone), int(classes), float(width), deploy, runtime, round(float(sparsity), 1),
                     backend, reduce_range, engine)


def plan(records: pd.DataFrame, *, vnni: bool | None = None) -> dict[tuple[Signature, int, int], list[dict[str, Any]]]:
    """Every (signature, threads, batch size) the records' latencies need, with the records that share it.

    Only records of the single-model protocol are taken (``protocol`` other than ``"rounds"``):
    rounds-protocol latencies need no re-timing.
    """
    out: dict[tuple[Signature, int, int], list[dict[str, Any]]] = {}
    for record in records.to_dict("records"):
        if record.get("protocol") == "rounds" or _missing(record.get("threads")) or _missing(record.get("batch_size")):
            continue
        sig = signature_of(record, vnni=vnni)
        if sig is not None:
            out.setdefault((sig, int(record["threads"]), int(record["batch_size"])), []).append(record)
    return out


def _comparisons(needed: Iterable[tuple[Signature, int, int]]) -> dict[tuple, list[Signature]]:
    """The needed signatures grouped into comparisons: one per (architecture, threads, batch)."""
    groups: dict[tuple, list[Signature]] = {}
    for sig, threads, batch in sorted(needed, key=lambda k: (k[0].backbone, k[0].num_classes, k[0].width, k[1],
                                                                k[2], k[0].deploy, k[0].runtime, k[0].sparsity)):
        groups.setdefault((sig.backbone, sig.num_classes, sig.width, threads, batch), []).append(sig)
    return groups


def estimate_seconds(needed: Iterable[tuple[Signature, int, int]], cfg: MeasureConfig,
                     call_ms: Callable[[Signature, int, int], float] | None = None) -> float:
    """A rough duration of :func:`retime` for `needed` under `cfg`, in seconds (for planning, not a result).

    Per comparison: the rounds (each model's block, plus the reference twice and its twin), blocks
    of at least one call, and ~5 s per model for building, loading and calibration. `call_ms`
    guesses one call's time; the default is a coarse guess from width, batch and form.
    """
    call_ms = call_ms or _guess_ms
    total = 0.0
    built: set[tuple] = set()
    for (backbone, classes, width, threads, batch), sigs in _comparisons(needed).items():
        ref = Signature(backbone, classes, width, *_REFERENCE)
        blocks = [ref, ref, ref] + [s for s in sigs if (s.deploy, s.runtime, s.sparsity) != _REFERENCE]
        per_round = sum(max(cfg.block_seconds, call_ms(s, threads, batch) / 1e3) for s in blocks)
        total += per_round * cfg.rounds * 1.15 + 5.0 * len(blocks)  # ~15 % re-run rounds; start, warm-up
        for s in sigs:  # each model is built once: ~15 s per ONNX export or quantization, ~3 s otherwise
            key = (backbone, classes, width, s.deploy, s.sparsity)
            if key not in built:
                built.add(key)
                total += 15.0 if s.deploy.startswith("onnx") else 3.0
    return total


def _guess_ms(sig: Signature, threads: int, batch: int) -> float:
    # ResNet-18 at full width, 1 thread, batch 1: ~20 ms FP32 (AVX2); MACs scale with width squared.
    ms = 20.0 * sig.width ** 2 * batch / threads
    if sig.runtime == "torch-sparse-csr":
        ms *= 4.0 * max(0.1, 1.0 - sig.sparsity)
    return max(ms, 0.3)


# ---------------------------------------------------------------------------
# Building the models of one architecture
# ---------------------------------------------------------------------------
def _calibration_data(num_images: int) -> Any:
    """A few real images for INT8 calibration: the embedded CIFAR-10 set (offline, in the package)."""
    from .. import data as data_mod
    from ..config import DataConfig

    return data_mod.load(DataConfig(dataset="cifar10", source="embedded", train_subset=max(num_images, 64),
                                    test_subset=10))


class _Builder:
    """Builds (and caches) every model of one architecture a comparison needs, as files a worker loads."""

    def __init__(self, arch: dict[str, Any], work: Path, images: Any, calibration_images: int) -> None:
        import torch

        from ..models import build

        self.arch, self.work, self.images = arch, work, images
        self.calibration_images = calibration_images
        torch.manual_seed(0)
        self.dense = build(**arch).eval()
        self.files: dict[tuple, Path] = {}

    def _pruned(self, sparsity: float) -> Any:
        from ..stages import prune as prune_stage

        model = copy.deepcopy(self.dense)
        if sparsity > 0:
            prune_stage.update_masks(prune_stage.prunable_layers(model), sparsity, scope="global")
            prune_stage.remove_masks(model)  # the zeros stay in the weights: a pruned model's deploy form
        return model.eval()

    def _prepared(self, sig: Signature) -> Any:
        from ..stages import quantize as quantize_stage

        prepared = quantize_stage.prepare_qat(self._pruned(sig.sparsity), backend=sig.backend or "x86",
                                              reduce_range=bool(sig.reduce_range), engine=sig.engine or "fx")
        quantize_stage.calibrate(prepared, self.images, batches=2, batch_size=32)
        return prepared

    def path(self, sig: Signature) -> Path:
        """The file of `sig`'s model (a deploy file, or an ONNX file for the ONNX runtimes)."""
        from ..deploy import save_artifact
        from ..stages import quantize as quantize_stage
        from . import onnx_runtime

        key = (sig.deploy, sig.sparsity, sig.backend, sig.reduce_range, sig.engine)
        if key in self.files:
            return self.files[key]
        stem = self.work / f"{sig.deploy}-s{sig.sparsity:g}-{len(self.files)}"
        if sig.deploy == "fp32":
            path = save_artifact(self._pruned(sig.sparsity), stem.with_suffix(".pt"), arch=self.arch)
        elif sig.deploy == "int8":
            int8 = quantize_stage.convert(self._prepared(sig), backend=sig.backend or "x86")
            path = save_artifact(int8, stem.with_suffix(".pt"), arch=self.arch, backend=sig.backend,
                                 reduce_range=sig.reduce_range)
        elif sig.deploy == "onnx-int8-qat":
            path = onnx_runtime.export_qat_onnx(self._prepared(sig), stem.with_suffix(".onnx"))
        else:
            fp32 = onnx_runtime.export_onnx(self._pruned(sig.sparsity), self.work / f"onnx-fp32-s{sig.sparsity:g}.onnx")
            if sig.deploy == "onnx-fp32":
                path = fp32
            else:
                calibration = onnx_runtime.calibration_images(self.images, self.calibration_images)
                path = onnx_runtime.quantize_static_onnx(fp32, stem.with_suffix(".onnx"), calibration)
        self.files[key] = path
        return path


# ---------------------------------------------------------------------------
# The re-timing
# ---------------------------------------------------------------------------
def retime(records: pd.DataFrame, cfg: MeasureConfig | None = None, *, results_dir: Any = None,
           log: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    """Re-time every single-model-protocol latency of `records` on this machine (module docstring).

    `records` is a DataFrame of :func:`pqd_lib.results.load_results` (select the runs first). One
    rounds comparison per (architecture, threads, batch size) under `cfg` (its ``threads`` and
    ``batch_sizes`` are replaced by each comparison's); with `results_dir` every record is also
    appended to that store, under this machine, run id ``<backbone>-<dataset>-<preset>-retimed``.

    Returns:
        One record per (signature, threads, batch size), reference included (error records where a
        model failed to build or run).

    Raises:
        ValueError: no record of the selection has a latency to re-time.
    """
    from .. import results
    from .rounds import Candidate, compare

    cfg = cfg or MeasureConfig()
    needed = plan(records)
    if not needed:
        raise ValueError("retime: no single-model-protocol latency in the selected records; select runs that have "
                         "latencies (notebooks 01-07), e.g. --backbone resnet18 --dataset cifar10 --preset mini")
    cells = {(r.get("backbone"), r.get("dataset"), r.get("preset")) for recs in needed.values() for r in recs}
    images = _calibration_data(cfg.calibration_images)
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pqd-retime-") as work:
        builders: dict[tuple, _Builder] = {}
        for (backbone, classes, width, threads, batch), sigs in _comparisons(needed).items():
            arch_key = (backbone, classes, width)
            if arch_key not in builders:
                folder = Path(work) / f"{backbone}-{classes}-w{width:g}"
                folder.mkdir()
                builders[arch_key] = _Builder({"name": backbone, "num_classes": classes, "width": width}, folder,
                                              images, cfg.calibration_images)
            builder = builders[arch_key]
            ref_sig = Signature(backbone, classes, width, *_REFERENCE)
            reference = Candidate(ref_sig.label, builder.path(ref_sig), "torch-eager")
            twin = Candidate("identical twin of the reference", reference.source, "torch-eager")
            candidates, failed = [twin], []
            for sig in sigs:
                if sig == ref_sig:
                    continue
                try:
                    candidates.append(Candidate(sig.label, builder.path(sig), sig.runtime))
                except Exception as exc:  # an export or quantization failure: the signature's error record
                    failed.append((sig, f"{type(exc).__name__}: {str(exc).strip()[:300]}"))
            start = time.perf_counter()
            log(f"{backbone} w{width:g}, {threads} thread(s), batch {batch}: {len(candidates) - 1} models + "
                "reference and its twin")
            timed = compare(candidates, reference, dataclasses.replace(cfg, threads=(threads,), batch_sizes=(batch,)),
                            log=log)
            by_label = {r["label"]: r for r in timed}
            spread = _twin_spread(by_label.get(reference.label), by_label.get(twin.label))
            log(f"  done in {time.perf_counter() - start:.0f} s; identical twin differs by "
                + (f"{spread:.1%}" if spread is not None else "?"))
            for sig in sigs:
                record = by_label.get(sig.label)
                if record is None:
                    error = next((e for s, e in failed if s == sig), "not timed")
                    record = {"error": error, "threads": threads, "batch_size": batch, "protocol": "rounds",
                              **hardware.hardware_info()}
                out.append(_record(sig, record, needed[sig, threads, batch], spread))
    if results_dir is not None:
        for r in out:
            results.append(results.make_record(None, **r), results_dir, replace=True)
    log(f"{len(out)} re-timed records for {len(cells)} cell(s)")
    return out


def _twin_spread(ref: dict[str, Any] | None, twin: dict[str, Any] | None) -> float | None:
    if not ref or not twin or ref.get("error") or twin.get("error"):
        return None
    a, b = ref["relative_to_reference"], twin["relative_to_reference"]
    return max(a, b) / min(a, b) - 1.0


def _record(sig: Signature, timed: dict[str, Any], sources: list[dict[str, Any]], spread: float | None) -> dict[str, Any]:
    """A re-timed record: the rounds record of `sig` with what it re-times and the cell it belongs to."""
    first = sources[0]
    run_ids = sorted({str(r.get("run_id")) for r in sources if r.get("run_id")})
    recorded = sorted({str(_get(r, "config", "quantize", "reduce_range")) for r in sources})
    cell = f"{first.get('backbone')}-{first.get('dataset')}-{first.get('preset')}"
    fields = {k: v for k, v in timed.items() if k not in ("artifact", "label", "width", "model")}
    model = {"fp32": "FP32", "int8": "INT8"}.get(sig.deploy, sig.deploy)
    return {
        **fields,
        "record_id": (f"retime-{sig.backbone}-c{sig.num_classes}-w{sig.width:g}-{sig.deploy}-s{sig.sparsity:g}-"
                      f"{sig.runtime}{sig._engine_suffix('-')}-{timed['threads']}t-{timed['batch_size']}b"),
        "run_id": f"{cell}-retimed",
        "kind": KIND,
        "backbone": sig.backbone, "dataset": first.get("dataset"), "preset": first.get("preset"),
        "width": sig.width, "num_classes": sig.num_classes, "deploy": sig.deploy, "runtime": sig.runtime,
        "model": f"{model} {sig.sparsity:.0%} sparse" if sig.sparsity else model,
        "form": "int8" if "int8" in sig.deploy else "fp32", "target_sparsity": sig.sparsity,
        "backend": sig.backend, "reduce_range": sig.reduce_range, "engine": sig.engine,
        "recorded_reduce_range": ", ".join(recorded) if "int8" in sig.deploy else None,
        "signature": json.dumps(dataclasses.asdict(sig), sort_keys=True),
        "weights": WEIGHTS,
        "retimes": run_ids,
        "retimed_records": len(sources),
        "source_machines": sorted({str(r.get("machine")) for r in sources}),
        "source_protocol": "single-model windows",
        "identical_spread": spread,
        "notebook": None, "order": None, "seed": None,
    }
