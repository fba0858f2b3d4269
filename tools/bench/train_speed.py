"""``kdcache bench-train``: student training speed without a teacher, from the cache, and with
the teacher online, side by side in one run.

The same student, seed, views and batch size train ``--epochs`` epochs three ways: ``--teacher
none`` (plain supervised training, the floor), ``cached`` (targets read from a cache made by
``kdcache teach`` beforehand) and ``online`` (the teacher runs on every batch's views, DeiT's
way). The teacher's forward pass alone is timed too, giving the ideal online slow-down
``(t_student + t_teacher) / t_student``. Teachers are randomly initialised: speed does not
depend on the weights.
"""

import argparse
import os
import tempfile
import time
from dataclasses import replace

import torch

from kdcache.pipeline.views import ViewPlan
from kdcache.tools.bench.bench_data import (
    add_bench_data_arguments,
    bench_manifest,
    random_teacher,
    write_result,
)
from kdcache.trainer.data import OnlineTeacher
from kdcache.trainer.run import TrainConfig, train

DEIT_SMALL = {"patch_size": 7, "embed_dim": 128, "depth": 6, "num_heads": 4}


def teacher_seconds_per_image(checkpoint: str, manifest, batch_size: int, batches: int) -> float:
    """Seconds per image of the online teacher's work in a step (forward pass and top-k)."""
    teacher = OnlineTeacher(
        checkpoint,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        device=torch.device("cpu"),
    )
    size = teacher.resolution
    images = torch.rand(batch_size, manifest.channels, size, size)
    teacher(images)  # warm-up
    began = time.perf_counter()
    for _ in range(batches):
        teacher(images)
    return (time.perf_counter() - began) / (batches * batch_size)


def run_benchmark(args: argparse.Namespace) -> dict:
    """Teach a one-view cache, then train the student three ways; the figures as a dict."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach, start_ray, stop_ray

    work = args.work or tempfile.mkdtemp(prefix="kdcache-bench-train-")
    data = os.path.join(work, "data")
    manifest = bench_manifest(data, args.source, args.images, args.test_images, args.shard_size)
    checkpoint = os.path.join(work, f"{args.teacher}.pth")
    random_teacher(manifest, args.teacher, args.teacher_resolution, checkpoint)
    plan = ViewPlan(seed=0, views=1)
    cache = os.path.join(work, f"cache-{time.time_ns()}.zarr")
    start_ray(None)
    run_teach(
        TeachConfig(
            manifest=data,
            cache=cache,
            teachers=[TeacherSource(checkpoint)],
            plan=plan,
            topk=args.topk,
            progress=False,
        )
    )
    stop_ray()  # free the CPUs for training

    base = TrainConfig(
        manifest=data,
        out="",
        model=args.student,
        model_args=DEIT_SMALL if args.student.startswith("deit") else {},
        resolution=args.resolution,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        plan={"seed": 0, "views": 1},
        progress=False,
    )
    modes = {
        "none": base,
        "cached": replace(base, kd="soft", cache=cache, plan={}),
        "online": replace(
            base, kd="soft", teacher="online", teacher_checkpoint=checkpoint, topk=args.topk
        ),
    }
    rates = {}
    for mode, config in modes.items():
        final = train(replace(config, out=os.path.join(work, "runs", mode)))
        rates[mode] = final["train_images_per_s"]
        print(f"bench-train: {mode:6s} {rates[mode]:8.1f} img/s", flush=True)
    t_student = 1 / rates["none"]
    t_teacher = teacher_seconds_per_image(checkpoint, manifest, args.batch_size, batches=20)
    ideal = (t_student + t_teacher) / t_student
    measured = rates["cached"] / rates["online"]
    return {
        "student": args.student,
        "resolution": args.resolution,
        "teacher": args.teacher,
        "teacher_resolution": args.teacher_resolution,
        "images": args.images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "images_per_s": rates,
        "teacher_images_per_s": 1 / t_teacher,
        "cached_over_none": rates["cached"] / rates["none"],
        "cached_over_online": measured,
        "ideal_cached_over_online": ideal,
        "share_of_ideal": measured / ideal,
    }


def add_bench_train_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-train",
        help="benchmark student training: no teacher vs cached targets vs online teacher",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--student",
        default="deit_tiny_distilled_patch16_224",
        help="timm architecture (DeiT gets the demo's small size) (default: %(default)s)",
    )
    parser.add_argument("--resolution", type=int, default=28, help="student input size")
    parser.add_argument(
        "--teacher", default="regnety_032", help="timm architecture (default: %(default)s)"
    )
    parser.add_argument("--teacher-resolution", type=int, default=64, help="default: %(default)s")
    parser.add_argument(
        "--images", type=int, default=10000, help="train images (default: %(default)s)"
    )
    parser.add_argument("--test-images", type=int, default=500, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=2, help="per mode (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--topk", type=int, default=5, help="default: %(default)s")
    add_bench_data_arguments(parser, work="shards, cache and runs")
    parser.set_defaults(run=run_bench_train_command)


def run_bench_train_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    rates = result["images_per_s"]
    print(
        f"bench-train: {result['student']} at {result['resolution']} px, teacher "
        f"{result['teacher']} at {result['teacher_resolution']} px, {result['images']} images x "
        f"{result['epochs']} epochs, batch {result['batch_size']}, {result['cpus']} CPUs\n"
        f"  train img/s: none {rates['none']:.1f}, cached {rates['cached']:.1f}, "
        f"online {rates['online']:.1f}; teacher forward alone "
        f"{result['teacher_images_per_s']:.1f} img/s\n"
        f"  cached / none:   {result['cached_over_none']:.3f}  (target >= 0.95)\n"
        f"  cached / online: {result['cached_over_online']:.3f}, ideal "
        f"{result['ideal_cached_over_online']:.3f}: {result['share_of_ideal']:.3f} of ideal "
        "(target >= 0.9)"
    )
    write_result(args.json, result)
