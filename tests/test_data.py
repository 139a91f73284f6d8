"""Tests of pqd_lib.data: sources, cache, errors, augmentation, batches, subsets.

No network: the torchvision path is exercised on tiny synthetic archives written in
torchvision's on-disk format. torchvision checks every file's md5 against the official
archive, which synthetic files cannot match, so those tests replace only that check
(``torchvision.datasets.cifar.check_integrity``, used for the data and the meta file)
with "the file exists", inside the test; the code under test is unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pqd_lib import data
from pqd_lib.config import DataConfig
from pqd_lib.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_CLASSES,
    DataError,
    DataSplits,
    augment,
    batches,
    normalize,
)

REPO = Path(__file__).resolve().parents[1]
MIRROR = REPO / ".." / "shared" / "data" / "cifar10-jpeg.tar.gz"


def files_under(path: Path) -> list[Path]:
    """Every file below `path` (temporary files included): a failed load must leave none."""
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def embedded(embedded_cache) -> DataSplits:
    return data.load(DataConfig(source="embedded"), cache_dir=embedded_cache)


# --- the embedded mini set ----------------------------------------------------
def test_embedded_loads_balanced_uint8(embedded):
    d = embedded
    assert d.source == "CIFAR-10 mini (embedded)"
    assert d.classes == CIFAR10_CLASSES and d.num_classes == 10
    assert d.x_train.shape == (5000, 3, 32, 32) and d.x_test.shape == (1000, 3, 32, 32)
    assert d.x_train.dtype == d.x_test.dtype == torch.uint8
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    assert d.x_train.is_contiguous() and d.x_test.is_contiguous()
    assert d.y_train.bincount().tolist() == [500] * 10
    assert d.y_test.bincount().tolist() == [100] * 10
    assert d.mean == CIFAR10_MEAN and d.std == CIFAR10_STD
    # Real photographs, not blank decodes: the subset's pixel mean is near CIFAR-10's.
    mean = d.x_train.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.03)


def test_embedded_second_load_hits_cache(tmp_path, monkeypatch):
    cfg = DataConfig(source="embedded")
    first = data.load(cfg, cache_dir=tmp_path)
    cached = files_under(tmp_path)
    assert len(cached) == 1 and cached[0].parent == tmp_path / "data" and cached[0].suffix == ".pt"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(data.sources, "_decode_images", no_decoding)
    second = data.load(cfg, cache_dir=tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert (second.classes, second.source, second.mean) == (first.classes, first.source, first.mean)


def test_cache_dir_follows_pqd_cache(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree", "PNG", n_train=1, n_test=1)
    monkeypatch.setenv("PQD_CACHE", str(tmp_path / "envcache"))
    data.load(DataConfig(source="folder", root=str(tmp_path / "tree")))
    assert len(files_under(tmp_path / "envcache" / "data")) == 1


def test_unreadable_cache_is_rebuilt(tmp_path):
    make_tree(tmp_path / "tree", "PNG", n_train=1, n_test=1)
    cfg = DataConfig(source="folder", root=str(tmp_path / "tree"))
    data.load(cfg, cache_dir=tmp_path / "cache")
    (cache_file,) = files_under(tmp_path / "cache")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable data cache"):
        d = data.load(cfg, cache_dir=tmp_path / "cache")
    assert len(d.y_train) == 10
    assert torch.load(cache_file, weights_only=True)["x_train"].shape == (10, 3, 32, 32)


def test_embedded_tar_matches_its_readme():
    tar = data.EMBEDDED_TAR
    readme = (tar.parent / "README.md").read_text()
    assert hashlib.sha256(tar.read_bytes()).hexdigest() in readme
    assert f"{tar.stat().st_size:,} bytes" in readme


@pytest.mark.skipif(not MIRROR.is_file(), reason="the CIFAR-10 JPEG mirror archive is not beside the checkout")
def test_make_embedded_is_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("make_embedded", REPO / "scripts" / "make_embedded.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(MIRROR), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "cifar10_mini.tar").read_bytes() == data.EMBEDDED_TAR.read_bytes()


def test_no_embedded_cifar100(tmp_path):
    with pytest.raises(DataError, match="embedded exists only for CIFAR-10"):
        data.load(DataConfig(dataset="cifar100", source="embedded"), cache_dir=tmp_path)


# --- image-folder trees -------------------------------------------------------
def make_tree(root: Path, fmt: str = "PNG", n_train: int = 3, n_test: int = 2, seed: int = 0) -> dict:
    """Write root/{train,test}/<class>/NNNN.<ext> with random 32x32 images; return the arrays written."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays, labels = [], []
        for label, cls in enumerate(CIFAR10_CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i:04d}.{ext}", format=fmt)
                arrays.append(arr)
                labels.append(label)
        written[split] = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), torch.tensor(labels))
    return written


