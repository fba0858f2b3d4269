"""``kdcache bench teach``: the teacher pass against raw teacher inference in the same layout.

Modes, interleaved for ``--repeats`` rounds after ``--warmup`` untimed ones: ``raw WxT`` is
``model(x)`` alone in W processes x T torch threads over pre-decoded, pre-rendered, normalised
batches of the same shards (shard i to process i mod W), for every layout W x T of this
machine's CPUs, with the host allocator teach's actors use; the one matching teach's
(``--workers`` actors x ``--cpus-per-worker`` threads) is the same-layout ceiling, the fastest
the best-layout line, and ``raw WxT, default allocator`` is that layout with the C library's
own allocator (what the actors' allocator buys; ``--no-allocator-baseline`` leaves it out).
``teach`` is the whole ``kdcache teach`` command (tar reading, decoding, view replay, inference,
top-k, Zarr writes, ledger) into a new cache, its clock started before Ray starts; Ray's start
and the actors' start-up (importing torch, loading the teacher) are reported apart, and the
steady rate without them. Teachers are randomly initialised: speed does not depend on the weights.
``render 1 CPU`` and ``render N CPUs`` time one actor's render stage alone (decode and views,
no model; ``tools.bench.teach_render``) with its torch threads, and so its render pool, set to
1 and to all N CPUs of this machine.
"""

import argparse
import os
import time

from kdcache.tools.bench.bench_data import IMAGENET_SHAPED, bench_manifest, random_teacher
from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    add_data_options,
    add_shape_option,
    fresh,
    interleave,
    progress_log,
    ratio,
    shaped,
    shown,
    work_folder,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

_log = progress_log("teach")

SHAPES = {
    "fmnist": {"source": "fashion-mnist", "teacher": "regnety_016", "resolution": 64,
               "images": 10000, "test_images": 10, "shard_size": 1000, "batch_size": 128},
    "imagenet": {"source": IMAGENET_SHAPED, "teacher": "efficientnet_lite0", "resolution": 224,
                 "images": 1000, "test_images": 10, "shard_size": 250, "batch_size": 32},
}  # fmt: skip


