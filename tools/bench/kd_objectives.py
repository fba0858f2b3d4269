"""``kdcache bench-kd``: distillation objectives side by side on Fashion-MNIST.

Trains two teachers, caches both in one Ray pass (top-10 = all classes, and sampled ids),
then trains the same student (same seed, views and budget) once per objective: no KD, soft
KD from full logits, hard KD, top-K for K in {1, 3, 5} with each tail option (the first K of
the cached top-10 are exactly what a top-K cache holds), sampled ids at the bytes of top-K,
and the mean of the two teachers. Writes DIR/bench.json after every run and prints a table.
"""

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

TAILS = ("uniform", "renormalize", "bucket")


def topk_bytes(k: int) -> int:
    """Raw bytes per view and teacher of top-k targets: fp16 logits, int16 ids, fp32 logsumexp."""
    return 2 * k + 2 * k + 4


def sampled_bytes(draws: int) -> int:
    """Raw bytes per view and teacher of sampled targets: one int16 class id per draw."""
    return 2 * draws


@dataclass(frozen=True)
class BenchConfig:
    """The benchmark's data, models and budget."""

    train_limit: int = 3000
    test_limit: int | None = 2000
    shard_size: int = 1000
    teachers: tuple[str, ...] = ("regnety_002", "resnet10t")
    teacher_resolution: int = 32
    teacher_epochs: int = 3
    teacher_lr: float = 5e-3
    views: int = 2
    crop_scale: tuple[float, float] = (0.35, 1.0)
    topks: tuple[int, ...] = (1, 3, 5)
    student: str = "deit_tiny_distilled_patch16_224"
    student_args: dict = field(
        default_factory=lambda: {"patch_size": 7, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )
    student_resolution: int = 28
    student_epochs: int = 2
    lr: float = 2e-3
    alpha: float = 0.5
    batch_size: int = 128
    workers: int = 2
    seed: int = 0
    noise_seed: int | None = 1  # a second no-KD run with this training seed


def _runs(config: BenchConfig, names: list[str]) -> list[tuple[str, int, dict]]:
    """(label, bytes per view, TrainConfig options) of every student run, in order."""
    first = [names[0]]
    num_classes = 10
    runs = [
        ("no KD", 0, {"kd": "none"}),
        (
            "soft KD, full logits (top-10)",
            topk_bytes(num_classes),
            {"kd": "soft", "teachers": first},
        ),
        ("hard KD (teacher argmax)", topk_bytes(1), {"kd": "hard", "teachers": first}),
    ]
    for k in config.topks:
        for tail in TAILS:
            options = {"kd": "soft", "teachers": first, "topk": k, "tail": tail}
            runs.append((f"soft KD, top-{k}, tail {tail}", topk_bytes(k), options))
    for k in config.topks:
        draws = (topk_bytes(k)) // 2
        options = {"kd": "soft", "teachers": first, "targets": "sampled", "samples": draws}
        runs.append(
            (f"soft KD, sampled {draws} ids (bytes of top-{k})", sampled_bytes(draws), options)
        )
    runs.append(
        (
            f"soft KD, mean of {' + '.join(names)} (top-10)",
            2 * topk_bytes(num_classes),
            {"kd": "soft", "teachers": names},
        )  # fmt: skip
    )
    if config.noise_seed is not None:
        runs.append(
            (
                f"no KD, training seed {config.noise_seed}",
                0,
                {"kd": "none", "seed": config.noise_seed},
            )
        )
    return runs


def run_bench(out: str, config: BenchConfig, progress: bool = True) -> dict:
    """Run every phase into ``out``; return (and write after each run) the report."""
    from kdcache.pipeline.data import open_source, write_shards
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.pipeline.views import ViewPlan
    from kdcache.trainer.run import TrainConfig, train

    began = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    limits = {
        "train": config.train_limit,
        **({"test": config.test_limit} if config.test_limit else {}),
    }
    manifest = write_shards(
        open_source("fashion-mnist"), out, shard_size=config.shard_size, limits=limits,
        overwrite=True, progress=progress,
    )  # fmt: skip
    plan = ViewPlan(seed=config.seed, views=config.views, crop_scale=config.crop_scale)
    common = dict(
        manifest=manifest.location, batch_size=config.batch_size, workers=config.workers,
        plan=asdict(plan), progress=progress, seed=config.seed,
    )  # fmt: skip
    report = {"config": asdict(config), "teachers": {}, "runs": [], "seconds": {}}
    path = os.path.join(out, "bench.json")

    def save() -> None:
        report["seconds"]["total"] = round(time.perf_counter() - began, 1)
        with open(path, "w") as f:
            json.dump(report, f, indent=2)

    sources, names = [], []
    for arch in config.teachers:
        name = arch.split("_")[0]
        run = os.path.join(out, "runs", f"teacher-{name}")
        started = time.perf_counter()
        final = train(
            TrainConfig(
                out=run,
                model=arch,
                resolution=config.teacher_resolution,
                epochs=config.teacher_epochs,
                lr=config.teacher_lr,
                **common,
            )  # fmt: skip
        )
        report["teachers"][name] = {"arch": arch, "test_acc": round(final["test_acc"], 2)}
        report["seconds"][f"teacher {name}"] = round(time.perf_counter() - started, 1)
        sources.append(TeacherSource(os.path.join(run, "checkpoint.pth"), name=name))
        names.append(name)
    cache = os.path.join(out, "cache.zarr")
    if os.path.exists(cache):
        shutil.rmtree(cache)
    draws = max(topk_bytes(k) // 2 for k in config.topks)
    started = time.perf_counter()
    run_teach(
        TeachConfig(
            manifest=manifest.location,
            cache=cache,
            teachers=sources,
            plan=plan,
            topk=manifest.num_classes,
            samples=draws,
            progress=progress,
        )  # fmt: skip
    )
    report["seconds"]["teach"] = round(time.perf_counter() - started, 1)
    save()
    student = dict(
        model=config.student, model_args=config.student_args,
        resolution=config.student_resolution, epochs=config.student_epochs, lr=config.lr,
        alpha=config.alpha, **common,
    )  # fmt: skip
    for index, (label, size, options) in enumerate(_runs(config, names)):
        if progress:
            print(f"== bench-kd: {label}", flush=True)
        started = time.perf_counter()
        values = {**student, **options}
        final = train(TrainConfig(out=os.path.join(out, "runs", f"student-{index:02d}"),
                                  cache=cache if options["kd"] != "none" else None, **values))  # fmt: skip
        report["runs"].append(
            {
                "run": label,
                "bytes_per_view": size,
                "test_acc": round(final["test_acc"], 2),
                "seconds": round(time.perf_counter() - started, 1),
                "options": options,
            }  # fmt: skip
        )
        save()
    return report


def format_table(report: dict) -> str:
    """The runs as a Markdown table."""
    lines = ["| student run | bytes/view | test acc % |", "|---|---|---|"]
    lines += [
        f"| {r['run']} | {r['bytes_per_view']} | {r['test_acc']:.2f} |" for r in report["runs"]
    ]
    teachers = ", ".join(f"{t['arch']} {t['test_acc']:.2f} %" for t in report["teachers"].values())
    lines.append(f"\nteachers: {teachers}; total {report['seconds']['total']:.0f} s")
    return "\n".join(lines)


def add_bench_kd_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-kd",
        help="distillation objectives side by side on Fashion-MNIST (same student and budget)",
        description="Train two teachers on a Fashion-MNIST subset, cache both (top-10 and "
        "sampled ids) in one teacher pass, then train the same student with the same seed, views "
        "and budget once per objective: no KD, soft and hard KD, top-K x tail options, sampled "
        "ids at the bytes of top-K, and the two teachers' mean. Writes DIR/bench.json and prints "
        "a Markdown table (about 25 minutes on 2 CPU cores with the defaults).",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train-limit", type=int, default=3000, help="default: %(default)s")
    parser.add_argument("--test-limit", type=int, default=2000, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=2, help="cached views (default: 2)")
    parser.add_argument("--student-epochs", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--teacher-epochs", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="plan and training seed (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="only the final table")
    parser.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> None:
    config = BenchConfig(
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        views=args.views,
        student_epochs=args.student_epochs,
        teacher_epochs=args.teacher_epochs,
        seed=args.seed,
    )
    report = run_bench(args.out, config, progress=not args.quiet)
    print(format_table(report))
    print(f"bench-kd: report written to {os.path.join(args.out, 'bench.json')}")
