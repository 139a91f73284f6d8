"""Check that a plain `pip install .` is a working library without the notebook stack (run by .ci/run).

Fails when a notebook, report or ONNX dependency is installed (the environment is not the core one)
or when compress() cannot take a small CNN to INT8 with only the core dependencies.
"""

from __future__ import annotations

import importlib.util
import sys

import torch
from torch import nn

import pqd_lib
from pqd_lib import config
from pqd_lib.data import DataSplits

EXTRAS_ONLY = ("papermill", "jupyterlab", "ipykernel", "matplotlib", "seaborn", "scipy", "tabulate", "onnx",
               "onnxruntime", "nbval", "pytest")


def main(check_absent: bool = True) -> int:
    """Return 0 when the core install imports and compresses; print what is wrong otherwise.

    `check_absent` False skips the "no extra is installed" check (the test suite's environment has them
    all; there tests/test_packaging.py checks instead that none of them gets imported).
    """
    present = [name for name in EXTRAS_ONLY if check_absent and importlib.util.find_spec(name) is not None]
    if present:
        print(f"check_core_install: extras-only packages are installed: {', '.join(present)}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8)
    y = torch.arange(64) % 2
    data = DataSplits.from_tensors(x, y, x[:16], y[:16], source="core install check")
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    cfg = config.preset("smoke", quantize={"reduce_range": True})
    int8, records = pqd_lib.compress(model, data, order="PQ", config=cfg, progress=False)
    print(f"pqd {pqd_lib.__version__}: compress -> {records[-1]['deploy_form']}, "
          f"sparsity {records[-1]['deploy_sparsity']:.2f}, without any extra installed")
    return 0 if records[-1]["deploy_form"] == "int8" else 1


if __name__ == "__main__":
    sys.exit(main())
