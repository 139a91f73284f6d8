"""Move records of the old layout ``<results>/<run_id>/<record_id>.json`` to ``<results>/<machine>/<run_id>/``.

Records of different machines used to share one path and overwrite each other (issue 17). Each
moved record keeps its content and gains the ``machine`` field, derived from the ``hostname``,
``cpu_model`` and ``cpu_count`` it already carries (:func:`pqd_lib.results.machine_key`). Files are
written atomically before the old copy is removed; records already in the new layout are left as
they are, so running the script twice changes nothing. No re-measuring.

    python scripts/migrate_results_machine.py [reports/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pqd_lib._atomic import atomic_write_text
from pqd_lib.config import DEFAULT_RESULTS_DIR
from pqd_lib.results import machine_key


def migrate(root: Path) -> int:
    """Move every old-layout record under `root`; return how many moved."""
    moved = 0
    for path in sorted(root.glob("*/*.json")):
        if path.name.startswith(".") or path.parent.name.startswith("."):
            continue
        record = json.loads(path.read_text())
        record.setdefault("machine", machine_key(record.get("hostname"), record.get("cpu_model"),
                                                 record.get("cpu_count")))
        target = root / record["machine"] / path.parent.name / path.name
        if target.exists():
            raise SystemExit(f"{target}: exists already; refusing to overwrite it with {path}")
        atomic_write_text(target, json.dumps(record, indent=1, sort_keys=False) + "\n")
        path.unlink()
        moved += 1
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return moved


def main(argv: list[str]) -> int:
    """Migrate the results folder named in `argv` (default reports/results)."""
    root = Path(argv[0] if argv else DEFAULT_RESULTS_DIR)
    print(f"{migrate(root)} records moved under {root}/<machine>/<run_id>/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
