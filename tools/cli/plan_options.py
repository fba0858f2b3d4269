"""Command-line options that set the view plan, shared by ``kdcache teach`` and ``kdcache train``."""

import argparse
from dataclasses import fields

from kdcache.pipeline.views import ERASE_MODES, ViewPlan

_OPTIONS = {
    "seed": ("--plan-seed", int, None, "seed of the view plan"),
    "views": ("--views", int, None, "views V planned per sample"),
    "crop_scale": ("--crop-scale", float, ("LOW", "HIGH"), "RandomResizedCrop area scale range"),
    "crop_ratio": ("--crop-ratio", float, ("LOW", "HIGH"), "RandomResizedCrop aspect-ratio range"),
    "flip_prob": ("--flip-prob", float, None, "probability of a left-right flip"),
    "randaugment": ("--randaugment", str, None,
                    "timm RandAugment string, e.g. rand-m9-mstd0.5-inc1; '' = off"),
    "color_jitter": ("--color-jitter", float, ("B", "C", "S", "H"),
                     "colour jitter strengths: brightness, contrast, saturation, hue"),
    "erase_prob": ("--erase-prob", float, None, "random erasing probability"),
    "erase_mode": ("--erase-mode", str, None, f"random erasing fill, one of {ERASE_MODES}"),
    "mixup_alpha": ("--mixup-alpha", float, None, "Mixup Beta(alpha, alpha); 0 = off"),
    "cutmix_alpha": ("--cutmix-alpha", float, None, "CutMix Beta(alpha, alpha); 0 = off"),
    "mix_prob": ("--mix-prob", float, None, "probability that a view is mixed"),
    "mix_switch_prob": ("--mix-switch-prob", float, None,
                        "with both on, probability of CutMix rather than Mixup"),
    "renderer": ("--renderer", str, None, "view renderer: cpu (= cpu/2), cuda (= device/1), "
                 "or cpu/1, the renderer of caches made before renderers had versions"),
}  # fmt: skip


def add_plan_arguments(parser: argparse.ArgumentParser, *, defaults_from: str) -> None:
    """Add the plan options; ``defaults_from`` says in the help where unset values come from."""
    group = parser.add_argument_group("view plan", f"unset options: {defaults_from}")
    defaults = ViewPlan()
    for name, (flag, kind, metavar, text) in _OPTIONS.items():
        default = getattr(defaults, name)
        shown = " ".join(f"{v:g}" for v in default) if isinstance(default, tuple) else repr(default)
        group.add_argument(
            flag, dest=f"plan_{name}", type=kind, nargs=len(metavar) if metavar else None,
            default=None, metavar=metavar, help=f"{text} (plan default {shown})",
        )  # fmt: skip


def plan_overrides(args: argparse.Namespace) -> dict:
    """The plan fields set on the command line."""
    values = {f.name: getattr(args, f"plan_{f.name}") for f in fields(ViewPlan)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
