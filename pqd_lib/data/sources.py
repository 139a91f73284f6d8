"""Where images come from: three sources, chosen by :attr:`pqd_lib.config.DataConfig.source`.

``torchvision``
    The official archives through ``torchvision.datasets.CIFAR10/CIFAR100`` (downloaded
    into the data root when missing and ``download`` is true). The default for users.
``folder``
    An image-folder tree ``root/train/<class>/*`` and ``root/test/<class>/*`` whose class
    folders are exactly the dataset's classes, e.g. the offline JPEG mirror of CIFAR-10
    (``../shared/data/cifar10-jpeg.tar.gz``). Every image must decode (PIL) to 32x32.
``embedded``
    A balanced real subset of CIFAR-10 shipped in the package (500 train + 100 test
    images per class, the original JPEG files of the mirror byte for byte, in
    ``pqd_lib/embedded/cifar10_mini.tar``; provenance in ``pqd_lib/embedded/README.md``).
    Needs no download; meant for tests, notebooks in CI and quick looks, not for results.

The data root is ``DataConfig.root``, else ``$PQD_DATA``, else ``~/.cache/pqd/data``. Decoded
images are cached (:mod:`pqd_lib.data.cache`), so later loads take about a second.

Normalisation always uses the dataset's standard per-channel mean/std (computed on the
full original training set), whichever source or subset is loaded, so a model sees the
same input scale on every copy of the data.

Testing note: CIFAR-100 cannot be downloaded on the project's machines, so the
``torchvision`` path for CIFAR-100 (and for CIFAR-10) is tested only on a small synthetic
archive written in torchvision's on-disk format (``tests/test_data.py``).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from .cache import cache_root, cached, slot_name
from .datasets import DATASETS, DatasetInfo
from .splits import SPLITS, DataError, DataSplits

__all__ = ["SOURCES", "EMBEDDED_TAR", "load", "data_root"]

EMBEDDED_TAR = Path(__file__).resolve().parents[1] / "embedded" / "cifar10_mini.tar"

# Extensions read from an image-folder tree (torchvision's ImageFolder list); other files,
# and names starting with ".", are ignored so that README files or .DS_Store do not break a load.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The sources serve CIFAR, whose images are 32x32 RGB (a user's own shapes go through from_tensors).
IMAGE_SIZE = 32


def data_root(cfg: DataConfig) -> Path:
    """The data root: ``cfg.root``, else ``$PQD_DATA``, else ``~/.cache/pqd/data``."""
    return Path(cfg.root or os.environ.get("PQD_DATA") or "~/.cache/pqd/data").expanduser()


def _decode_images(items: Sequence[tuple[str, Callable[[], Any]]]) -> tuple[np.ndarray, set[str]]:
    """Decode (name, opener) pairs with PIL into an (N, 32, 32, 3) uint8 array; also the formats seen.

    `opener` returns a path or a binary file object. An image that does not decode, or is
    not 32x32, raises DataError naming it.
    """
    out = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    formats: set[str] = set()
    for i, (name, opener) in enumerate(items):
        try:
            with Image.open(opener()) as img:
                formats.add(img.format or "?")
                if img.size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise DataError(f"{name}: image is {img.size[0]}x{img.size[1]} pixels; CIFAR images "
                                    f"are {IMAGE_SIZE}x{IMAGE_SIZE}")
                out[i] = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except DataError:
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise DataError(f"{name}: cannot decode image ({type(exc).__name__}: {exc}); "
                            "replace or delete the file") from None
    return out, formats


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def _check_class_dirs(where: str, found: set[str], classes: tuple[str, ...]) -> None:
    missing = [c for c in classes if c not in found]
    extra = sorted(found - set(classes))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folder(s): {_names(missing)}")
        if extra:
            parts.append(f"unexpected folder(s): {_names(extra)}")
        raise DataError(f"{where}: {'; '.join(parts)}. The class folders must be exactly the "
                        f"{len(classes)} classes of the dataset ({_names(classes)})")


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _split_result(info: DatasetInfo, decoded: dict[str, tuple[np.ndarray, list[int]]], source: str) -> DataSplits:
    tensors = {}
    for split, (x, labels) in decoded.items():
        tensors[f"x_{split}"] = _to_nchw(x)
        tensors[f"y_{split}"] = torch.tensor(labels, dtype=torch.int64)
    return DataSplits(**tensors, classes=info.classes, source=source, mean=info.mean, std=info.std)

# --- source: image-folder tree ---------------------------------------------
def _scan_folder(root: Path, info: DatasetInfo) -> dict[str, list[tuple[os.DirEntry, int]]]:
    """List and check the tree: every split has exactly the dataset's class folders, none empty."""
    if not root.exists():
        raise DataError(f"data root {root} does not exist; expected an image-folder tree "
                        f"{root}/train/<class>/*, {root}/test/<class>/*. {_hint(info)}")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory. {_hint(info)}")
    listing: dict[str, list[tuple[os.DirEntry, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: no '{split}' folder; an image-folder tree needs "
                            f"{root}/train/<class>/* and {root}/test/<class>/*")
        with os.scandir(split_dir) as it:
            found = {e.name for e in it if e.is_dir() and not e.name.startswith(".")}
        _check_class_dirs(str(split_dir), found, info.classes)
        entries = []
        for label, cls in enumerate(info.classes):
            with os.scandir(split_dir / cls) as it:
                files = sorted((e for e in it if e.is_file() and not e.name.startswith(".")
                                and e.name.lower().endswith(IMG_EXTENSIONS)), key=lambda e: e.name)
            if not files:
                raise DataError(f"{split_dir / cls}: no images (looked for {', '.join(IMG_EXTENSIONS)})")
            entries.extend((e, label) for e in files)
        listing[split] = entries
    return listing


def _load_folder(info: DatasetInfo, cfg: DataConfig, cache: Path) -> DataSplits:
    root = data_root(cfg).resolve()
    listing = _scan_folder(root, info)
    # Identity of the tree: every image's path, size and mtime (cheap to stat, catches edits).
    key = [str(root), info.name]
    for split, entries in listing.items():
        for e, label in entries:
            st = e.stat()
            key.append((e.path, label, st.st_size, st.st_mtime_ns))

    def build() -> DataSplits:
        decoded, formats = {}, set()
        for split, entries in listing.items():
            x, seen = _decode_images([(e.path, (lambda p=e.path: p)) for e, _ in entries])
            decoded[split] = (x, [label for _, label in entries])
            formats |= seen
        # The offline mirror is JPEG q75 (see ../shared/data/README.md); an all-JPEG CIFAR-10
        # tree is taken to be that mirror. Any other tree gets the generic name.
        if info.name == "CIFAR-10" and formats == {"JPEG"}:
            source = "CIFAR-10 (JPEG q75 mirror)"
        else:
            source = f"{info.name} (image folder)"
        return _split_result(info, decoded, source)

    return cached(cache, slot_name(info, "folder", root), key, build)


# --- source: the embedded mini set -------------------------------------------
def _load_embedded(info: DatasetInfo, cfg: DataConfig, cache: Path) -> DataSplits:
    if info.name != "CIFAR-10":
        raise DataError(f"data.source: embedded exists only for CIFAR-10, not {info.name}. "
                        f"Use data.source: torchvision or folder. {_hint(info)}")
    if not EMBEDDED_TAR.is_file():
        raise DataError(f"the embedded CIFAR-10 subset {EMBEDDED_TAR} is missing from this installation "
                        "(it ships as package data; reinstall pqd or run scripts/make_embedded.py)")
    blob = EMBEDDED_TAR.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()

    def build() -> DataSplits:
        members: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in SPLITS}
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = m.name.split("/")
                if len(parts) != 3 or parts[0] not in members:
                    raise DataError(f"{EMBEDDED_TAR}: unexpected member {m.name!r}; expected "
                                    "train/<class>/<file> or test/<class>/<file>")
                members[parts[0]].setdefault(parts[1], []).append((m.name, tf.extractfile(m).read()))
        decoded = {}
        for split in SPLITS:
            _check_class_dirs(f"{EMBEDDED_TAR}:{split}/", set(members[split]), info.classes)
            items, labels = [], []
            for label, cls in enumerate(info.classes):
                for name, data in sorted(members[split][cls]):
                    items.append((f"{EMBEDDED_TAR}:{name}", (lambda d=data: io.BytesIO(d))))
                    labels.append(label)
            decoded[split] = (_decode_images(items)[0], labels)
        return _split_result(info, decoded, "CIFAR-10 mini (embedded)")

    return cached(cache, "cifar10-embedded", [sha], build)


# --- source: torchvision ----------------------------------------------------
def _load_torchvision(info: DatasetInfo, cfg: DataConfig, cache: Path) -> DataSplits:
    # Imported here, not at the top: importing torchvision costs ~3 s of CPU, which every process that
    # imports pqd_lib would pay (each latency worker of the rounds protocol, each notebook kernel).
    import torchvision

    tv_cls = getattr(torchvision.datasets, info.torchvision_class)
    root = data_root(cfg).resolve()
    base = root / tv_cls.base_folder
    files = [base / name for name, _ in tv_cls.train_list + tv_cls.test_list] + [base / tv_cls.meta["filename"]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        if not cfg.download:
            raise DataError(f"{info.name} not found: {base} lacks {_names(missing)} and data.download is "
                            f"false. {_hint(info)}")
        try:
            tv_cls(str(root), train=True, download=True)
        except Exception as exc:  # no network, proxy, disk full, checksum: all end the same way
            raise DataError(f"{info.name}: download into {root} failed ({type(exc).__name__}: {exc}). "
                            f"{_hint(info)}") from None
    key = [str(root), info.name] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]

    def build() -> DataSplits:
        decoded = {}
        for split in SPLITS:
            try:
                ds = tv_cls(str(root), train=(split == "train"), download=False)
            except RuntimeError as exc:  # torchvision's md5 check failed
                raise DataError(f"{info.name} under {base} is incomplete or corrupted ({exc}). Delete "
                                f"{base} and download again. {_hint(info)}") from None
            if tuple(ds.classes) != info.classes:
                raise DataError(f"{base}: class names {_names(list(ds.classes))} differ from torchvision's "
                                f"{info.name} classes {_names(info.classes)}")
            decoded[split] = (np.ascontiguousarray(ds.data, dtype=np.uint8), list(ds.targets))
        return _split_result(info, decoded, f"{info.name} (torchvision)")

    return cached(cache, slot_name(info, "torchvision", root), key, build)


# A registry, not an if/elif chain: DataConfig.source -> loader.
SOURCES: dict[str, Callable[[DatasetInfo, DataConfig, Path], DataSplits]] = {
    "torchvision": _load_torchvision,
    "folder": _load_folder,
    "embedded": _load_embedded,
}



def load(cfg: DataConfig, *, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> DataSplits:
    """Load the dataset described by `cfg` as uint8 tensors on the CPU, then apply its subsets.

    The first load decodes the source and caches the tensors under ``<cache_dir>/data/``;
    later loads of an unchanged source read the cache. ``cfg.train_subset`` and
    ``cfg.test_subset`` are applied afterwards with :meth:`DataSplits.subset` and `seed`.

    Args:
        cfg: dataset (cifar10/cifar100), source (torchvision/folder/embedded), root, download, subsets.
        seed: drives the balanced subset choice (ignored when no subset is asked for).
        cache_dir: cache directory; None means ``$PQD_CACHE``, else ``~/.cache/pqd``.

    Raises:
        DataError: data missing (with how to get it), class folders that do not match the
            dataset, an undecodable image, a subset larger than the data.
    """
    # cfg.dataset and cfg.source are checked where DataConfig declares them.
    full = SOURCES[cfg.source](DATASETS[cfg.dataset], cfg, cache_root(cache_dir) / "data")
    return full.subset(cfg.train_subset, cfg.test_subset, seed)


def _hint(info: DatasetInfo) -> str:
    embedded = ("; or, for a quick look, set data.source: embedded (5,000 + 1,000 CIFAR-10 images shipped "
                "with pqd)") if info.name == "CIFAR-10" else ""
    return (f"To get {info.name}: let torchvision download it (data.download: true; needs internet); "
            f"or point PQD_DATA (or data.root) at an image-folder tree train/<class>/*, test/<class>/* "
            f"and set data.source: folder{embedded}.")

