"""Package faces that import their modules on first use.

A face lists what its package offers; ``from kdcache.pipeline.cache import CacheStore`` then
imports only the module holding ``CacheStore``. This keeps ``kdcache --help`` free of torch,
timm and Ray, which only the commands that run need.
"""

import importlib
from collections.abc import Callable


def lazy_face(package: str, exports: dict[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a package whose names live in modules:
    ``exports`` maps each public name to the module (absolute, or relative to ``package``)
    defining it, or to ``module:attribute`` where the name differs."""

    def __getattr__(name: str):
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = where.partition(":")
        return getattr(importlib.import_module(module, package), attribute or name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
