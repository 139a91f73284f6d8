"""The environment is pinned once: environment.yml mirrors pyproject.toml."""

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==\s*[^\s;]+)?", line.strip())
        if m:
            out[m.group(1).lower()] = (m.group(2) or "").replace(" ", "")
    return out


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return _pins([line for line in lines if line.strip() and not line.startswith("#")])


def _requirements(project: dict) -> dict[str, str]:
    """Every requirement of pyproject.toml (core and extras) as name -> specifier, self-references left out."""
    out = {}
    for req in project["dependencies"] + [r for reqs in project["optional-dependencies"].values() for r in reqs]:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)", req.strip())
        if m.group(1).lower() != project["name"]:
            out[m.group(1).lower()] = m.group(3).replace(" ", "")
    return out


def test_constraints_pin_every_requirement_inside_its_range():
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges, pins = _requirements(project), _constraints()
    assert set(pins) == set(ranges), "constraints.txt pins exactly the requirements of pyproject.toml"
    for name, spec in ranges.items():
        assert not spec.startswith("=="), f"{name}: pyproject.toml states a range, constraints.txt the pin"
        assert pins[name].startswith("=="), f"{name}: constraints.txt pins an exact version"
        assert SpecifierSet(spec).contains(pins[name][2:]), f"{name}{pins[name]} is outside {spec}"
    assert project["requires-python"] == ">=3.11" and project["license"] == "MIT"
    assert {"onnx", "report", "notebooks", "test"} <= set(project["optional-dependencies"])


def test_environment_make_and_ci_use_the_constraints():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins([p for p in pip_section if not p.startswith("-")]) == _constraints()
    assert "python=3.11" in env["dependencies"]
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-c constraints.txt ." in ci and "check_core_install.py" in ci and "make test" in ci


def test_version_license_and_citation():
    import pqd_lib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pqd_lib.__version__ in (project["version"], "0+unknown")
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["version"] == project["version"]
    assert "2604.04988" in citation["preferred-citation"]["identifiers"][0]["value"]


def test_the_library_needs_no_extra(tmp_path):
    """compress() on a small CNN imports nothing of [notebooks], [report], [onnx] or [test]."""
    code = textwrap.dedent("""
        import sys
        sys.argv = ["check"]
        import runpy
        script = runpy.run_path("scripts/check_core_install.py")
        assert script["main"](check_absent=False) == 0
        extras = [m for m in script["EXTRAS_ONLY"] if m in sys.modules and m != "pytest"]
        assert not extras, extras
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PQD_CACHE": str(tmp_path), "PQD_PROGRESS": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_importing_the_library_does_not_import_torchvision():
    """Only data.source "torchvision" needs torchvision (~3 s of CPU to import): a rounds-protocol latency
    worker, one per timed model, and a notebook kernel on other sources start without it."""
    code = "import sys, pqd_lib, pqd_lib.measure.rounds; assert 'torchvision' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_public_names_resolve_and_never_shadow_a_submodule():
    import importlib
    import pkgutil

    for package in ("pqd_lib", "pqd_lib.measure"):
        module = importlib.import_module(package)
        submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
        for name in module.__all__:
            if name == "__version__":
                continue
            assert name not in submodules, f"{package}.{name} is both a public name and a submodule"
            assert getattr(module, name) is not None


def test_binder_installs_pqd_itself_and_opens_a_cpu_preset():
    """Binder builds from environment.yml: its pip section installs pqd from the checkout, and the
    notebook its badge opens defaults to a preset meant for a CPU (Binder has no GPU)."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e ." in pip_section
    assert not (ROOT / "binder").exists(), "a binder/ folder would make Binder ignore environment.yml"
    nb = json.loads((ROOT / "notebooks" / "05_pipeline.ipynb").read_text())
    params = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    preset = next(ast.literal_eval(n.value) for n in ast.parse(params).body
                  if isinstance(n, ast.Assign) and n.targets[0].id == "preset")
    assert preset in ("smoke", "mini")


def test_browser_test_runs_in_ci():
    """`.ci/run` installs Chromium for tests/test_browser.py, which `make test` runs (marker registered)."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "make test" in ci
    pytest_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("browser:") for m in pytest_cfg["markers"])
    assert "browser" not in pytest_cfg["addopts"], "the browser test must not be deselected by default"
