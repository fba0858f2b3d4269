"""``kdcache bench mixing``: accuracy of cached KD with exact, label-space and no mixing,
same student, seed, views and budget.

It shards the subset, trains a ``regnety_002`` teacher at 32 px, caches its targets twice
(a plan with Mixup/CutMix, which the teacher sees, and the same plan without mixing), then
trains the same DeiT student at 28 px three ways with soft KD:

* ``exact``: the mixed cache; the student replays the mixed images the teacher saw;
* ``label``: the unmixed cache; the student mixes images with the same Mixup/CutMix options
  and mixes the two samples' cached targets with lambda (FKD-style);
* ``none``: the unmixed cache, no mixing.

The teacher and both caches are rebuilt on every run (a rerun with other options never trains
on a stale cache), every student run passes its plan explicitly (the trainer checks it against
the cache), and the three modes alternate for ``--repeats`` rounds, round r with training seed
``--seed + r``: per mode every round's accuracy and img/s, their median and min-max.
"""

import argparse
import os
from dataclasses import asdict, replace

from kdcache.tools.bench.bench_data import bench_manifest
from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    add_data_options,
    fresh,
    interleave,
    progress_log,
    set_threads,
    shown,
    work_folder,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

_log = progress_log("mixing")

STUDENT = "deit_tiny_distilled_patch16_224"
STUDENT_ARGS = {"patch_size": 7, "embed_dim": 64, "depth": 3, "num_heads": 2}
MODES = ("exact", "label", "none")
SHAPES = {"fmnist": {"source": "fashion-mnist", "images": 2000, "test_images": 500,
                     "shard_size": 500}}  # fmt: skip


def run_bench_mixing(args: argparse.Namespace) -> dict:
    """Teacher, two caches, then the three students interleaved; prints and returns the report."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.pipeline.views import ViewPlan
    from kdcache.trainer.run import TrainConfig, train

    session = Session.start("bench-mixing", args, SHAPES)
    threads = set_threads(args.threads)
    work = work_folder(args.work, "bench-mixing", session.options)
    manifest = bench_manifest(os.path.join(work, "data"), args.source, args.images,
                              args.test_images, args.shard_size)  # fmt: skip
    base = ViewPlan(seed=args.seed, views=args.views, crop_scale=(0.35, 1.0))
    mixed = replace(base, mixup_alpha=args.mixup_alpha, cutmix_alpha=args.cutmix_alpha)
    common = dict(manifest=manifest.location, workers=args.workers, batch_size=128,
                  progress=False)  # fmt: skip
    teacher_run = fresh(os.path.join(work, "teacher"))
    teacher = train(
        TrainConfig(out=teacher_run, model="regnety_002", resolution=32, seed=args.seed,
                    epochs=args.teacher_epochs, lr=5e-3, plan=asdict(base), **common)
    )  # fmt: skip
    checkpoint = os.path.join(teacher_run, "checkpoint.pth")
    caches = {}
    for name, plan in (("mixed", mixed), ("plain", base)):
        caches[name] = fresh(os.path.join(work, f"{name}.zarr"))
        run_teach(
            TeachConfig(manifest=manifest.location, cache=caches[name],
                        teachers=[TeacherSource(checkpoint)], plan=plan, topk=5, progress=False)
        )  # fmt: skip
    runs = {
        "exact": dict(cache=caches["mixed"], mixing="exact", plan=asdict(mixed)),
        "label": dict(cache=caches["plain"], mixing="label", plan=asdict(mixed)),
        "none": dict(cache=caches["plain"], plan=asdict(base)),
    }

    def student(name: str, repeat: int) -> dict[str, float]:
        out = fresh(os.path.join(work, f"student-{name}"))
        final = train(
            TrainConfig(out=out, model=STUDENT, model_args=STUDENT_ARGS, resolution=28,
                        epochs=args.epochs, lr=2e-3, kd="soft", seed=args.seed + max(repeat, 0),
                        **runs[name], **common)
        )  # fmt: skip
        return {"test_acc": final["test_acc"], "images_per_s": final["train_images_per_s"]}

    modes = [Mode(name, lambda repeat, name=name: student(name, repeat)) for name in MODES]
    measured = interleave(modes, args.repeats, args.warmup, log=_log)
    config = {"modes": list(MODES), "torch_threads": threads, "loader_workers": args.workers,
              "teacher": {"arch": "regnety_002", "resolution": 32, "test_acc": teacher["test_acc"]},
              "student": {"arch": STUDENT, "args": STUDENT_ARGS, "resolution": 28},
              "plans": {"mixed": mixed.to_attrs(), "plain": base.to_attrs()},
              "repeat_seeds": [args.seed + r for r in range(args.repeats)], "topk": 5,
              "work": work}  # fmt: skip
    return session.report(config, measured)


def run_bench_mixing_command(args: argparse.Namespace) -> None:
    result = run_bench_mixing(args)
    print(f"bench-mixing: teacher regnety_002 at 32 px: "
          f"{result['config']['teacher']['test_acc']:.2f} %; {args.repeats} training seeds, "
          "median (min-max)")  # fmt: skip
    print(f"{'student (28 px), soft KD':26s} {'test acc %':>20s} {'img/s':>20s}")
    for name in MODES:
        row = result["modes"][name]
        print(f"{name + ' mixing':26s} {shown(row['test_acc'], 2):>20s} "
              f"{shown(row['images_per_s'], 0):>20s}")  # fmt: skip
    print(f"bench-mixing: {result['seconds']:.0f} s")
    write_json(args.json, result)


def add_bench_mixing_parser(commands) -> None:
    parser = command_parser(commands, "mixing", __doc__)
    add_data_options(parser, SHAPES)
    parser.add_argument("--views", type=int, default=3, help="default: %(default)s")
    parser.add_argument(
        "--epochs", type=int, default=8, help="student epochs (default: %(default)s)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--mixup-alpha", type=float, default=0.8, help="default: %(default)s")
    parser.add_argument("--cutmix-alpha", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0,
                        help="plan seed and first training seed (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers (default: %(default)s)"
    )
    add_common_options(parser, work="shards, teacher, caches and runs", warmup=0, threads=1,
                       work_required=True)  # fmt: skip
    parser.set_defaults(run=run_bench_mixing_command)
