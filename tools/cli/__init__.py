"""The ``kdcache`` command: ``main`` parses and runs one command; each command module defines
its parser from the config dataclasses and imports the heavy parts (torch, timm, Ray) only
when the command runs."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(__name__, {"build_parser": ".main", "main": ".main"})
