"""``kdcache bench-teach``: the teacher pass against raw teacher inference, side by side.

Both run in this process tree on the same images, views and batch size: first ``model(x)``
over pre-decoded, pre-augmented, normalised batches (the ceiling), then the whole
``kdcache teach`` path (tar reading, decoding, view replay, inference, top-k, Zarr writes,
ledger) on a Ray cluster already started. It prints the throughput ratio and where the
pass's worker time goes.
"""

import argparse
import os
import tempfile
import time

import torch

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, create_model, read_shard_images
from kdcache.pipeline.views import ViewPlan, ViewRenderer, normalize
from kdcache.tools.bench.bench_data import (
    add_bench_data_arguments,
    bench_manifest,
    random_teacher,
    write_result,
)


@torch.inference_mode()
def raw_inference(manifest: Manifest, spec: ModelSpec, path: str, plan: ViewPlan, batch_size: int):
    """Seconds of ``model(x)`` alone over every view, inputs prepared beforehand."""
    model = create_model(spec, checkpoint_path=path).eval()
    batches = []
    renderer = ViewRenderer(plan)
    for shard in manifest.shards_of("train"):
        images = read_shard_images(manifest, shard)
        params = plan.shard_params(manifest, shard)
        for view in range(plan.views):
            views = [
                renderer.render(images, params[:, view], i, spec.resolution)
                for i in range(len(images))
            ]
            for start in range(0, len(views), batch_size):
                batches.append(
                    normalize(torch.stack(views[start : start + batch_size]), spec.mean, spec.std)
                )
    model(batches[0])  # warm-up
    began = time.perf_counter()
    for batch in batches:
        model(batch)
    return time.perf_counter() - began, sum(len(b) for b in batches)


def run_benchmark(args: argparse.Namespace) -> dict:
    """Raw inference, then the teacher pass, on the same data; the figures as a dict."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach, start_ray

    work = args.work or tempfile.mkdtemp(prefix="kdcache-bench-")
    data = os.path.join(work, "data")
    manifest = bench_manifest(data, args.source, args.images, 10, args.shard_size)
    checkpoint = os.path.join(work, f"{args.teacher}.pth")
    spec = random_teacher(manifest, args.teacher, args.resolution, checkpoint)
    plan = ViewPlan(seed=0, views=args.views)
    torch.set_num_threads(os.cpu_count())
    raw_seconds, views = raw_inference(manifest, spec, checkpoint, plan, args.batch_size)

    start_ray(None)
    cache = os.path.join(work, f"cache-{time.time_ns()}.zarr")
    began = time.perf_counter()
    summary = run_teach(
        TeachConfig(
            manifest=data,
            cache=cache,
            teachers=[TeacherSource(checkpoint)],
            plan=plan,
            topk=args.topk,
            batch_size=args.batch_size,
            progress=False,
        )
    )
    teach_seconds = time.perf_counter() - began
    worker_total = sum(summary.timings.values())
    return {
        "teacher": args.teacher,
        "resolution": args.resolution,
        "views": views,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "raw_views_per_s": views / raw_seconds,
        "teach_views_per_s": views / teach_seconds,
        "ratio": raw_seconds / teach_seconds,
        "steady_ratio": raw_seconds / (teach_seconds - summary.startup_seconds),
        "startup_seconds": summary.startup_seconds,
        "worker_seconds": summary.timings,
        "worker_share": {k: v / worker_total for k, v in summary.timings.items()},
        "raw_seconds": raw_seconds,
        "teach_seconds": teach_seconds,
    }


def add_bench_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-teach",
        help="benchmark the teacher pass against raw teacher inference",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--teacher", default="regnety_016", help="timm architecture (default: %(default)s)"
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="teacher input size (default: %(default)s)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=10000,
        help="Fashion-MNIST train images (default: %(default)s)",
    )
    parser.add_argument("--views", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--topk", type=int, default=5, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    add_bench_data_arguments(parser, work="shards and caches")
    parser.set_defaults(run=run_bench_command)  # fmt: skip


def run_bench_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    print(
        f"bench-teach: {result['teacher']} at {result['resolution']} px, {result['views']} views, "
        f"batch {result['batch_size']}, {result['cpus']} CPUs\n"
        f"  raw model(x) on prepared batches: {result['raw_views_per_s']:8.1f} views/s\n"
        f"  kdcache teach (whole path):       {result['teach_views_per_s']:8.1f} views/s\n"
        f"  ratio teach / raw:                {result['ratio']:8.3f}\n"
        f"  the same without starting workers ({result['startup_seconds']:.1f}s: Ray actors importing "
        f"torch and loading the teacher): {result['steady_ratio']:.3f}\n"
        "  worker time: "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(result["worker_share"].items()))
    )
    write_result(args.json, result)
