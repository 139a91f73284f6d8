"""The one way pqd writes a file: into a temporary name beside it, then renamed into place.

``os.replace`` is atomic on POSIX and Windows within one directory, so a reader (a concurrent
``load_results``, a resumed batch, the next notebook) sees the old file or the new one, never half of
one; an interrupted write leaves no partial file under the real name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds, delete it if not.

    The temporary name starts with ``.`` and ends in ``.tmp``, so globs for the real files (``*.json``,
    ``*.pt``) never pick it up. ``keep_suffix=True`` ends it in `path`'s own suffix instead, for writers
    that choose the format from the extension (``savefig``, ``torch.export.save``, ONNX); the leading dot
    still hides it from ``glob("[!.]*")``-style listings. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unique = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp = path.with_name(f".{path.stem}.{unique}.tmp{path.suffix}" if keep_suffix else f".{path.name}.{unique}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
