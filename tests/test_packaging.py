"""The environment is pinned once: environment.yml mirrors pyproject.toml."""

import ast
import json
import re
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


def test_environment_yml_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    got = _pins([p for p in pip_section if not p.startswith("-")])
    assert got == wanted
    assert all(v.startswith("==") for v in wanted.values()), "every dependency is pinned"
    assert "python=3.11" in env["dependencies"]


def test_lazy_public_names_resolve_and_never_shadow_a_submodule():
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
    from pqd_lib import _lazy

    with pytest.raises(ValueError, match="submodule names"):
        _lazy.attach("pkg", {"accuracy": "accuracy"}, {})


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