def layouts(cpus: int, shards: int) -> list[tuple[int, int]]:
    """Every (processes, threads) using all ``cpus`` with at most one process per shard."""
    return [(p, cpus // p) for p in range(1, cpus + 1) if cpus % p == 0 and p <= shards]


def _layout_list(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` as [(1, 2), (2, 1)]."""
    try:
        found = [tuple(int(n) for n in item.split("x")) for item in text.split(",")]
    except ValueError:
        found = []
    if not found or any(len(pair) != 2 or min(pair) < 1 for pair in found):
        raise argparse.ArgumentTypeError(f"expected layouts like 1x2,2x1, got {text!r}")
    return found


def teach_layout(args: argparse.Namespace, cpus: int, shards: int) -> tuple[int, int]:
    """(actors, threads each) the teacher job starts here with these options."""
    threads = max(1, int(args.cpus_per_worker))
    return min(args.workers or int(cpus / args.cpus_per_worker), shards), threads


def _teach(args, data: str, checkpoint: str, plan, work: str) -> dict[str, float]:
    """The whole command into a new cache: views/s from before Ray starts to the end."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach, start_ray, stop_ray

    cache = fresh(os.path.join(work, "cache.zarr"))
    began = time.perf_counter()
    start_ray(None)
    ray_seconds = time.perf_counter() - began
    try:
        summary = run_teach(
            TeachConfig(
                manifest=data,
                cache=cache,
                teachers=[TeacherSource(checkpoint)],
                plan=plan,
                topk=args.topk,
                batch_size=args.batch_size,
                workers=args.workers,
                cpus_per_worker=args.cpus_per_worker,
                progress=False,
            )  # fmt: skip
        )
        seconds = time.perf_counter() - began
    finally:
        stop_ray()
    steady = seconds - ray_seconds - summary.startup_seconds
    worker_total = sum(summary.timings.values()) or 1.0
    return {"views_per_s": summary.views / seconds, "steady_views_per_s": summary.views / steady,
            "ray_start_s": ray_seconds, "actor_startup_s": summary.startup_seconds,
            "actors": summary.workers,
            **{f"worker_share_{k}": v / worker_total for k, v in summary.timings.items()}}  # fmt: skip


def _ratios(figures: dict, same_name: str, best: str, default: str | None) -> dict:
    """teach (all and steady) over raw inference in teach's layout and in the best one; raw
    with the reused host buffers over the default allocator, if measured."""
    teach, same, top = figures["teach"], figures[same_name], figures[best]
    ratios = {
        "teach_over_raw_same_layout": ratio(teach["views_per_s"], same["views_per_s"]),
        "steady_over_raw_same_layout": ratio(teach["steady_views_per_s"], same["views_per_s"]),
        "teach_over_raw_best_layout": ratio(teach["views_per_s"], top["views_per_s"]),
        "steady_over_raw_best_layout": ratio(teach["steady_views_per_s"], top["views_per_s"]),
    }
    if default:
        ratios["raw_reuse_over_default_allocator"] = ratio(
            same["views_per_s"], figures[default]["views_per_s"]
        )
    return ratios


def run_benchmark(args: argparse.Namespace) -> dict:
    """Raw inference in every layout and the teacher pass, interleaved; the report as a dict."""
    from kdcache.pipeline.views import ViewPlan
    from kdcache.tools.bench.teach_raw import raw_layout
    from kdcache.tools.bench.teach_render import render_only

    session = Session.start("bench-teach", args, SHAPES)
    work = work_folder(args.work, "bench-teach", session.options)
    data = os.path.join(work, "data")
    manifest = bench_manifest(data, args.source, args.images, args.test_images, args.shard_size)
    checkpoint = os.path.join(work, f"{args.teacher}.pth")
    spec = random_teacher(manifest, args.teacher, args.resolution, checkpoint)
    plan = ViewPlan(seed=0, views=args.views)
    cpus, shards = os.cpu_count() or 1, len(manifest.shards_of("train"))
    same = teach_layout(args, cpus, shards)
    shapes = sorted({*(args.raw_layouts or layouts(cpus, shards)), same})
    modes = [
        Mode(f"raw {p}x{t}", lambda _, p=p, t=t: raw_layout(data, spec, checkpoint, plan,
                                                            args.batch_size, p, t))
        for p, t in shapes
    ]  # fmt: skip
    raw_modes = [mode.name for mode in modes]
    default = f"raw {same[0]}x{same[1]}, default allocator" if args.allocator_baseline else None
    if default:
        modes.append(Mode(default, lambda _: raw_layout(data, spec, checkpoint, plan,
                                                        args.batch_size, *same,
                                                        allocator="default")))  # fmt: skip
    modes.append(Mode("teach", lambda _: _teach(args, data, checkpoint, plan, work)))
    render_modes = {count: f"render {count} CPU{'s' if count > 1 else ''}"
                    for count in sorted({1, cpus})}  # fmt: skip
    modes += [Mode(name, lambda _, n=n: render_only(data, spec, plan, args.batch_size, n))
              for n, name in render_modes.items()]  # fmt: skip
    measured = interleave(modes, args.repeats, args.warmup, log=_log)
    figures = measured["modes"]
    same_name = f"raw {same[0]}x{same[1]}"
    best = max(raw_modes, key=lambda n: figures[n]["views_per_s"]["median"])
    measured["ratios"] = _ratios(figures, same_name, best, default)
    measured["ratios"]["render_all_cpus_over_one"] = ratio(
        figures[render_modes[cpus]]["views_per_s"], figures[render_modes[1]]["views_per_s"]
    )
    config = {"teach_layout": {"actors": same[0], "threads": same[1]},
              "same_layout_mode": same_name, "best_layout_mode": best,
              "default_allocator_mode": default, "host_allocator": "reuse",
              "layouts": [f"{p}x{t}" for p, t in shapes], "shards": shards,
              "shard_size": args.shard_size, "train_images": args.images,
              "views": plan.views, "total_views": args.images * plan.views,
              "plan": plan.to_attrs(), "topk": args.topk, "batch_size": args.batch_size,
              "teacher_spec": {"arch": spec.arch, "resolution": spec.resolution},
              "raw_shard_split": "shard i to process i mod W (teach: a free actor takes "
                                 "the next shard)", "work": work}  # fmt: skip
    return session.report(config, measured)


def add_bench_parser(commands) -> None:
    parser = command_parser(commands, "teach", __doc__)
    add_shape_option(parser, SHAPES)
    shaped(parser, SHAPES, "--teacher", "timm architecture")
    shaped(parser, SHAPES, "--resolution", "teacher input size", type=int)
    parser.add_argument("--views", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--topk", type=int, default=5, help="default: %(default)s")
    shaped(parser, SHAPES, "--batch-size", "teacher batch size", type=int)
    parser.add_argument("--workers", type=int, default=None,
                        help="teach's Ray actors (default: as many as fit)")  # fmt: skip
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="CPUs (= torch threads) per actor (default: %(default)s)")  # fmt: skip
    parser.add_argument("--allocator-baseline", action=argparse.BooleanOptionalAction,
                        default=True, help="also time teach's raw layout with the C library's "
                        "own allocator (default: %(default)s)")  # fmt: skip
    parser.add_argument("--raw-layouts", type=_layout_list, default=None, metavar="PxT,...",
                        help="raw model(x) layouts, processes x threads (default: every one "
                        "using all CPUs); teach's own is always measured")  # fmt: skip
    add_data_options(parser, SHAPES)
    add_common_options(parser, work="shards and caches", with_threads=False)
    parser.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    config, figures, ratios = result["config"], result["modes"], result["ratios"]
    teach = figures["teach"]
    same, best = config["same_layout_mode"], config["best_layout_mode"]
    print(
        f"bench-teach: {args.teacher} at {args.resolution} px, {config['total_views']} views, "
        f"batch {args.batch_size}, teach {config['teach_layout']['actors']} actors x "
        f"{config['teach_layout']['threads']} threads, {config['machine']['cpu_count']} CPUs, "
        f"{args.repeats} repeats; median (min-max)\n"
        + "".join(
            f"  {name:10s} model(x) alone: {shown(figures[name]['views_per_s'], 1)} views/s\n"
            for name in figures
            if name != "teach" and not name.startswith("render")
        )
        + "".join(
            f"  {name:10s} decode + views alone: {shown(figures[name]['views_per_s'], 1)} views/s\n"
            for name in figures
            if name.startswith("render")
        )
        + f"  render all CPUs / 1 CPU: {shown(ratios['render_all_cpus_over_one'])}\n"
        + f"  teach, whole command:         {shown(teach['views_per_s'], 1)} views/s "
        f"(Ray start {shown(teach['ray_start_s'], 1)} s, actor start-up "
        f"{shown(teach['actor_startup_s'], 1)} s)\n"
        f"  teach / raw, same layout ({same}): {shown(ratios['teach_over_raw_same_layout'])}; "
        f"without start-up {shown(ratios['steady_over_raw_same_layout'])}\n"
        f"  teach / raw, best layout ({best}): {shown(ratios['teach_over_raw_best_layout'])}; "
        f"without start-up {shown(ratios['steady_over_raw_best_layout'])}\n"
        + (
            f"  raw {same}: allocator reuse / default "
            f"{shown(ratios['raw_reuse_over_default_allocator'])}\n"
            if "raw_reuse_over_default_allocator" in ratios
            else ""
        )
        + "  worker time: "
        + ", ".join(
            f"{k[13:]} {100 * v['median']:.1f}%"
            for k, v in sorted(teach.items())
            if k.startswith("worker_share_")
        )  # fmt: skip
    )
    write_json(args.json, result)
