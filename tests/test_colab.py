"""pqd_lib.colab: what the notebooks' first cell installs when it runs on Google Colab."""

from __future__ import annotations

import sys

from pqd_lib import colab

REQUIRES = ["torch==2.14.1", "onnx==1.23.2", "PyYAML==6.0.4", "onnx_script==0.7.2", "jupyterlab==4.6.6",
            "papermill==2.7.0", "ipykernel", 'pytest==9.2.0; extra == "test"', "nbval==0.11.0 ; extra=='test'"]


def test_only_missing_runtime_requirements_are_installed():
    # Colab has its own torch and Jupyter; extras (tests) and the notebook tools are never installed there.
    assert colab.missing_requirements(REQUIRES, ["torch", "pyyaml", "IPyKernel"]) == [
        "onnx==1.23.2", "onnx_script==0.7.2"]
    # The extras the notebooks use are installed there, the others (and pqd's own extras line) are not.
    extras = ['onnxruntime<2,>=1.20; extra == "onnx"', 'scipy<2,>=1.13; extra == "report"',
              'pqd[onnx,report]; extra == "notebooks"', 'papermill<3; extra == "notebooks"']
    assert colab.missing_requirements(extras, ["torch"]) == ["onnxruntime<2,>=1.20", "scipy<2,>=1.13"]
    assert colab.missing_requirements(REQUIRES, ["torch", "onnx", "pyyaml", "onnx-script"]) == []


def test_setup_installs_the_clone_without_dependencies_then_what_is_missing():
    calls = []
    line = colab.setup("/content/pqd", run=lambda cmd, check: calls.append(cmd))
    assert calls[0] == [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", "/content/pqd"]
    assert len(calls) <= 2, "one pip call for pqd, at most one for what is missing"
    assert all("torch" not in arg for cmd in calls[1:] for arg in cmd), "torch is installed here, so never reinstalled"
    assert line.startswith("Colab: pqd from /content/pqd") and "INT8 models and latencies on the CPU" in line


def test_importing_it_is_light():
    # The first cell imports pqd_lib.colab before pip has run: it must not need what pip installs.
    import ast
    from pathlib import Path

    modules = set()
    for node in ast.parse(Path(colab.__file__).read_text()).body:
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"__future__", "re", "subprocess", "sys", "collections", "importlib"}, modules
