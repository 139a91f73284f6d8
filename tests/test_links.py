"""Every badge and link derives from the one address in pyproject.toml ([project.urls] Repository).

scripts/sync_links.py writes them; these tests fail when README.md or a notebook disagrees with the
address (run the script), when a Binder, Colab or GitHub link was written by hand, and they check that
changing the address in pyproject.toml and running the script is all that publishing takes.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_links", ROOT / "scripts" / "sync_links.py")
sync_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_links)

URL = re.compile(r"""https?://[^\s)\]"'<>`]+""")
# Hosts whose links must come from the address: the repository itself, Binder, Colab.
DERIVED = ("github.com", "githubusercontent.com", "mybinder.org", "colab.research.google.com")


def _texts(root: Path) -> dict[str, str]:
    """README.md and the source of every notebook cell, by place."""
    out = {"README.md": (root / "README.md").read_text()}
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            out[f"{path.name}:{cell.get('id')}"] = "".join(cell["source"])
    return out


def test_address_is_a_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", sync_links.address())


def test_readme_and_notebooks_are_in_sync_with_the_address():
    changes = sync_links.sync(ROOT, write=False)
    assert not changes, "out of date with pyproject.toml's address; run: python scripts/sync_links.py\n" + "\n".join(changes)


def test_no_link_is_written_by_hand():
    allowed = sync_links.links(ROOT)
    stray = [(place, url) for place, text in _texts(ROOT).items() for url in URL.findall(text)
             if any(host in url for host in DERIVED) and url not in allowed]
    assert not stray, f"links not derived from {sync_links.address()} (generate them with scripts/sync_links.py): {stray}"


def test_every_notebook_has_its_colab_badge_and_readme_its_binder_badge():
    addr = sync_links.address()
    texts = _texts(ROOT)
    for name in sync_links.notebook_names():
        badge = texts[f"{name}:{sync_links.BADGE_CELL_ID}"]
        assert f"]({sync_links.colab_url(addr, name)})" in badge and sync_links.COLAB_BADGE in badge
        assert f'"{addr}"' in texts[f"{name}:{sync_links.SETUP_CELL_ID}"], "the Colab set-up cell clones the address"
    readme = texts["README.md"]
    assert f"[![Binder]({sync_links.BINDER_BADGE})]({sync_links.binder_url(addr)})" in readme
    assert sync_links.binder_url(addr).endswith("labpath=notebooks%2F05_pipeline.ipynb")


def test_publishing_is_one_line_and_the_script(tmp_path):
    """Another address in pyproject.toml + the script: no trace of the old address is left."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    old = sync_links.address()
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert pyproject.count(f'Repository = "{old}"') == 1
    (tmp_path / "pyproject.toml").write_text(pyproject.replace(f'Repository = "{old}"',
                                                               'Repository = "https://github.com/someone/elsewhere"'))
    assert sync_links.sync(tmp_path, write=True)
    assert sync_links.sync(tmp_path, write=False) == [], "a second run changes nothing"
    old_path = old.removeprefix("https://github.com/")
    for place, text in _texts(tmp_path).items():
        assert old_path not in text, f"{place} still names {old_path}"
    assert "mybinder.org/v2/gh/someone/elsewhere/HEAD" in (tmp_path / "README.md").read_text()
    for path in (tmp_path / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        before = nbformat.read(ROOT / "notebooks" / path.name, as_version=4)
        assert [c.get("id") for c in nb.cells] == [c.get("id") for c in before.cells], "cells rewritten in place"


def test_a_bad_address_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://gitlab.com/a/b"\n')
    with pytest.raises(SystemExit, match="expected https://github.com/<owner>/<repo>"):
        sync_links.address(tmp_path)
