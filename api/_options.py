"""Config fields that carry their own command-line help: options are defined once.

A config dataclass (``TrainConfig``, ``TeachConfig``, ``ViewPlan``) declares each option with
:func:`option`: its default, its help text and, where the command line spells it otherwise, its
flag, choices, metavar and help group. The CLI builds its parsers from these fields
(``kdcache.tools.cli.config_options``), so a default or a help text lives in one place.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    group: str | None = None,
    shown: bool = True,
) -> Any:
    """A dataclass field with its option metadata (``help`` is required; ``flag`` defaults to
    ``--field-name``; ``factory`` for mutable defaults; ``shown=False`` keeps the value out of
    the config's repr, for secrets)."""
    metadata = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "group": group}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata, repr=shown)
    return dataclasses.field(default=default, metadata=metadata, repr=shown)