def test_folder_png_is_lossless(tmp_path):
    written = make_tree(tmp_path / "tree", "PNG")
    d = data.load(DataConfig(source="folder", root=str(tmp_path / "tree")), cache_dir=tmp_path / "cache")
    assert d.source == "CIFAR-10 (image folder)" and d.classes == CIFAR10_CLASSES
    for split in ("train", "test"):
        x, y = written[split]
        assert torch.equal(getattr(d, f"x_{split}"), x)
        assert torch.equal(getattr(d, f"y_{split}"), y)
    assert d.x_train.is_contiguous() and d.y_train.dtype == torch.int64


def test_folder_jpeg_is_named_as_the_mirror(tmp_path):
    from PIL import Image

    tree = tmp_path / "tree"
    make_tree(tree, "JPEG")
    d = data.load(DataConfig(source="folder", root=str(tree)), cache_dir=tmp_path / "cache")
    assert d.source == "CIFAR-10 (JPEG q75 mirror)"
    assert d.x_train.shape == (30, 3, 32, 32)
    # JPEG is lossy, so the oracle is PIL's own decode of the file, not the array written.
    with Image.open(tree / "train" / "horse" / "0002.jpg") as img:
        ref = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(d.x_train[CIFAR10_CLASSES.index("horse") * 3 + 2], ref)


def test_folder_root_from_pqd_data(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree", "PNG", n_train=1, n_test=1)
    monkeypatch.setenv("PQD_DATA", str(tmp_path / "tree"))
    d = data.load(DataConfig(source="folder"), cache_dir=tmp_path / "cache")
    assert len(d.y_train) == 10 and len(d.y_test) == 10


def test_folder_cache_notices_changed_files(tmp_path):
    from PIL import Image

    tree = tmp_path / "tree"
    make_tree(tree, "PNG", n_train=1, n_test=1)
    cfg = DataConfig(source="folder", root=str(tree))
    before = data.load(cfg, cache_dir=tmp_path / "cache")
    target = tree / "train" / "bird" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a sure mtime change
    after = data.load(cfg, cache_dir=tmp_path / "cache")
    assert not torch.equal(before.x_train[2], after.x_train[2])
    assert (after.x_train[2] == 7).all()
    assert len(files_under(tmp_path / "cache")) == 1  # the stale cache file was replaced


def break_missing_class(tree: Path) -> None:
    shutil.rmtree(tree / "train" / "cat")


def break_extra_class(tree: Path) -> None:
    (tree / "test" / "unicorn").mkdir()


def break_corrupt_image(tree: Path) -> None:
    (tree / "train" / "dog" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def break_wrong_size(tree: Path) -> None:
    from PIL import Image

    Image.new("RGB", (28, 28)).save(tree / "test" / "ship" / "0000.png")


def break_remove_root(tree: Path) -> None:
    shutil.rmtree(tree)


def break_empty_class(tree: Path) -> None:
    for f in (tree / "test" / "frog").iterdir():
        f.unlink()


@pytest.mark.parametrize("breaker, expected", [
    (break_missing_class, ["missing class folder", "cat"]),
    (break_extra_class, ["unexpected folder", "unicorn"]),
    (break_corrupt_image, ["cannot decode image", "dog/0001.png"]),
    (break_wrong_size, ["28x28", "32x32", "ship/0000.png"]),
    (break_remove_root, ["does not exist", "tree", "PQD_DATA"]),
    (break_empty_class, ["no images", "frog"]),
])
def test_folder_errors_name_the_problem(tmp_path, breaker, expected):
    tree = tmp_path / "tree"
    make_tree(tree, "PNG", n_train=2, n_test=1)
    breaker(tree)
    with pytest.raises(DataError) as err:
        data.load(DataConfig(source="folder", root=str(tree)), cache_dir=tmp_path / "cache")
    for fragment in expected:
        assert fragment in str(err.value)
    assert files_under(tmp_path / "cache") == []  # no cache, not even a temporary file


# --- torchvision's on-disk format (synthetic archives) -----------------------
FAKE_LAYOUT = {
    # dataset: (folder, train files, test file, label key, meta file, meta key, classes)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "labels", "batches.meta", "label_names", CIFAR10_CLASSES),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels", "meta", "fine_label_names",
                 CIFAR100_CLASSES),
}


def write_fake_torchvision(root: Path, dataset: str, per_file: int = 40, seed: int = 0) -> dict:
    """Write a tiny archive in torchvision's CIFAR pickle format; return the expected tensors."""
    folder, train_files, test_file, label_key, meta_file, meta_key, classes = FAKE_LAYOUT[dataset]
    base = root / folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    expected = {}
    for split, names in (("train", train_files), ("test", [test_file])):
        xs, ys = [], []
        for name in names:
            rows = rng.integers(0, 256, size=(per_file, 3 * 32 * 32), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, len(classes), size=per_file)]
            with open(base / name, "wb") as f:
                pickle.dump({"data": rows, label_key: labels}, f)
            xs.append(rows)
            ys.extend(labels)
        # A row is R(1024) G(1024) B(1024) in row-major order, i.e. CHW.
        expected[split] = (torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32), torch.tensor(ys))
    with open(base / meta_file, "wb") as f:
        pickle.dump({meta_key: list(classes)}, f)
    return expected


