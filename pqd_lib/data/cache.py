"""The decoded-tensor cache: a source's images are decoded once and kept as uint8 tensors on disk.

Files live in ``<cache_root()>/data/<slot>-<digest>.pt``: `slot` names one source (dataset, kind,
root), the digest its identity (file paths, sizes and modification times; the embedded tar's
sha256), so an edited source is decoded again and the stale file removed. Written atomically;
an unreadable file is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path
from ..config import cache_root
from .datasets import DatasetInfo
from .splits import DataSplits

__all__ = ["cache_root", "cached"]

# Bumped whenever decoding or the cache layout changes, so that old caches are never reused.
CACHE_VERSION = 1


def cached(cache: Path, slot: str, key_parts: Sequence[Any], build: Callable[[], DataSplits]) -> DataSplits:
    """Return the cached tensors for `key_parts`, else `build()` them and cache them atomically.

    `slot` names one source (dataset, kind and root); a cache file of the same slot with
    another key is stale (the files changed) and is removed after a successful write.
    """
    digest = hashlib.sha256(repr((CACHE_VERSION, *key_parts)).encode()).hexdigest()[:20]
    path = cache / f"{slot}-{digest}.pt"
    if path.is_file():
        try:
            return _from_payload(torch.load(path, weights_only=True, map_location="cpu"))
        except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
            warnings.warn(f"ignoring unreadable data cache {path} ({exc}); decoding again", stacklevel=3)
    data = build()
    try:
        with atomic_path(path) as tmp:
            torch.save(_to_payload(data), tmp)
        for old in cache.glob(f"{slot}-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full disk costs time, not the run
        warnings.warn(f"could not write data cache in {cache} ({exc}); the next load decodes again", stacklevel=3)
    return data


def _to_payload(d: DataSplits) -> dict[str, Any]:
    return {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test,
            "classes": list(d.classes), "source": d.source, "mean": list(d.mean), "std": list(d.std)}


def _from_payload(p: dict[str, Any]) -> DataSplits:
    return DataSplits(p["x_train"], p["y_train"], p["x_test"], p["y_test"], tuple(p["classes"]),
                      p["source"], tuple(p["mean"]), tuple(p["std"]))


def slot_name(info: DatasetInfo, kind: str, where: Path | str) -> str:
    where_hash = hashlib.sha256(str(where).encode()).hexdigest()[:8]
    return f"{info.name.lower().replace('-', '')}-{kind}-{where_hash}"

