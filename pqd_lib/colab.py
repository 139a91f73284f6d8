"""Set-up on Google Colab, called by the first code cell of every notebook when it runs there.

The cell (written by ``scripts/sync_links.py`` from the address in ``pyproject.toml``) detects Colab
itself (``"google.colab" in sys.modules``), clones the repository into ``/content/pqd``, puts it first
on ``sys.path`` and calls :func:`setup`, which installs pqd (editable, without dependencies) and then
only the pinned libraries Colab lacks. Colab's own PyTorch, NumPy, pandas and Jupyter stay: they are
already imported by the running kernel or are its front-end, and replacing them under a live kernel
breaks it. Every record notes the library versions it ran with, so a Colab number can be told apart.

Importing this module imports nothing heavy (torch is only imported to report the device).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata

__all__ = ["NOTEBOOK_TOOLS", "missing_requirements", "setup"]

# Distributions of pqd's requirements that Colab never needs from us: its notebook front-end and
# kernel are its own, and papermill only drives `pqd batch`, which is not run from a Colab notebook.
NOTEBOOK_TOOLS = frozenset({"jupyterlab", "ipykernel", "papermill"})
# The extras the notebooks need on Colab: ONNX Runtime timing and the report's figures and statistics.
COLAB_EXTRAS = frozenset({"onnx", "report"})


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_requirements(requires: Iterable[str], installed: Iterable[str],
                         skip: Iterable[str] = NOTEBOOK_TOOLS, extras: Iterable[str] = COLAB_EXTRAS) -> list[str]:
    """The requirement strings of `requires` (as ``importlib.metadata.requires`` gives them) whose
    distribution is not in `installed`, leaving out extras other than `extras`, pqd itself (an extra
    naming other extras) and the `skip` distributions.

    >>> missing_requirements(["torch==2.14.1", "onnx==1.23.2", "pytest==9.2.0; extra == 'test'"], ["Torch"])
    ['onnx==1.23.2']
    """
    have = {_canonical(n) for n in installed} | {_canonical(n) for n in skip} | {"pqd"}
    wanted = set(extras)
    out = []
    for req in requires:
        marker = req.partition(";")[2]
        extra = re.search(r"\bextra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) not in wanted:
            continue
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if name and _canonical(name.group(1)) not in have:
            out.append(req.split(";")[0].strip())
    return out


def setup(root: str, *, run=subprocess.run) -> str:
    """Install the clone at `root` and what Colab lacks; return one line saying what was done.

    `run` is :func:`subprocess.run` (replaceable in tests).
    """
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    run([*pip, "--no-deps", "-e", root], check=True)
    installed = [d.metadata["Name"] for d in metadata.distributions() if d.metadata["Name"]]
    missing = missing_requirements(metadata.requires("pqd") or [], installed)
    if missing:
        run([*pip, *missing], check=True)
    import torch  # after pip: this module is imported before anything is installed

    if torch.cuda.is_available():
        device = f"training on the GPU ({torch.cuda.get_device_name(0)})"
    else:
        device = "training on the CPU (Runtime > Change runtime type > GPU for a faster run)"
    added = ", ".join(missing) if missing else "nothing else"
    return (f"Colab: pqd from {root}; installed {added}; torch {torch.__version__}; {device}; "
            "INT8 models and latencies on the CPU")
