"""Lazy re-exports: a package names its public objects; each module loads on first use.

Importing a package then costs nothing for the parts a program does not use (a SQLite or
Redis backend, the agent layer's pydantic models, the HTTP providers).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module `__getattr__` and `__dir__` of `package` (PEP 562).

    `exports` maps each public name to the module defining it (a module's own name when the
    value is the module itself). A loaded name is stored in `namespace`, so it loads once.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module)
        value = loaded if module.rpartition(".")[2] == name else getattr(loaded, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