@pytest.fixture
def skip_md5(monkeypatch):
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.mark.parametrize("dataset, name, classes", [
    ("cifar10", "CIFAR-10", CIFAR10_CLASSES),
    ("cifar100", "CIFAR-100", CIFAR100_CLASSES),
])
def test_torchvision_format_loads(tmp_path, skip_md5, dataset, name, classes):
    expected = write_fake_torchvision(tmp_path / "root", dataset)
    cfg = DataConfig(dataset=dataset, source="torchvision", root=str(tmp_path / "root"), download=False)
    d = data.load(cfg, cache_dir=tmp_path / "cache")
    assert d.source == f"{name} (torchvision)"
    assert d.classes == classes and d.num_classes == len(classes)
    for split in ("train", "test"):
        x, y = expected[split]
        assert torch.equal(getattr(d, f"x_{split}"), x)
        assert torch.equal(getattr(d, f"y_{split}"), y)
        assert getattr(d, f"x_{split}").is_contiguous()
        assert getattr(d, f"y_{split}").dtype == torch.int64
    again = data.load(cfg, cache_dir=tmp_path / "cache")
    assert torch.equal(again.x_train, d.x_train)
    assert len(files_under(tmp_path / "cache")) == 1


def test_torchvision_missing_without_download_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PQD_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError) as err:
        data.load(DataConfig(dataset="cifar100", source="torchvision", download=False), cache_dir=tmp_path / "c")
    message = str(err.value)
    for fragment in ("CIFAR-100 not found", str(tmp_path / "empty"), "PQD_DATA", "data.source: folder",
                     "data.download"):
        assert fragment in message
    assert files_under(tmp_path / "c") == []


def test_torchvision_corrupt_archive_is_a_clear_error(tmp_path):
    # The real md5 check stays on here: synthetic files fail it, as a damaged download would.
    write_fake_torchvision(tmp_path / "root", "cifar10", per_file=2)
    cfg = DataConfig(source="torchvision", root=str(tmp_path / "root"), download=False)
    with pytest.raises(DataError, match="incomplete or corrupted"):
        data.load(cfg, cache_dir=tmp_path / "cache")
    assert files_under(tmp_path / "cache") == []


# --- augmentation and normalisation -----------------------------------------
def test_augment_is_seeded_and_keeps_shape():
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8 and a.is_contiguous()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, x.clone())  # the input is untouched


