"""``kdcache bench replay``: per-view cost of kdcache's renderers against timm's training
transform, from ~500x375 JPEGs to 224 px, side by side in one process.

Every mode starts from the same encoded JPEGs in memory (``tools.bench.photo_set``, made from
scikit-image's photos) and ends with normalised float tensors at the same size. Trainer path:
one view per image, decoded per view (a mixed view decodes and renders its partner too).
Teacher path: each image decoded once and rendered in V views, in the job's batches of 256
(two batch buffers in turn, as the job). Modes: ``kdcache`` (the default renderer, ``cpu/4``),
``cpu2`` (an earlier default), ``today`` (``cpu/1``, the renderer of caches made before
renderer versions), ``timm`` (``PIL.Image.open`` and ``transforms_imagenet_train``, what
``create_transform(is_training=True)`` builds, with the same operations; with mixing, timm's
``Mixup`` in element mode on batches of 128, the last partial batch included, so every sample
is mixed). Time is CPU time of this process (core-µs) on one torch thread, after a warm-up
round, every (configuration, path, mode) interleaved (ABCABC) for several repeats: the table
gives the median and the min-max per view, and views/s per core. With ``--loaders`` it times
instead, end to end, kdcache's training loader against timm's usual one
(``tools.bench.loader_speed``).
"""

import argparse
import os

from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    interleave,
    ratio,
    set_threads,
    shown,
    work_folder,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

MODES = ("kdcache", "cpu2", "today", "timm", "decode")  # decode: torchvision's JPEG decode alone
PATHS = ("trainer", "teacher")
WARM_IMAGES = 8  # a warm-up run's images


def _modes(args, encoded: list[bytes]) -> list[Mode]:
    """Every (configuration, path, mode), named ``configuration / path / mode``."""
    from kdcache.tools.bench.replay_modes import photo_params, run_mode
    from kdcache.tools.bench.replay_plans import CONFIGURATIONS

    modes = []
    for name, plan in CONFIGURATIONS.items():
        params, warm = photo_params(plan, encoded), photo_params(plan, encoded[:WARM_IMAGES])
        for path in PATHS:
            for mode in MODES:
                every = (mode, plan, encoded, params, args.resolution, path, args.views)
                few = (mode, plan, encoded[:WARM_IMAGES], warm, args.resolution, path, args.views)
                modes.append(Mode(f"{name} / {path} / {mode}",
                                  lambda _, every=every: run_mode(*every),
                                  warmup=lambda few=few: run_mode(*few)))  # fmt: skip
    return modes


def _ratios(figures: dict) -> dict:
    """Per configuration and path: each other mode / kdcache (core-us)."""
    out = {}
    for name in {key.rsplit(" / ", 1)[0] for key in figures}:
        own = figures[f"{name} / kdcache"]["core_us"]
        for mode in MODES[1:]:
            out[f"{name} / {mode}_over_kdcache"] = ratio(
                figures[f"{name} / {mode}"]["core_us"], own
            )
    return out


def run_loaders(args: argparse.Namespace) -> dict:
    """``--loaders``: KDLoader against timm's ImageFolder loader, interleaved; the report."""
    from kdcache.tools.bench.loader_speed import loader_modes

    session = Session.start("bench-replay", args)
    work = work_folder(args.work, "bench-replay", session.options)
    modes = loader_modes(work, args.loader_images, args.workers, args.batch_size, args.resolution)
    print(f"bench-replay --loaders: {args.loader_images} JPEGs (~500x375) to {args.resolution} "
          f"px, {args.workers} workers, batch {args.batch_size}, {args.repeats} repeats")  # fmt: skip
    measured = interleave(modes, args.repeats, args.warmup, log=lambda _: None)
    figures = measured["modes"]
    kd, timm = figures["loader / kdcache"], figures["loader / timm"]
    measured["ratios"] = {"kdcache_over_timm": ratio(kd["images_per_s"], timm["images_per_s"]),
                          "timm_cpu_over_kdcache": ratio(timm["cpu_ms_per_image"],
                                                         kd["cpu_ms_per_image"])}  # fmt: skip
    config = {"images": args.loader_images, "workers": args.workers,
              "batch_size": args.batch_size, "resolution": args.resolution, "work": work}  # fmt: skip
    result = session.report(config, measured)
    for name, mode in figures.items():
        print(f"  {name:18s} {shown(mode['images_per_s'], 1)} images/s; CPU ms/image: workers "
              f"{shown(mode['worker_cpu_ms_per_image'], 2)}, main "
              f"{shown(mode['main_cpu_ms_per_image'], 2)}")  # fmt: skip
    print(
        f"  kdcache / timm     {shown(measured['ratios']['kdcache_over_timm'], 2)} images/s; "
        f"CPU per image timm / kdcache {shown(measured['ratios']['timm_cpu_over_kdcache'], 2)}"
    )
    write_json(args.json, result)
    return result


