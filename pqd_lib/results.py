"""Run records: one tidy JSON file per record, appended atomically, read back as one pandas DataFrame.

Layout: ``<results_dir>/<machine>/<run_id>/<record_id>.json``. The machine is part of a record's
identity (``$PQD_MACHINE``, else :func:`machine_key` of the host name, CPU model, capability class and cores):
records of several machines sit side by side, and two results folders merge (by copying, or by
git) without one machine's records replacing another's; :func:`load_results` can keep one machine. Each record is its own file, written to a
temporary name in the same directory and renamed into place (``os.replace``, atomic on POSIX and
Windows), so any number of processes can append at once: nobody rewrites a shared file, a reader
never sees half a record, and no lock is needed. Nothing is ever modified after it is written.

Every record carries what is needed to redo it (ARCHITECTURE.md's invariant): ``schema_version``,
``record_id``, ``timestamp`` (UTC, ISO 8601), ``run_id`` and ``config_hash`` (``pqd_lib.config``),
the resolved ``config`` as a dict, ``backbone``, ``dataset``, ``width``, ``preset``, ``order``,
``stage``, ``seed``, ``data_source``, the code version (``git_commit``, ``git_dirty``; None outside
a git checkout), the machine (``pqd_lib.hardware``), and the measured fields (``top1``,
``sparsity``, ``size_bytes``, ``latency_ms_p50``, ``threads``, ``batch_size``, ...).

:data:`SCHEMA_VERSION` is bumped when the meaning of a field changes; :func:`load_results` refuses
files of another version with an error naming the file (and leaves the file as it is).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import config as config_mod
from .config import RunConfig, config_hash, to_dict
from .config import run_id as run_id_of  # `run_id` is also a record field and a parameter name
from ._atomic import atomic_write_text
from .labels import Kind, Notebook
from .hardware import hardware_info, record_capability_class

__all__ = ["SCHEMA_VERSION", "DEFAULT_RESULTS_DIR", "COLUMNS", "ResultsError", "code_version", "make_record",
           "append", "record_measurements", "record_stages", "load_results"]

#: Version of the record layout; records of another version are refused by :func:`load_results`.
SCHEMA_VERSION = 1
#: Where records go when no directory is given (``RunConfig.results_dir``'s default; relative to the CWD).
DEFAULT_RESULTS_DIR = config_mod.DEFAULT_RESULTS_DIR
#: Columns every loaded DataFrame has, first and in this order (NaN where a record lacks them).
COLUMNS = ["machine", "run_id", "backbone", "dataset", "width", "preset", "order", "stage", "seed", "data_source", "top1",
           "top5", "sparsity", "size_bytes", "latency_ms_p50", "latency_ms_p90", "runtime", "form", "threads",
           "batch_size", "config_hash", "git_commit", "git_dirty", "timestamp", "record_id", "schema_version"]


class ResultsError(ValueError):
    """A record cannot be written or read; the message names the file or the offending field."""


def code_version(where: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the checkout holding pqd_lib.

    Never fails: outside a git checkout, without git, or before the first commit both are None.
    Dirty means tracked files differ from the commit (untracked files are ignored).
    """
    cwd = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def machine_key(info: Mapping[str, Any]) -> str:
    """A machine's name in records and paths: ``<host>-<cpu model>-<capability class>-<cores>c``.

    `info` is a record or :func:`pqd_lib.hardware.hardware_info` with ``hostname``. Host name and CPU
    model are not enough: containers are often all called the same, and one cloud's "AMD EPYC, 2
    cores" was a Zen 4 with AVX-512 VNNI on one day and an AVX2-only CPU on another, whose INT8
    numerics and speed differ. The capability class (``x86-avx2``, ``x86-avx512-vnni``, ...;
    :func:`pqd_lib.hardware.record_capability_class`, derived from the ``isa_*`` fields for older
    records) keeps them apart, e.g. ``vm-amd-epyc-x86-avx2-2c``.
    """
    cls = record_capability_class(info)
    cores = info.get("cpu_count")
    words = [info.get("hostname"), info.get("cpu_model"), cls if cls != "unknown" else None,
             f"{cores}c" if cores else None]
    return re.sub(r"[^a-z0-9]+", "-", " ".join(w for w in words if w).lower()).strip("-") or "unknown-machine"


