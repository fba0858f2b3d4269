"""``kdcache train`` (also ``python -m kdcache train``, and under ``torchrun -m kdcache train``)."""

import argparse
import ast
from functools import partial

from kdcache.tools.cli.arg_types import command_parser, key_value
from kdcache.tools.cli.config_options import add_config_options, config_values
from kdcache.tools.cli.plan_options import add_plan_arguments, plan_overrides
from kdcache.tools.cli.teacher_options import add_teacher_arguments, teacher_source


def _model_arg(text: str) -> tuple[str, object]:
    key, value = key_value(text)
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _teacher_weight(text: str) -> tuple[str, float]:
    name, value = key_value(text, "NAME=WEIGHT")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT (a number), got {text!r}") from None


def add_train_parser(commands) -> None:
    """``kdcache train``: train a student (or a teacher) on the planned views, with cached
    distillation.

    Stream the train shards, show each sample the view planned for the epoch, join it with the
    cached teacher targets and train a timm model with cross-entropy plus soft or hard
    distillation (DeiT). A DeiT student with a distillation token learns the labels on its class
    head and the teacher on its distillation head. Evaluates on the test split every epoch;
    writes config.json, metrics.csv and checkpoint.pth to --out.
    """
    parser = command_parser(commands, "train", add_train_parser.__doc__)
    configure_train_parser(parser)


def configure_train_parser(parser: argparse.ArgumentParser) -> None:
    from kdcache.trainer.run import TrainConfig

    pairs = {
        "model_args": _model_arg,
        "teacher_weights": _teacher_weight,
        "head_teachers": partial(key_value, form="HEAD=NAME"),
        "student_layers": partial(key_value, form="TARGET=LAYER"),
    }
    # the online teacher's options are TeacherSource's, as teach's (teacher_arch among them)
    add_config_options(parser, TrainConfig, skip=("plan", "teacher_arch"), parse=pairs)
    add_teacher_arguments(parser, per_teacher=False, location_flag="--teacher-checkpoint")
    add_plan_arguments(
        parser, defaults_from="the cache's plan with --cache, else the plan defaults"
    )
    parser.set_defaults(run=run_train)  # fmt: skip


def run_train(args: argparse.Namespace) -> None:
    from kdcache.trainer.run import Stopped, TrainConfig, train

    online = teacher_source(args, args.teacher_checkpoint)
    config = TrainConfig(
        **config_values(TrainConfig, args), plan=plan_overrides(args), teacher_source=online
    )
    try:
        final = train(config)
    except Stopped as stopped:
        print(f"train: stopped ({stopped}); continue with the same command and --resume")
        raise SystemExit(143) from None
    print(f"train: final test accuracy {final['test_acc']:.2f}% -> {args.out}")