def run_bench_replay(args: argparse.Namespace) -> dict:
    """Time every mode per configuration and path, interleaved; print and return the report."""
    if args.loaders:
        return run_loaders(args)
    import numpy as np

    from kdcache.pipeline.views.plan import DEFAULT_RENDERER
    from kdcache.tools.bench.photo_set import photo_jpegs
    from kdcache.tools.bench.replay_plans import CONFIGURATIONS, MEAN, STD

    session = Session.start("bench-replay", args)
    threads = set_threads(args.threads)
    encoded = photo_jpegs(args.images, seed=args.seed)
    if args.work:
        work = work_folder(args.work, "bench-replay", session.options)
        for index, data in enumerate(encoded):
            with open(os.path.join(work, f"photo-{index:05d}.jpg"), "wb") as f:
                f.write(data)
    print(f"bench-replay: {len(encoded)} JPEGs (~500x375) to {args.resolution} px, {threads} "
          f"thread(s), teacher path {args.views} views, {args.repeats} repeats interleaved")  # fmt: skip
    measured = interleave(_modes(args, encoded), args.repeats, args.warmup, log=lambda _: None)
    measured["ratios"] = _ratios(measured["modes"])
    config = {
        "images": len(encoded), "mean_jpeg_bytes": float(np.mean([len(e) for e in encoded])),
        "teacher_views": args.views, "photo_seed": args.seed, "torch_threads": threads,
        "warmup_images": WARM_IMAGES,
        "plans": {name: plan.to_attrs() for name, plan in CONFIGURATIONS.items()},
        "modes_meaning": {"kdcache": f"renderer {DEFAULT_RENDERER}", "cpu2": "renderer cpu/2",
                          "today": "renderer cpu/1",
                          "timm": "transforms_imagenet_train + Mixup(elem, batch 128, every "
                                  "sample: the last partial batch too)",
                          "decode": "torchvision.io.decode_jpeg alone (trainer: per view; "
                                    "teacher: per image, divided by V)"},
        "mean": MEAN, "std": STD, "timing": "time.process_time per view (core-us)",
    }  # fmt: skip
    result = session.report(config, measured)
    _print(result)
    write_json(args.json, result)
    return result


def _print(result: dict) -> None:
    figures, ratios = result["modes"], result["ratios"]
    print(f"{'configuration / path':28s} {'mode':8s} {'core-us/view':>13s} {'min-max':>13s} "
          f"{'views/s/core':>12s}")  # fmt: skip
    for name in dict.fromkeys(key.rsplit(" / ", 1)[0] for key in figures):
        for mode in MODES:
            core = figures[f"{name} / {mode}"]["core_us"]
            print(f"{name:28s} {mode:8s} {core['median']:13.0f} "
                  f"{core['min']:6.0f}-{core['max']:<6.0f} {1e6 / core['median']:12.0f}")  # fmt: skip
        print(f"{'':28s} ratios: today/kdcache {ratios[f'{name} / today_over_kdcache']['median']:.2f}, "
              f"cpu2/kdcache {ratios[f'{name} / cpu2_over_kdcache']['median']:.2f}, "
              f"timm/kdcache {ratios[f'{name} / timm_over_kdcache']['median']:.2f}; decode is "
              f"{ratios[f'{name} / decode_over_kdcache']['median']:.0%} of kdcache's")  # fmt: skip


def add_bench_replay_parser(commands) -> None:
    parser = command_parser(commands, "replay", __doc__)
    parser.add_argument("--images", type=int, default=200, help="default: %(default)s")
    parser.add_argument("--resolution", type=int, default=224, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=8, help="teacher-path views per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated photos")
    parser.add_argument("--loaders", action="store_true", help="instead: KDLoader against "
                        "timm's ImageFolder + create_transform + DataLoader, images/s and "
                        "CPU ms per image of workers and main process")  # fmt: skip
    parser.add_argument("--loader-images", type=int, default=1000, help="--loaders: JPEGs "
                        "per epoch (default: %(default)s)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="--loaders: DataLoader "
                        "workers of both (default: %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64, help="--loaders: batch size "
                        "(default: %(default)s)")  # fmt: skip
    add_common_options(parser, work="the generated JPEGs (saved only if given)", threads=1)
    parser.set_defaults(run=run_bench_replay)