def this_machine() -> str:
    """This machine's key: ``$PQD_MACHINE`` when set (a name you choose), else :func:`machine_key`.

    Raises:
        ResultsError: ``$PQD_MACHINE`` is not a plain name (letters, digits, ``.``, ``_``, ``-``).
    """
    chosen = os.environ.get("PQD_MACHINE")
    if chosen:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", chosen):
            raise ResultsError(f"PQD_MACHINE: {chosen!r} is not allowed; use letters, digits, '.', '_' and '-' "
                               "(it names a folder of the results store)")
        return chosen
    return machine_key({"hostname": platform.node(), **hardware_info()})


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def make_record(cfg: RunConfig | None = None, **fields: Any) -> dict[str, Any]:
    """A record with its provenance filled in from `cfg`, then `fields` (the measured values) on top.

    Provenance: schema version, a fresh ``record_id``, ``timestamp``, ``run_id`` (for
    ``fields["order"]`` when given, else the config's order), ``config_hash``, the resolved
    ``config``, ``backbone``, ``dataset``, ``width``, ``preset``, ``order``, ``seed``,
    ``data_source`` (the config's source kind; pass the loaded data's description to override),
    ``git_commit``/``git_dirty`` and the machine (``pqd_lib.hardware.hardware_info``).
    Without `cfg` the config fields are None unless given in `fields`.
    """
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "record_id": uuid.uuid4().hex, "timestamp": _now()}
    if cfg is not None:
        order = fields.get("order", cfg.pipeline.order)
        record.update({
            "run_id": run_id_of(cfg, order),
            "config_hash": config_hash(cfg),
            "config": to_dict(cfg),
            "backbone": cfg.model.name,
            "dataset": cfg.data.dataset,
            "width": cfg.model.width,
            "preset": cfg.preset,
            "order": order,
            "seed": cfg.seed,
            "data_source": cfg.data.source,
        })
    else:
        record.update({k: None for k in ("run_id", "config_hash", "config", "backbone", "dataset", "width",
                                          "preset", "order", "seed", "data_source")})
    record["stage"] = None
    record.update(code_version())
    record["hostname"] = platform.node()
    record.update(hardware_info())
    record["machine"] = this_machine()
    record.update(fields)
    return record


