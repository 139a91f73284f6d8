"""The numbered notebooks' structure, without executing them (nbval executes them: see pyproject.toml).

Each notebook must accept the parameters `pqd batch` passes (papermill injects them after the cell
tagged ``parameters``), stay thin (no function or class definitions: those belong in pqd_lib), and be
committed executed, without errors, small, and without machine-specific paths in its outputs.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from pqd_lib import batch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
# The parameters of notebooks 01-07, in this order, with these defaults; 08 (the report) reads a subset.
PARAMETERS = {"backbone": "resnet18", "dataset": "cifar10", "preset": "smoke", "seed": 0, "data_source": "embedded",
              "data_root": None, "results_dir": None, "cache_dir": None, "run_id": None}
MAX_BYTES = 400_000


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _code(nb: dict) -> list[tuple[dict, str]]:
    return [(c, "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code"]


def _parameters(nb: dict) -> dict:
    cells = [src for c, src in _code(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cells[0]).body
            if isinstance(node, ast.Assign)}


def test_the_eight_notebooks_exist():
    assert [p.name[:2] for p in PATHS] == [f"{i:02d}" for i in range(1, 9)]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_parameters_cell_is_the_shared_one(path):
    params = _parameters(_load(path))
    if path.name.startswith("08"):
        assert "results_dir" in params and set(params) <= set(PARAMETERS)
    else:
        assert params == PARAMETERS and list(params) == list(PARAMETERS)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_batch_runner_accepts_the_notebook(path, tmp_path):
    """The values `pqd batch` plans for a run pass the runner's type check against the notebook's defaults."""
    run, = batch.plan("resnet18", "cifar10", "smoke", [0], data_source="embedded", results_dir=tmp_path / "results",
                      runs_dir=tmp_path / "runs")
    declared = batch._notebook_parameters(path)
    passed = batch._check_types(path, declared, run.parameters)
    assert set(passed) == set(declared)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_is_thin(path):
    """Helpers live in pqd_lib (STYLE.md, 'Thin notebooks'): no def or class of more than a few lines."""
    for _, src in _code(_load(path)):
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                assert node.end_lineno - node.lineno < 4, f"{node.name}: move it into pqd_lib"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_committed_with_outputs_small_and_without_paths(path):
    nb = _load(path)
    assert path.stat().st_size < MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes; keep figures small"
    for cell, src in _code(nb):
        assert cell.get("execution_count") is not None, f"{path.name}: a cell was not executed: {src[:60]!r}"
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"{path.name}: committed with an error: {out.get('evalue')}"
            text = json.dumps({k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")}) + \
                "".join(out.get("text", ""))
            for marker in ("/tmp/", "/home/", "/root/", "/Users/", str(NOTEBOOKS.parent)):
                assert marker not in text, f"{path.name}: an output holds a machine path ({marker}...)"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_first_code_cell_sets_up_colab_and_does_nothing_elsewhere(path):
    """The Colab set-up cell (scripts/sync_links.py) comes first, is committed without output, is not a
    checked cell, and off Colab only defines `colab_data_source = None`, which the config cell honours."""
    nb = _load(path)
    (first, src), (second, _) = _code(nb)[:2]
    assert first.get("id") == "pqd-colab-setup" and "parameters" in second["metadata"].get("tags", [])
    assert first["outputs"] == [] and "NBVAL_CHECK_OUTPUT" not in src
    assert '"google.colab" in sys.modules' in src
    namespace: dict = {}
    exec(compile(src, path.name, "exec"), namespace)  # not on Colab here: nothing is cloned or installed
    if path.name.startswith("08"):
        assert namespace["on_colab"] is False
    else:
        assert namespace["colab_data_source"] is None
        config_cells = [s for _, s in _code(nb) if "config.cell(" in s]
        assert config_cells and all('"source": colab_data_source or data_source' in s for s in config_cells)
