"""``kdcache bench train``: student training with no teacher, cached targets and the teacher
online, interleaved in one process.

The same seeded student, views and batch size train four ways, each with its own persistent
DataLoader: ``none`` (plain supervised training, the floor), ``cached`` (targets read from a
one-view cache made beforehand, or ``--cache``), ``online`` (the teacher runs on every batch's views, DeiT's
way; its forward pass is clocked inside the run) and ``teacher`` (the teacher's forward alone
on the online run's real batches). The modes alternate (none, cached, online, teacher; again)
for ``--repeats`` rounds after ``--warmup`` untimed ones; each run skips ``--warmup-steps``
and times ``--steps``. Per repeat: cached / none, cached / online, and the ideal cached /
online ``(t_cached + t_teacher) / t_cached``, with ``t_teacher`` the teacher's time inside
that repeat's online run, so ideal and measured share one baseline and one condition.
Teachers are randomly initialised: speed does not depend on the weights.
"""

import argparse

from kdcache.tools.bench.bench_data import IMAGENET_SHAPED, add_step_benchmark_options, step_setup
from kdcache.tools.bench.harness import (
    add_shape_option,
    progress_log,
    shaped,
    step_lines,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

_log = progress_log("train")

MODES = ("none", "cached", "online", "teacher")
SHAPES = {
    "fmnist": {"student": "deit_tiny_distilled_patch16_224", "resolution": 28,
               "teacher": "regnety_032", "teacher_resolution": 64, "source": "fashion-mnist",
               "images": 10000, "test_images": 100, "shard_size": 1000, "steps": 60,
               "warmup_steps": 10, "batch_size": 128},
    "imagenet": {"student": "deit_tiny_distilled_patch16_224", "resolution": 224,
                 "teacher": "efficientnet_lite0", "teacher_resolution": 224,
                 "source": IMAGENET_SHAPED, "images": 1000, "test_images": 10,
                 "shard_size": 250, "steps": 12, "warmup_steps": 8, "batch_size": 16},
}  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict:
    """Teach a one-view cache, then time the modes interleaved; the report as a dict."""
    from kdcache.tools.bench.train_modes import TrainModes

    run = step_setup(args, "bench-train", SHAPES)
    bench = TrainModes(args, run.data, run.cache, run.checkpoint, run.plan)
    measured = bench.interleaved(MODES, args.repeats, args.warmup, log=_log)
    config = {
        "modes": list(MODES), "torch_threads": run.threads, "loader_workers": args.workers,
        "persistent_workers": args.workers > 0, "train_images": args.images,
        "views": bench.cached.plan.views, "plan": bench.cached.plan.to_attrs(),
        "topk": bench.online.topk, "data": run.data, "cache": run.cache,
        "teacher_checkpoint": run.checkpoint, "shard_size": args.shard_size,
        "student_args": bench.spec.model_args,
        "teacher_resolution_online": bench.online.resolution, "work": run.work,
    }  # fmt: skip
    return run.session.report(config, measured)


def add_bench_train_parser(commands) -> None:
    parser = command_parser(commands, "train", __doc__)
    add_shape_option(parser, SHAPES)
    shaped(parser, SHAPES, "--student", "timm architecture (a DeiT below 224 px gets the "
           "demo's small size)")  # fmt: skip
    shaped(parser, SHAPES, "--resolution", "student input size", type=int)
    shaped(parser, SHAPES, "--teacher", "timm architecture")
    shaped(parser, SHAPES, "--teacher-resolution", "teacher input size", type=int)
    parser.add_argument("--topk", type=int, default=5, help="default: %(default)s")
    add_step_benchmark_options(parser, SHAPES, work="shards and cache")
    parser.set_defaults(run=run_bench_train_command)


def run_bench_train_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    config = result["config"]
    print(
        f"bench-train ({args.shape}): {args.student} at {args.resolution} px, teacher {args.teacher} at "
        f"{args.teacher_resolution} px, batch {args.batch_size}, {args.workers} workers, "
        f"{config['torch_threads']} threads, {args.repeats} repeats x {args.steps} steps, "
        f"{config['machine']['cpu_count']} CPUs; median (min-max)\n"
        + step_lines(result, ("  (target >= 0.95)", "  (target >= 0.9)"))
    )
    write_json(args.json, result)