def test_augment_is_a_padded_crop_and_flip():
    # Oracle: every output must be one of the 9 x 9 x 2 shifted (zero-filled) and flipped copies.
    img = torch.randint(1, 256, (3, 32, 32), dtype=torch.uint8)  # no zeros: padding is recognisable
    padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
    padded[:, 4:36, 4:36] = img
    candidates = {}
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, dy:dy + 32, dx:dx + 32]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(-1)
    out = augment(img.expand(400, 3, 32, 32).contiguous(), torch.Generator().manual_seed(0))
    seen = set()
    for o in out:
        match = [k for k, v in candidates.items() if torch.equal(o, v)]
        assert match, "an output is not a shifted/flipped copy of the input"
        seen.add(match[0])
    assert {k[2] for k in seen} == {False, True}
    assert len({k[:2] for k in seen}) > 40  # many distinct shifts, corners included sometimes
    assert {0, 8} <= {k[0] for k in seen} and {0, 8} <= {k[1] for k in seen}


def test_augment_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        augment(torch.rand(2, 3, 32, 32), torch.Generator())


def test_normalize_matches_formula():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (mean, std))
    ref = (x.double() / 255 - m) / s
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)


# --- batches -------------------------------------------------------------------
def small_splits(n_train: int = 50, n_test: int = 23) -> DataSplits:
    g = torch.Generator().manual_seed(0)
    return DataSplits.from_tensors(
        torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.arange(n_train) % 5,
        torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.arange(n_test) % 5,
    )


def test_batches_cover_the_test_set_once_in_order(embedded):
    xs, ys = [], []
    for xb, yb in batches(embedded, "test", 300, shuffle=False, augment=False):
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        xs.append(xb)
        ys.append(yb)
    assert [len(y) for y in ys] == [300, 300, 300, 100]
    assert torch.equal(torch.cat(ys), embedded.y_test)
    assert torch.equal(torch.cat(xs), normalize(embedded.x_test, embedded.mean, embedded.std))


def test_batches_shuffle_is_a_seeded_permutation():
    d = small_splits()
    # Label each image by its index to see the order.
    d = DataSplits.from_tensors(d.x_train, torch.arange(50), d.x_test, d.y_test, classes=[str(i) for i in range(50)])
    run = lambda seed: [(x, y) for x, y in batches(d, "train", 16, shuffle=True, augment=True,
                                                     generator=torch.Generator().manual_seed(seed))]
    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    order = torch.cat([y for _, y in a])
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert not torch.equal(order, torch.cat([y for _, y in c]))


def test_batches_options():
    d = small_splits()
    sizes = [len(y) for _, y in batches(d, "train", 16, shuffle=False, augment=False, drop_last=True)]
    assert sizes == [16, 16, 16]
    xb, _ = next(batches(d, "train", 8, shuffle=True, augment=True, channels_last=True,
                         generator=torch.Generator().manual_seed(0)))
    assert xb.is_contiguous(memory_format=torch.channels_last) and xb.shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="split"):
        next(batches(d, "valid", 8, shuffle=False, augment=False))
    assert data.num_batches(50, 16) == 4 and data.num_batches(50, 16, drop_last=True) == 3


