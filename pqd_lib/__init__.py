"""pqd_lib: the reference companion of "Prune-Quantize-Distill: An Ordered Pipeline for Efficient
Neural Network Compression" (Zhou & Shen 2026).

Usage::

    import pqd_lib
    from pqd_lib import config, data
    cfg = config.preset("smoke", data={"source": "embedded"})
    splits = data.load(cfg.data, seed=cfg.seed)
    int8_model, records = pqd_lib.compress(my_trained_cnn, splits, order="PQD", config=cfg)

Importing the package has no side effects and imports nothing heavy: the public entry points
below are loaded on first use.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._lazy import attach

try:
    __version__ = version("pqd")  # the one version source: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # a source checkout on sys.path that was never installed
    __version__ = "0+unknown"

# Public name -> module that defines it; resolved lazily (PEP 562).
_LAZY = {
    "compress": "pipeline",
    "run": "pipeline",
    "STAGES": "pipeline",
    "save_deploy": "deploy",
    "load_deploy": "deploy",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = attach(__name__, _LAZY, globals())
