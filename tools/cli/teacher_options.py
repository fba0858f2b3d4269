"""The teacher options, generated from ``TeacherSource``'s fields: the same set for
``kdcache teach`` (each repeatable, one per ``--teacher`` in order or one for all) and for
``kdcache train --teacher online`` (one teacher)."""

import argparse
import dataclasses
import json
import typing
from dataclasses import replace

from kdcache.errors import ConfigError
from kdcache.pipeline.teach.teach_config import TeacherSource
from kdcache.tools.cli.config_options import _checked, _flag, add_field_flags

DEST = "teacher_"  # args.teacher_<field>
GROUP_HELP = (
    "weights load strictly; preprocessing defaults: the kdcache checkpoint's, else the timm "
    "model's pretrained config, else timm's ImageNet defaults"
)


def _class_map(text: str) -> tuple[int, ...] | str:
    """A named map (``imagenet``) as is, else a JSON file of teacher class ids."""
    from kdcache.pipeline.teach.class_maps import NAMED

    if text in NAMED:
        return text
    try:
        with open(text) as f:
            values = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"class map {text!r}: neither {', '.join(NAMED)} nor a readable JSON file ({error})"
        ) from None
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{text}: a class map is a JSON list of teacher class ids")
    return tuple(values)


def _fields() -> list[dataclasses.Field]:
    """``TeacherSource``'s option fields (all but ``location`` and ``name``)."""
    return [f for f in dataclasses.fields(TeacherSource) if "help" in f.metadata]


def _element(spec: dataclasses.Field, hints: dict) -> tuple[typing.Callable, bool]:
    """(parser of one value, whether the option takes several) of a field."""
    if spec.name == "class_map":
        return _class_map, False
    args = [a for a in typing.get_args(hints[spec.name]) if a is not type(None)]
    kind = args[0]
    if typing.get_origin(kind) is tuple:
        return typing.get_args(kind)[0], True
    return kind, False


def add_teacher_arguments(
    parser: argparse.ArgumentParser, *, per_teacher: bool, location_flag: str
) -> None:
    """Add one option per ``TeacherSource`` field; ``per_teacher``: repeatable, one per teacher
    in order, or one for all. ``location_flag`` is the option naming the weights (for errors)."""
    group = parser.add_argument_group("teachers", GROUP_HELP)
    hints = typing.get_type_hints(TeacherSource)
    flags = {"teacher.location": location_flag}
    for spec in _fields():
        meta = spec.metadata
        convert, several = _element(spec, hints)
        text = meta["help"].replace("%", "%%")
        if per_teacher:
            text += f"; repeatable, one per {location_flag} in order, or one for all"
        options = dict(dest=DEST + spec.name, metavar=meta["metavar"], help=text)
        options["type"] = _checked(convert)
        if several:
            options["nargs"] = "+"
        if per_teacher:
            options.update(action="append", default=[])
        else:
            options["default"] = None
        flag = meta["flag"] or _flag(DEST + spec.name)  # --teacher-<field>
        group.add_argument(flag, **options)
        flags[f"teacher.{spec.name}"] = flag
    add_field_flags(parser, flags)


def _values(args: argparse.Namespace, spec: dataclasses.Field):
    value = getattr(args, DEST + spec.name)
    return tuple(value) if isinstance(value, list) else value


def teacher_sources(args: argparse.Namespace) -> list[TeacherSource]:
    """One ``TeacherSource`` per ``--teacher [NAME=]PATH``, with the per-teacher options."""
    sources = []
    for text in args.teacher:
        name, sep, location = text.partition("=")
        sources.append(TeacherSource(location=location, name=name) if sep else TeacherSource(text))
    for spec in _fields():
        values = getattr(args, DEST + spec.name)
        if not values:
            continue
        if len(values) not in (1, len(sources)):
            raise ConfigError(
                f"teacher.{spec.name}: {len(values)} values for {len(sources)} teachers (one "
                "per teacher in order, or one for all)",
                field=f"teacher.{spec.name}",
            )
        values = values * len(sources) if len(values) == 1 else values
        values = [tuple(v) if isinstance(v, list) else v for v in values]
        sources = [replace(s, **{spec.name: v}) for s, v in zip(sources, values, strict=True)]
    return sources


def teacher_source(args: argparse.Namespace, location: str | None) -> TeacherSource | None:
    """The one teacher at ``location`` with the options given (None without a location)."""
    if location is None:
        return None
    values = {spec.name: _values(args, spec) for spec in _fields()}
    return TeacherSource(location=location, **{k: v for k, v in values.items() if v is not None})
