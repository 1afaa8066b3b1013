"""Lazy package exports (PEP 562): public names imported from their submodule on first access.

Packages whose submodules load torch (``autotune.models``, ``autotune.preprocess``) export this way, so that
``from autotune.preprocess import PreprocessSpec`` stays light in processes that never run the model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, serving ``exports`` (name -> submodule).

    Example:
        >>> __getattr__, __dir__ = lazy_exports(__name__, {"PreprocessSpec": "spec"}, globals())  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        """Import a public name from its submodule on first access."""
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        """List the public names next to the module's own attributes."""
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
