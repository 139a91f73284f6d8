"""The record format belongs to the library: notebooks write records only through its functions, with
its labels, and the claims read them back (issue 17: a renamed label silently unresolved a verdict)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from pqd_lib import claims, labels, models, results, train
from pqd_lib import config as C
from pqd_lib.labels import Kind, Notebook
from pqd_lib.measure.table import ModelRun, measure_models

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
WRITERS = {"record_measurements", "record_stages"}


def notebook_code(number: str) -> ast.Module:
    (path,) = NOTEBOOKS.glob(f"{number}_*.ipynb")
    cells = json.loads(path.read_text())["cells"]
    return ast.parse("\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"))


def labels_used_as_run_names(tree: ast.Module) -> set[str]:
    """Values of the pqd_lib.labels constants (and pruned(...) calls) used as keys of the `runs` dict."""
    keys: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id == "runs" for t in node.targets):
            keys += node.value.keys
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "runs" \
                and isinstance(node.ctx, ast.Store):
            keys.append(node.slice)
    # A loop variable (`for name, alpha in ((labels.DISTILLED, ...), ...)`) stands for the loop's items.
    loops = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and isinstance(node.iter, ast.Tuple):
            for i, target in enumerate(node.target.elts):
                if isinstance(target, ast.Name):
                    loops[target.id] = [item.elts[i] for item in node.iter.elts if isinstance(item, ast.Tuple)]
    keys = [k for key in keys for k in (loops.get(key.id, [key]) if isinstance(key, ast.Name) else [key])]
    found = set()
    for key in keys:
        if isinstance(key, ast.Attribute) and isinstance(key.value, ast.Name) and key.value.id == "labels":
            found.add(getattr(labels, key.attr))
        elif isinstance(key, ast.Call) and isinstance(key.func, ast.Attribute) and key.func.attr == "pruned":
            found.add("pruned(...)")
        else:
            found.add(f"<not a pqd_lib.labels name: {ast.unparse(key)}>")
    return found


@pytest.mark.parametrize("notebook", [Notebook.BASELINE, Notebook.PRUNE, Notebook.QUANTIZE, Notebook.DISTILL,
                                      Notebook.PIPELINE])
def test_notebooks_write_records_only_through_the_library(notebook):
    tree = notebook_code(notebook)
    calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert calls & WRITERS, f"notebook {notebook} writes no records through results.{'/'.join(sorted(WRITERS))}"
    assert "make_record" not in calls, f"notebook {notebook} builds records itself"
    for n in ast.walk(tree):
        if isinstance(n, ast.keyword) and n.arg in ("kind", "notebook"):
            assert not isinstance(n.value, ast.Constant), f"notebook {notebook}: {n.arg}= is a literal, not a label"
    names = labels_used_as_run_names(tree)
    assert not [n for n in names if n.startswith("<")], f"notebook {notebook}: {names}"


def test_every_single_stage_method_the_claims_read_is_written_by_its_notebook():
    for notebook, model, _method, _group in claims._SINGLES:
        written = labels_used_as_run_names(notebook_code(notebook))
        expected = "pruned(...)" if model is None else model
        assert expected in written, (f"claims read model {expected!r} of notebook {notebook}, "
                                     f"which names its models {sorted(written)}")


def test_measured_and_stage_records_round_trip_into_the_claims(tmp_path, embedded):
    cfg = C.preset("smoke", data={"source": "embedded"}, cache_dir=str(tmp_path / "cache"),
                   measure={"isolate": False, "onnxruntime": False, "min_runs": 2, "warmup": 1})
    data = embedded.subset(train=64, test=32, seed=0)
    torch.manual_seed(0)
    model = models.build(cfg.model.name, num_classes=10, width=cfg.model.width).eval()
    reference = models.build(**train.arch_spec(cfg))
    store = tmp_path / "results"
    for notebook, name in ((Notebook.BASELINE, labels.BASELINE), (Notebook.PRUNE, labels.BASELINE),
                           (Notebook.PRUNE, labels.pruned(cfg.prune.target_sparsity)),
                           (Notebook.QUANTIZE, labels.QUANTIZED), (Notebook.DISTILL, labels.DISTILLED)):
        runs = {name: ModelRun(cfg, model, "baseline")}
        table = measure_models(runs, data, reference=reference, arch=train.arch_spec(cfg))
        assert len(table) == 1 and {"top1", "size_MiB", "latency_ms_p50", "nonzero_macs"} <= set(table.columns)
        results.record_measurements(table, {name: cfg}, notebook=notebook, results_dir=store, run_id="r")
    stage = {"order": "PQD", "position": 1, "stage": "P", "run_id": "r", "top1": 10.0, "history": [{"loss": 1}]}
    (path,) = results.record_stages([stage], cfg, notebook=Notebook.PIPELINE, results_dir=store)
    assert "history" not in json.loads(path.read_text())
    df = results.load_results(store)
    assert set(df["kind"]) == {Kind.MEASURED, Kind.STAGE}
    found = claims.methods(claims.select(df))
    assert set(found["method"]) == {"FP32 baseline", "P alone", "Q alone", "D alone"}
