"""``kdcache bench train``: student training speed without a teacher, from the cache, and with
the teacher online, interleaved in one process.

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

from kdcache.tools.bench.bench_data import IMAGENET_SHAPED, add_given_cache_options, given_or_made
from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    add_data_options,
    add_shape_option,
    add_step_options,
    apply_shape,
    benchmark_parser,
    interleave,
    options_of,
    progress_log,
    ratio,
    set_threads,
    shaped,
    shown,
    spread,
    write_json,
)

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

    apply_shape(args, SHAPES)
    session = Session("bench-train", options_of(args))
    threads = set_threads(args.threads)
    data, cache, checkpoint, plan, work = given_or_made(
        args, "bench-train", session.options, args.teacher_resolution
    )
    bench = TrainModes(args, data, cache, checkpoint, plan)
    modes = [Mode(name, lambda _, name=name: bench.run(name)) for name in MODES]
    measured = interleave(modes, args.repeats, args.warmup, log=_log)
    rates = {m: f["images_per_s"] for m, f in measured["modes"].items()}
    in_run = measured["modes"]["online"]["teacher_ms_per_image"]["runs"]
    # (t_cached + t_teacher) / t_cached, t_cached = 1 / rate, t_teacher in ms per image
    ideal = [1 + c * t / 1e3 for c, t in zip(rates["cached"]["runs"], in_run, strict=True)]
    measured["ratios"] = {
        "cached_over_none": ratio(rates["cached"], rates["none"]),
        "cached_over_online": ratio(rates["cached"], rates["online"]),
        "ideal_cached_over_online": spread(ideal),
    }
    measured["ratios"]["share_of_ideal"] = ratio(
        measured["ratios"]["cached_over_online"], measured["ratios"]["ideal_cached_over_online"]
    )
    config = {
        "modes": list(MODES), "torch_threads": threads, "loader_workers": args.workers,
        "persistent_workers": args.workers > 0, "train_images": args.images,
        "views": bench.cached.plan.views, "plan": bench.cached.plan.to_attrs(),
        "topk": bench.online.topk, "data": data, "cache": cache, "teacher_checkpoint": checkpoint,
        "shard_size": args.shard_size, "student_args": bench.spec.model_args,
        "teacher_resolution_online": bench.online.resolution, "work": work,
    }  # fmt: skip
    return session.report(config, measured)


_log = progress_log("train")


def add_bench_train_parser(commands) -> None:
    parser = benchmark_parser(
        commands,
        "train",
        "benchmark student training: no teacher vs cached targets vs online teacher",
        __doc__,
    )
    add_shape_option(parser, SHAPES)
    shaped(parser, SHAPES, "--student", "timm architecture (a DeiT below 224 px gets the "
           "demo's small size)")  # fmt: skip
    shaped(parser, SHAPES, "--resolution", "student input size", type=int)
    shaped(parser, SHAPES, "--teacher", "timm architecture")
    shaped(parser, SHAPES, "--teacher-resolution", "teacher input size", type=int)
    parser.add_argument("--topk", type=int, default=5, help="default: %(default)s")
    add_given_cache_options(parser)
    add_data_options(parser, SHAPES)
    add_step_options(parser, SHAPES)
    add_common_options(parser, work="shards and cache")
    parser.set_defaults(run=run_bench_train_command)


def run_bench_train_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    rates = {mode: figures["images_per_s"] for mode, figures in result["modes"].items()}
    ratios, config = result["ratios"], result["config"]
    teacher = result["modes"]["online"]["teacher_ms_per_image"]
    print(
        f"bench-train ({args.shape}): {args.student} at {args.resolution} px, teacher {args.teacher} at "
        f"{args.teacher_resolution} px, batch {args.batch_size}, {args.workers} workers, "
        f"{config['torch_threads']} threads, {args.repeats} repeats x {args.steps} steps, "
        f"{config['machine']['cpu_count']} CPUs; median (min-max)\n"
        + "".join(f"  {mode:8s} {shown(rates[mode], 1)} img/s\n" for mode in MODES)
        + f"  teacher inside the online run: {shown(teacher, 2)} ms/img\n"
        f"  cached / none:   {shown(ratios['cached_over_none'])}  (target >= 0.95)\n"
        f"  cached / online: {shown(ratios['cached_over_online'])}, ideal "
        f"{shown(ratios['ideal_cached_over_online'])}\n"
        f"  share of ideal:  {shown(ratios['share_of_ideal'])}  (target >= 0.9)"
    )
    write_json(args.json, result)
