"""Put every record of a results store under ``<results>/<machine>/<run_id>/``, with today's machine key.

Records of different machines used to share one path and overwrite each other (issue 17); the first
machine key (host, CPU model, cores) still gave one name to two different CPUs (a Zen 4 with AVX-512
VNNI and an AVX2-only EPYC, both "AMD EPYC, 2 cores"). This script moves records of the old layout
``<results>/<run_id>/<record_id>.json`` and re-keys records whose ``machine`` was derived
automatically with the old key; a name chosen with ``$PQD_MACHINE`` is kept. Each record keeps its
content apart from the ``machine`` field, derived from the ``hostname``, ``cpu_model``, ``isa_*`` or
``cpu_capability_class`` and ``cpu_count`` it carries (:func:`pqd_lib.results.machine_key`). Files
are written atomically before the old copy is removed; running the script twice changes nothing.
No re-measuring.

    python scripts/migrate_results_machine.py [reports/results]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pqd_lib._atomic import atomic_write_text
from pqd_lib.config import DEFAULT_RESULTS_DIR
from pqd_lib.results import machine_key


def _first_key(record: dict) -> str:
    """The machine key of the first layout (host, CPU model, cores), to recognise derived names."""
    words = [record.get("hostname"), record.get("cpu_model"),
             f"{record['cpu_count']}c" if record.get("cpu_count") else None]
    return re.sub(r"[^a-z0-9]+", "-", " ".join(w for w in words if w).lower()).strip("-") or "unknown-machine"


def migrate(root: Path) -> int:
    """Move every record under `root` that is not where today's layout puts it; return how many moved."""
    moved = 0
    for path in sorted(root.glob("**/*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        record = json.loads(path.read_text())
        if record.get("machine") in (None, _first_key(record)):
            record["machine"] = machine_key(record)
        target = root / record["machine"] / path.parent.name / path.name
        if target == path:
            continue
        if target.exists():
            raise SystemExit(f"{target}: exists already; refusing to overwrite it with {path}")
        atomic_write_text(target, json.dumps(record, indent=1, sort_keys=False) + "\n")
        path.unlink()
        moved += 1
    for folder in sorted(root.glob("**/"), key=lambda p: len(p.parts), reverse=True) if root.is_dir() else []:
        if folder != root and not any(folder.iterdir()):
            folder.rmdir()
    return moved


def main(argv: list[str]) -> int:
    """Migrate the results folder named in `argv` (default reports/results)."""
    root = Path(argv[0] if argv else DEFAULT_RESULTS_DIR)
    print(f"{migrate(root)} records moved under {root}/<machine>/<run_id>/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
