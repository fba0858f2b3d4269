"""Command-line options that set the view plan, shared by ``kdcache teach`` and ``kdcache train``."""

import argparse
from dataclasses import fields

from pipeline.plan import ViewPlan

_OPTIONS = {
    "seed": ("--plan-seed", int, None, "seed of the view plan"),
    "views": ("--views", int, None, "views V planned per sample"),
    "crop_scale": ("--crop-scale", float, 2, "RandomResizedCrop area scale range LOW HIGH"),
    "crop_ratio": ("--crop-ratio", float, 2, "RandomResizedCrop aspect-ratio range LOW HIGH"),
    "flip_prob": ("--flip-prob", float, None, "probability of a left-right flip"),
}


def add_plan_arguments(parser: argparse.ArgumentParser, *, defaults_from: str) -> None:
    """Add the plan options; ``defaults_from`` says in the help where unset values come from."""
    group = parser.add_argument_group("view plan", f"unset options: {defaults_from}")
    defaults = ViewPlan()
    for name, (flag, kind, nargs, text) in _OPTIONS.items():
        default = getattr(defaults, name)
        shown = " ".join(f"{v:g}" for v in default) if isinstance(default, tuple) else default
        group.add_argument(
            flag, dest=f"plan_{name}", type=kind, nargs=nargs, default=None,
            metavar=("LOW", "HIGH") if nargs else None, help=f"{text} (plan default {shown})",
        )  # fmt: skip


def plan_overrides(args: argparse.Namespace) -> dict:
    """The plan fields set on the command line."""
    values = {f.name: getattr(args, f"plan_{f.name}") for f in fields(ViewPlan)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
