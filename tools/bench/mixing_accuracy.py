"""``kdcache bench-mixing``: accuracy of cached KD with exact mixing, label-space mixing and
no mixing, on a Fashion-MNIST subset, same student, seed, views and budget.

It shards the subset, trains a ``regnety_002`` teacher at 32 px, caches its targets twice
(a plan with Mixup/CutMix, which the teacher sees, and the same plan without mixing), then
trains the same DeiT student at 28 px three ways with soft KD:

* ``exact``: the mixed cache; the student replays the mixed images the teacher saw;
* ``label``: the unmixed cache; the student mixes images with the same Mixup/CutMix options
  and mixes the two samples' cached targets with lambda (FKD-style);
* ``none``: the unmixed cache, no mixing.
"""

import argparse
import os
import time
from dataclasses import asdict, replace

import torch

from kdcache.pipeline.views import MIX_FIELDS, ViewPlan
from kdcache.tools.bench.bench_data import bench_manifest, write_result

STUDENT = "deit_tiny_distilled_patch16_224"
STUDENT_ARGS = {"patch_size": 7, "embed_dim": 64, "depth": 3, "num_heads": 2}


def run_bench_mixing(args: argparse.Namespace) -> dict:
    """Teacher, two caches, three students; prints and returns the table."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.trainer.run import TrainConfig, train

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, "data")
    manifest = bench_manifest(data, args.source, args.images, args.test_images, shard_size=500)
    base = ViewPlan(seed=args.seed, views=args.views, crop_scale=(0.35, 1.0))
    mixed = replace(base, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha)
    common = dict(manifest=manifest.location, seed=args.seed, workers=args.workers,
                  batch_size=128, progress=False)  # fmt: skip
    teacher_run = os.path.join(args.work, "teacher")
    teacher = train(
        TrainConfig(out=teacher_run, model="regnety_002", resolution=32,
                    epochs=args.teacher_epochs, lr=5e-3, plan=asdict(base), **common)
    )  # fmt: skip
    checkpoint = os.path.join(teacher_run, "checkpoint.pth")
    caches = {}
    for name, plan in (("mixed", mixed), ("plain", base)):
        caches[name] = os.path.join(args.work, f"{name}.zarr")
        if not os.path.exists(caches[name]):
            run_teach(
                TeachConfig(manifest=manifest.location, cache=caches[name],
                            teachers=[TeacherSource(checkpoint)], plan=plan, topk=5, progress=False)
            )  # fmt: skip
    mixing = {k: v for k, v in asdict(mixed).items() if k in MIX_FIELDS}
    runs = {
        "exact": dict(cache=caches["mixed"], mixing="exact"),
        "label": dict(cache=caches["plain"], mixing="label", plan=mixing),
        "none": dict(cache=caches["plain"]),
    }
    results = {"teacher_acc": round(teacher["test_acc"], 2)}
    for name, options in runs.items():
        final = train(
            TrainConfig(out=os.path.join(args.work, f"student-{name}"), model=STUDENT,
                        model_args=STUDENT_ARGS, resolution=28, epochs=args.epochs, lr=2e-3,
                        kd="soft", **options, **common)
        )  # fmt: skip
        results[name] = {
            "test_acc": round(final["test_acc"], 2),
            "images_per_s": round(final["train_images_per_s"], 1),
        }
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["budget"] = {k: getattr(args, k) for k in ("images", "test_images", "views",
                         "epochs", "teacher_epochs", "seed", "threads")}  # fmt: skip
    print(f"bench-mixing: teacher regnety_002 at 32 px: {results['teacher_acc']:.2f} %")
    print(f"{'student (28 px), soft KD':26s} {'test acc %':>10s} {'img/s':>7s}")
    for name in runs:
        row = results[name]
        print(f"{name + ' mixing':26s} {row['test_acc']:10.2f} {row['images_per_s']:7.0f}")
    print(f"bench-mixing: {results['budget']}, {results['seconds']:.0f} s")
    write_result(args.json, results)
    return results


def add_bench_mixing_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-mixing",
        help="accuracy of cached KD with exact, label-space and no mixing",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--work", required=True, help="folder for shards, caches and runs")
    parser.add_argument(
        "--images", type=int, default=2000, help="train images (default: %(default)s)"
    )
    parser.add_argument("--test-images", type=int, default=500, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=3, help="default: %(default)s")
    parser.add_argument(
        "--epochs", type=int, default=8, help="student epochs (default: %(default)s)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--mixup-alpha", type=float, default=0.8, help="default: %(default)s")
    parser.add_argument("--cutmix-alpha", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads; 1 avoids thrashing on a shared machine (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--source", default="fashion-mnist", help="dataset (as for kdcache shard)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    parser.set_defaults(run=run_bench_mixing)
