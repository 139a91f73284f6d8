"""The one atomic-write helper: a failed write keeps the old file and leaves no temporary behind."""

import pytest

from pqd_lib._atomic import atomic_path, atomic_write_text


def test_write_replaces_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "table.md"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["table.md"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_temporary_name_is_hidden_and_never_matches_the_real_suffix(tmp_path):
    target = tmp_path / "record.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and not tmp.name.endswith(".json")
        tmp.write_text("{}")
    with atomic_path(tmp_path / "figure.png", keep_suffix=True) as tmp:
        assert tmp.name.startswith(".") and tmp.suffix == ".png"  # savefig picks the format from it
        tmp.write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "record.json"]
