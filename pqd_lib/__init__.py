"""pqd_lib: the reference companion of "Prune-Quantize-Distill: An Ordered Pipeline for Efficient
Neural Network Compression" (Zhou & Shen 2026).

Usage::

    import pqd_lib
    from pqd_lib import config, data
    cfg = config.preset("smoke", data={"source": "embedded"})
    splits = data.load(cfg.data, seed=cfg.seed)
    int8_model, records = pqd_lib.compress(my_trained_cnn, splits, order="PQD", config=cfg)

Importing the package has no side effects (nothing printed, downloaded or written); it imports
torch and the library's modules, and none of the extras (papermill, matplotlib, scipy, onnx).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .deploy import load_deploy, save_deploy
from .pipeline import STAGES, compress, run

try:
    __version__ = version("pqd")  # the one version source: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # a source checkout on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "compress", "run", "STAGES", "save_deploy", "load_deploy"]
