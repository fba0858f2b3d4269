"""Command-line options generated from config dataclasses: each field declared with
``kdcache._options.option`` becomes one option with that field's default, help, choices and
group, so the CLI repeats none of them."""

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable

from kdcache.errors import KdcacheError


def _value_type(annotation) -> tuple[object, int | str | None]:
    """(element type, nargs) of a field: ``X | None`` is X; ``tuple[float, float]`` is
    (float, 2); ``tuple[str, ...]`` is (str, 'repeat': the option repeated); ``list[str]`` is
    (str, '+'); ``dict`` is (None, 'append': KEY=VALUE pairs)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return _value_type(inner)
    if origin is tuple:
        return args[0], "repeat" if args[-1] is Ellipsis else len(args)
    if origin is list:
        return args[0], "+"
    if annotation is dict or origin is dict:
        return None, "append"
    return annotation, None


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "''"


def _default(spec: dataclasses.Field):
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return dataclasses.MISSING


def add_config_options(
    parser: argparse.ArgumentParser,
    config: type,
    *,
    skip: Iterable[str] = (),
    parse: dict[str, Callable[[str], object]] | None = None,
    unset: Iterable[str] = (),
    unset_note: str = "default",
    dest_prefix: str = "",
    field_prefix: str = "",
) -> None:
    """Add one option per ``option`` field of ``config`` (minus ``skip``).

    ``parse`` gives the value parser of fields whose command-line form is not their type
    (``dict`` fields always need one: each option use gives a pair). Fields in ``unset`` default
    to ``None`` on the command line, so the caller can fill them from elsewhere (an existing
    cache); their help shows the field's default as ``(<unset_note> X)``.
    """
    parse, unset = parse or {}, set(unset)
    hints = typing.get_type_hints(config)
    groups = {}
    flags = {}
    for spec in dataclasses.fields(config):
        meta = spec.metadata
        if "help" not in meta or spec.name in skip:
            continue
        flags[field_prefix + spec.name] = meta["flag"] or _flag(spec.name)
        target = _group(parser, groups, meta["group"])
        default, kind = _default(spec), hints[spec.name]
        element, nargs = _value_type(kind)
        text = meta["help"].replace("%", "%%")
        empty = isinstance(default, (dict, list)) and not default
        shown = not (default is None or default is dataclasses.MISSING or empty)
        if shown and "(default" not in text:
            text += f" ({unset_note if spec.name in unset else 'default:'} {_shown(default)})"
        names = {
            "dest": dest_prefix + spec.name,
            "help": text,
            "default": None if spec.name in unset else default,
        }
        if element is bool:  # a switch; one that defaults on is a flag turning it off (--quiet)
            action = "store_false" if default else "store_true"
            names["help"] = meta["help"]
            target.add_argument(meta["flag"] or _flag(spec.name), action=action, **names)
            continue
        if default is dataclasses.MISSING:
            names.update(required=True, default=None)
        if nargs in ("append", "repeat"):
            names.update(action="append", default=[])
        elif nargs is not None and spec.name not in parse:
            names["nargs"] = nargs
        if meta["choices"]:
            names["choices"] = meta["choices"]
        names["metavar"] = meta["metavar"] or (None if meta["choices"] else spec.name.upper())
        names["type"] = _checked(parse.get(spec.name, element))
        target.add_argument(meta["flag"] or _flag(spec.name), **names)
    add_field_flags(parser, flags)


def _group(parser: argparse.ArgumentParser, groups: dict, name: str | None):
    """The argument group ``name`` of ``parser`` (made on first use), or the parser itself."""
    if not name:
        return parser
    if name not in groups:
        groups[name] = parser.add_argument_group(name)
    return groups[name]


def add_field_flags(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """Record which flag sets which config field (``args.field_flags``): a library error
    naming a field (``KdcacheError.field``) is then printed with the flag that sets it."""
    known = dict(parser.get_default("field_flags") or {})
    parser.set_defaults(field_flags=known | {k: v for k, v in flags.items() if k not in known})


def flag_of(args: argparse.Namespace, field: str | None) -> str | None:
    """The flag that sets ``field`` in the command ``args`` came from, if any (a field the
    command parses as an option of its own, such as ``source``, is its ``--field``)."""
    if not field:
        return None
    flag = (getattr(args, "field_flags", None) or {}).get(field)
    return flag if flag is not None or not hasattr(args, field) else _flag(field)


def _checked(convert: Callable[[str], object]) -> Callable[[str], object]:
    """``convert`` whose :class:`KdcacheError` becomes argparse's one-line usage error with
    that message alone (argparse would quote the rejected text, which may hold a secret)."""

    def checked(text: str) -> object:
        try:
            return convert(text)
        except KdcacheError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = getattr(convert, "__name__", "value")
    return checked


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_values(config: type, args: argparse.Namespace, dest_prefix: str = "") -> dict:
    """The fields of ``config`` found in ``args`` (unset ones left out), as the config types
    them: tuples for tuple fields, dicts for pair lists."""
    hints, values = typing.get_type_hints(config), {}
    for spec in dataclasses.fields(config):
        value = getattr(args, dest_prefix + spec.name, None)
        if value is None:
            continue
        _, nargs = _value_type(hints[spec.name])
        if nargs == "append":
            value = dict(value)
        elif isinstance(nargs, int) or nargs == "repeat":
            value = tuple(value)
        values[spec.name] = value
    return values