def test_batches_without_generator_follow_torch_manual_seed():
    d = small_splits()
    torch.manual_seed(5)
    a = [y for _, y in batches(d, "train", 10, shuffle=True, augment=False)]
    torch.manual_seed(5)
    b = [y for _, y in batches(d, "train", 10, shuffle=True, augment=False)]
    assert all(torch.equal(ya, yb) for ya, yb in zip(a, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_match_cpu():
    d = small_splits()
    cpu = list(batches(d, "train", 16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    gpu = list(batches(d.to("cuda"), "train", 16, shuffle=True, augment=True,
                       generator=torch.Generator().manual_seed(0)))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


# --- from_tensors and subset --------------------------------------------------------
def test_from_tensors_round_trip():
    d = small_splits()
    again = DataSplits.from_tensors(d.x_train, d.y_train, d.x_test, d.y_test)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    assert again.classes == ("0", "1", "2", "3", "4") and again.source == "user tensors"
    # Floats in [0, 1] become the same uint8 values.
    floats = DataSplits.from_tensors(d.x_train.float() / 255, d.y_train.int(), d.x_test.double() / 255, d.y_test)
    assert torch.equal(floats.x_train, d.x_train) and torch.equal(floats.x_test, d.x_test)
    assert floats.y_train.dtype == torch.int64
    # Statistics computed from x_train.
    ref_mean = (d.x_train.double() / 255).mean(dim=(0, 2, 3))
    ref_std = (d.x_train.double() / 255).std(dim=(0, 2, 3), unbiased=False)
    assert np.allclose(d.mean, ref_mean.numpy()) and np.allclose(d.std, ref_std.numpy())
    numpy_made = DataSplits.from_tensors(d.x_train.numpy(), d.y_train.numpy(), d.x_test.numpy(), d.y_test.numpy())
    assert torch.equal(numpy_made.x_train, d.x_train)
    assert d.to("cpu").x_train.device.type == "cpu"
    assert "user tensors" in repr(d) and len(repr(d)) < 200


@pytest.mark.parametrize("change, fragment", [
    (dict(x_train=torch.zeros(4, 32, 32, dtype=torch.uint8)), "4 dimensions"),
    (dict(x_train=torch.zeros(4, 32, 32, 3, dtype=torch.uint8)), "channels-last"),
    (dict(x_train=torch.zeros(4, 3, 32, 32, dtype=torch.int32)), "uint8"),
    (dict(x_train=torch.full((4, 3, 32, 32), 2.0)), "[0, 1]"),
    (dict(y_train=torch.zeros(5, dtype=torch.int64)), "5 labels"),
    (dict(y_train=torch.zeros(4, 1, dtype=torch.int64)), "shape (N,)"),
    (dict(y_train=torch.zeros(4)), "integer"),
    (dict(y_train=torch.tensor([0, 1, 2, 9]), classes=["a", "b", "c"]), "out of range"),
    (dict(x_test=torch.zeros(2, 3, 16, 16, dtype=torch.uint8)), "same (C, H, W)"),
])
def test_from_tensors_rejects_bad_input(change, fragment):
    args = dict(x_train=torch.zeros(4, 3, 32, 32, dtype=torch.uint8), y_train=torch.tensor([0, 1, 2, 0]),
                x_test=torch.zeros(2, 3, 32, 32, dtype=torch.uint8), y_test=torch.tensor([0, 1]))
    args.update(change)
    with pytest.raises(ValueError) as err:
        DataSplits.from_tensors(**args)
    assert fragment in str(err.value)


def test_subset_is_balanced_and_deterministic(embedded):
    a = embedded.subset(1000, 200, seed=0)
    assert a.y_train.bincount().tolist() == [100] * 10 and a.y_test.bincount().tolist() == [20] * 10
    assert a.x_train.shape == (1000, 3, 32, 32) and a.x_train.is_contiguous()
    b = embedded.subset(1000, 200, seed=0)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    c = embedded.subset(1000, 200, seed=1)
    assert not torch.equal(a.x_train, c.x_train)
    odd = embedded.subset(1003, None, seed=0)
    assert sorted(odd.y_train.bincount().tolist()) == [100] * 7 + [101] * 3
    assert torch.equal(odd.x_test, embedded.x_test)
    with pytest.raises(DataError, match="5000 train images"):
        embedded.subset(10000, None, seed=0)


def test_subset_fills_from_larger_classes_when_one_is_short():
    x = torch.zeros(13, 3, 4, 4, dtype=torch.uint8)
    y = torch.tensor([0] * 10 + [1] * 2 + [2])  # class sizes 10, 2, 1
    d = DataSplits.from_tensors(x, y, x[:3], torch.tensor([0, 1, 2]))
    assert d.subset(9, None, seed=0).y_train.bincount().tolist() == [6, 2, 1]


def test_load_applies_subsets(embedded, embedded_cache):
    cfg = DataConfig(source="embedded", train_subset=500, test_subset=200)
    d = data.load(cfg, seed=3, cache_dir=embedded_cache)
    assert d.y_train.bincount().tolist() == [50] * 10 and d.y_test.bincount().tolist() == [20] * 10
    assert torch.equal(d.x_train, embedded.subset(500, 200, seed=3).x_train)