def _plain(value: Any) -> Any:
    """JSON-ready: numpy/torch scalars to Python, tuples to lists, paths to str, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy / torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "record"


def append(record: dict[str, Any], results_dir: str | os.PathLike | None = None, *, replace: bool = False) -> Path:
    """Write `record` as ``<results_dir>/<machine>/<run_id>/<record_id>.json`` atomically; return its path.

    Records without ``schema_version`` / ``record_id`` / ``timestamp`` get them (use
    :func:`make_record` for the provenance fields). An existing file with the same record id is
    an error unless `replace` is true: a notebook redone after an interruption gives its records
    deterministic ids and replaces its own earlier copies, so a resumed batch duplicates nothing.

    Raises:
        ResultsError: `record` is not a dict, has another schema version, or its id is taken.
    """
    if not isinstance(record, dict):
        raise ResultsError(f"append: a record is a dict, got {type(record).__name__}")
    record = dict(record)
    record.setdefault("schema_version", SCHEMA_VERSION)
    if record["schema_version"] != SCHEMA_VERSION:
        raise ResultsError(f"append: record has schema_version {record['schema_version']!r}; this pqd writes "
                           f"version {SCHEMA_VERSION}")
    record.setdefault("record_id", uuid.uuid4().hex)
    record.setdefault("timestamp", _now())
    record.setdefault("machine", this_machine())
    folder = (Path(results_dir if results_dir is not None else DEFAULT_RESULTS_DIR) / _safe_name(str(record["machine"]))
              / _safe_name(str(record.get("run_id") or "no-run-id")))
    path = folder / f"{_safe_name(str(record['record_id']))}.json"
    if path.exists() and not replace:
        raise ResultsError(f"{path}: a record with id {record['record_id']!r} exists already; records are never rewritten")
    try:
        return atomic_write_text(path, json.dumps(_plain(record), indent=1, sort_keys=False) + "\n")
    except OSError as exc:  # a full disk, a read-only store: say which file, not just errno
        raise ResultsError(f"{path}: cannot write this record ({exc.strerror or exc}); free space or choose "
                           "another results_dir") from None


def record_measurements(table: pd.DataFrame, configs: Mapping[str, RunConfig], *, notebook: Notebook,
                        results_dir: str | os.PathLike | None = None, run_id: str | None = None) -> list[Path]:
    """Write one :attr:`Kind.MEASURED` record per row of a :func:`pqd_lib.measure.table.measure_models` table.

    `configs` maps each row's ``model`` name to the config that made it. Record ids are
    ``<notebook>-<model>-<runtime>-<threads>t-<batch>b``, so a notebook run again replaces its own
    records. `run_id` (set by ``pqd batch``) groups them; None derives it from each model's config.
    """
    paths = []
    for row in table.to_dict("records"):
        cfg = configs[row["model"]]
        record = make_record(
            cfg, record_id=f"{notebook}-{row['model']}-{row['runtime']}-{row['threads']}t-{row['batch_size']}b",
            run_id=run_id or run_id_of(cfg, row["order"]), notebook=notebook, kind=Kind.MEASURED, **row)
        paths.append(append(record, results_dir, replace=True))
    return paths


def record_stages(stage_records: list[dict[str, Any]], cfg: RunConfig, *, notebook: Notebook,
                  results_dir: str | os.PathLike | None = None, run_id: str | None = None) -> list[Path]:
    """Write one :attr:`Kind.STAGE` record per stage of a pipeline run (``pipeline.run``'s records).

    The training histories stay out of the store. Record ids are ``<notebook>-<order>-<position><stage>``.
    """
    paths = []
    for r in stage_records:
        fields = {k: v for k, v in r.items() if k != "history"} | {"run_id": run_id or r["run_id"]}
        record = make_record(cfg, **fields, record_id=f"{notebook}-{r['order']}-{r['position']}{r['stage']}",
                             notebook=notebook, kind=Kind.STAGE)
        paths.append(append(record, results_dir, replace=True))
    return paths


def load_results(results_dir: str | os.PathLike | None = None, *, machine: str | None = None) -> pd.DataFrame:
    """All records under `results_dir` (default ``reports/results``) as one DataFrame, one row per record.

    Columns: :data:`COLUMNS` first (NaN where a record lacks one), then every other field in
    alphabetical order; ``config`` holds the resolved config as a dict. Rows are sorted by
    timestamp, then record id. A missing directory gives an empty DataFrame with :data:`COLUMNS`.
    `machine` keeps one machine's records (None: every machine; compare latencies within one).
    A record without a ``machine`` field (written before it existed) gets :func:`machine_key` of its own
    host and CPU fields.

    Raises:
        ResultsError: a record file that is not valid JSON or has another schema version (the
            message names the file; the file is left untouched).
    """
    root = Path(results_dir if results_dir is not None else DEFAULT_RESULTS_DIR)
    rows = []
    for path in sorted(root.glob("**/*.json")) if root.is_dir() else []:
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # temporary files, and records staged by a notebook that has not succeeded (yet)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{path}: not a readable record ({type(exc).__name__}: {exc})") from None
        if not isinstance(record, dict):
            raise ResultsError(f"{path}: not a record (expected a JSON object)")
        version = record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ResultsError(f"{path}: record schema_version {version!r}, but this pqd reads version "
                               f"{SCHEMA_VERSION}; regenerate it or load it with the pqd version that wrote it")
        record.setdefault("machine", machine_key(record))
        rows.append(record)
    if machine is not None:
        present = sorted({r["machine"] for r in rows})
        if machine not in present:
            raise ResultsError(f"machine: {machine!r} has no records under {root}; machines there: "
                               f"{', '.join(present) or 'none'}")
        rows = [r for r in rows if r["machine"] == machine]
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = float("nan")
    rest = sorted(c for c in frame.columns if c not in COLUMNS)
    frame = frame[COLUMNS + rest]
    if len(frame):
        frame = frame.sort_values(["timestamp", "record_id"], kind="stable").reset_index(drop=True)
    return frame
