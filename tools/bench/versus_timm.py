"""``kdcache bench timm``: no KD and timm's online KD through timm's own tasks against
kdcache's cached task, interleaved in one run.

Three modes train the same seeded student with timm's ``create_optimizer_v2`` (AdamW) on the
same replayed views: ``none``, timm's ``ClassificationTask`` (the floor); ``online``, timm's
``LogitDistillationTask`` or ``TokenDistillationTask`` with the real teacher run on every batch
(timm feeds it the student's input; its forward is clocked inside the run); ``cached``,
kdcache's ``CachedLogitDistillationTask`` or ``CachedTokenDistillationTask`` reading the
teacher's targets from a cache; ``teacher``, the teacher's forward alone on the online run's
real batches. Each mode keeps its task and a persistent DataLoader; the modes run interleaved
(none, online, cached, teacher; then again) ``--repeats`` times after ``--warmup`` untimed
rounds; each run skips ``--warmup-steps`` then times ``--steps`` steps, data loading included.
Reported: img/s per mode (all runs, median, min, max), per repeat the ratios cached / none,
cached / online and the ideal cached / online ``(t_cached + t_teacher) / t_cached`` with the
teacher's time inside that repeat's online run, and the whole configuration, as JSON.
Without ``--data``/``--cache``/``--teacher-checkpoint`` a slice is sharded and a randomly
initialised teacher (speed does not depend on the weights) teaches a one-view cache first,
all rebuilt in ``--work`` on every run.
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

_log = progress_log("timm")

MODES = ("none", "online", "cached", "teacher")
SHAPES = {
    "fmnist": {"student": "deit_tiny_distilled_patch16_224", "teacher": "regnety_032",
               "teacher_resolution": 32, "source": "fashion-mnist", "images": 5000,
               "test_images": 100, "shard_size": 1000, "steps": 30, "warmup_steps": 10,
               "batch_size": 128},
    "imagenet": {"student": "deit_tiny_distilled_patch16_224", "teacher": "efficientnet_lite0",
                 "teacher_resolution": 224, "source": IMAGENET_SHAPED, "images": 1000,
                 "test_images": 10, "shard_size": 250, "steps": 12, "warmup_steps": 8,
                 "batch_size": 16},
}  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict:
    from kdcache.tools.bench.timm_modes import TimmModes

    run = step_setup(args, "bench-timm", SHAPES)
    bench = TimmModes(args, run.data, run.cache, run.checkpoint, run.plan)
    measured = bench.interleaved(MODES, args.repeats, args.warmup, log=_log)
    token = bench.distill == "token"
    config = {
        "modes": list(MODES), "data": run.data, "cache": run.cache,
        "teacher_checkpoint": run.checkpoint, "work": run.work, "distill": bench.distill,
        "resolution": bench.resolution,
        "student_kwargs": bench.model_kwargs(), "teacher_arch": bench.teacher.spec.arch,
        "teacher_resolution_cached": bench.teacher.spec.resolution,
        "teacher_resolution_online": bench.resolution, "topk": bench.cached.topk,
        "num_classes": bench.manifest.num_classes, "train_images": bench.train_images,
        "views": bench.cached.plan.views, "plan": bench.cached.plan.to_attrs(),
        "torch_threads": run.threads, "loader_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "tasks": {
            "none": "timm.task.ClassificationTask",
            "online": f"timm.task.{'Token' if token else 'Logit'}DistillationTask",
            "cached": f"kdcache.trainer.kd.Cached{'Token' if token else 'Logit'}DistillationTask",
        },
        "optimizer": {"name": "adamw", "lr": args.lr},
        "loss_weights": {"task_loss_weight": 1 - args.alpha, "distill_loss_weight": args.alpha,
                         "temperature": args.tau},
    }  # fmt: skip
    if args.accuracy_epochs:
        from kdcache.tools.bench.timm_accuracy import accuracy_rows

        measured["accuracy"] = accuracy_rows(args, run.data, run.cache, run.checkpoint, run.plan)
    return run.session.report(config, measured)


def add_bench_timm_parser(commands) -> None:
    parser = command_parser(commands, "timm", __doc__)
    add_shape_option(parser, SHAPES)
    shaped(parser, SHAPES, "--student", "timm architecture (a DeiT below 224 px gets a small "
           "size unless --model-kwargs)")  # fmt: skip
    parser.add_argument("--model-kwargs", default=None, help="JSON for timm.create_model")
    parser.add_argument(
        "--distill",
        choices=("logit", "token"),
        default=None,
        help="timm task pair (default: token for a student with a distillation head)",
    )
    shaped(parser, SHAPES, "--teacher", "timm architecture of the teacher made here")
    shaped(parser, SHAPES, "--teacher-resolution", "input size of the teacher made here",
           type=int)  # fmt: skip
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="student input (and online teacher) size (default: the teacher's)",
    )
    parser.add_argument(
        "--topk", type=int, default=None, help="cached top-k used (default: all the cache holds)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="default: %(default)s")
    parser.add_argument("--tau", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--accuracy-epochs", type=int, default=0, metavar="E",
                        help="also train each task E epochs and report test accuracy, with the "
                        "no-KD seed noise (needs a trained teacher: --data/--cache/"
                        "--teacher-checkpoint) (default: %(default)s, speed only)")  # fmt: skip
    add_step_benchmark_options(parser, SHAPES, work="shards, teacher and cache")
    parser.set_defaults(run=run_bench_timm_command)


def run_bench_timm_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    config = result["config"]
    print(
        f"bench-timm ({args.shape}): {args.student} at {config['resolution']} px ({config['distill']}), "
        f"teacher {config['teacher_arch']}, batch {args.batch_size}, {args.repeats} "
        f"repeats x {args.steps} steps, {config['machine']['cpu_count']} CPUs; median (min-max)\n"
        + step_lines(result)
    )
    for run, row in result.get("accuracy", {}).items():
        print(f"  {args.accuracy_epochs} epochs, {run:16s} test acc {row['test_acc']:.2f} % "
              f"({row['images_per_s']:.0f} img/s)")  # fmt: skip
    write_json(args.json, result)
