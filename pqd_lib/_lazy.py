"""Lazy re-exports (PEP 562): a package names its public functions without importing their modules."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, names: Mapping[str, str], namespace: Mapping[str, Any]
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for `package`, resolving ``names`` (public name -> submodule) on first use.

    A public name must not also be a submodule's name: once that submodule is imported, Python sets
    the package attribute to the module, and the name would mean two things depending on import order.
    """
    clashes = [n for n, module in names.items() if n == module]
    if clashes:
        raise ValueError(f"{package}: lazy names {clashes} are also submodule names")

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f".{names[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
