"""Command-line options that set the view plan (``ViewPlan``'s fields), shared by
``kdcache teach`` and ``kdcache train``."""

import argparse

from kdcache.pipeline.views import ViewPlan
from kdcache.tools.cli.config_options import add_config_options, add_field_flags, config_values

_PREFIX = "plan_"


def add_plan_arguments(parser: argparse.ArgumentParser, *, defaults_from: str) -> None:
    """Add the plan options, unset by default; ``defaults_from`` says in the help where unset
    values come from."""
    group = parser.add_argument_group("view plan", f"unset options: {defaults_from}")
    fields = [f.name for f in ViewPlan.__dataclass_fields__.values()]
    add_config_options(
        group, ViewPlan, unset=fields, unset_note="plan default", dest_prefix=_PREFIX,
        field_prefix="plan.",
    )  # fmt: skip
    flags = parser.get_default("field_flags")  # a plan's own errors name its fields bare
    add_field_flags(
        parser, {k.removeprefix("plan."): v for k, v in flags.items() if k.startswith("plan.")}
    )


def plan_overrides(args: argparse.Namespace) -> dict:
    """The plan fields set on the command line."""
    return config_values(ViewPlan, args, _PREFIX)
