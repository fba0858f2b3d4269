"""``kdcache bench-timm``: the same student on the same data through timm's own tasks, no KD
and online KD, against kdcache's cached task, interleaved in one run.

Three modes train the same seeded student with timm's ``create_optimizer_v2`` (AdamW) on the
same replayed views: ``none``, timm's ``ClassificationTask`` (the floor); ``online``, timm's
``LogitDistillationTask`` or ``TokenDistillationTask`` with the real teacher run on every batch
(timm feeds it the student's input); ``cached``, kdcache's ``CachedLogitDistillationTask`` or
``CachedTokenDistillationTask`` reading the teacher's targets from a cache. The teacher's
forward pass alone is timed too (``teacher``), giving the ideal cached / online speed-up
``(t_student + t_teacher) / t_student``. Modes run interleaved (none, online, cached, teacher;
then again) ``--repeats`` times; each run skips ``--warmup-steps`` then times ``--steps``
steps, data loading included. Reported: img/s per mode (median, min, max), the ratios cached /
none and cached / online per repeat (median, min, max) and the ideal, and the whole
configuration, as JSON. Without ``--data``/``--cache``/``--teacher-checkpoint`` a slice is
sharded and a randomly initialised teacher (speed does not depend on the weights) teaches a
one-view cache first.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.task import (
    ClassificationTask,
    DistillationTeacher,
    LogitDistillationTask,
    TokenDistillationTask,
)

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import load_teacher
from kdcache.pipeline.views import ViewPlan, normalize
from kdcache.tools.bench.bench_data import (
    add_bench_data_arguments,
    bench_manifest,
    random_teacher,
    write_result,
)
from kdcache.trainer.data import CachedTargets, PlannedViews, TrainViews, make_loader
from kdcache.trainer.kd import CachedLogitDistillationTask, CachedTokenDistillationTask

MODES = ("none", "online", "cached")
DEIT_SMALL = {"embed_dim": 128, "depth": 6, "num_heads": 4}  # patches: a quarter of the side


def spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


class Bench:
    """What every run shares: the manifest, cache, teacher, loaders and student recipe."""

    def __init__(self, args: argparse.Namespace, data: str, cache: str, checkpoint: str):
        self.args = args
        self.manifest = Manifest.read(data)
        self.mean, self.std = self.manifest.pixel_mean, self.manifest.pixel_std
        self.teacher = load_teacher(
            checkpoint,
            num_classes=self.manifest.num_classes,
            in_chans=self.manifest.channels,
        )
        self.teacher.model.eval()
        self.resolution = args.resolution or self.teacher.spec.resolution
        self.cached = CachedTargets(cache, self.manifest, topk=args.topk)
        views = {
            "none": PlannedViews(self.cached.plan, self.manifest),  # same views, no targets
            "cached": self.cached,
        }
        views["online"] = views["none"]
        self.sets = {
            mode: TrainViews(self.manifest, source, resolution=self.resolution, seed=args.seed)
            for mode, source in views.items()
        }
        self.distill = args.distill or (
            "token" if hasattr(self.student(), "set_distilled_training") else "logit"
        )

    def student(self) -> torch.nn.Module:
        torch.manual_seed(self.args.seed)
        model = timm.create_model(
            self.args.student,
            num_classes=self.manifest.num_classes,
            in_chans=self.manifest.channels,
            **self.model_kwargs(),
        )
        return with_normalisation(model, self.mean, self.std)

    def model_kwargs(self) -> dict:
        if self.args.model_kwargs is not None:
            return json.loads(self.args.model_kwargs)
        if self.args.student.startswith("deit"):
            size = self.resolution
            return {**DEIT_SMALL, "img_size": size, "patch_size": max(1, size // 4)}
        return {}

    def task(self, mode: str):
        student, args = self.student(), self.args
        weights = dict(task_loss_weight=1 - args.alpha, distill_loss_weight=args.alpha,
                       temperature=args.tau, verbose=False)  # fmt: skip
        token = self.distill == "token"
        if mode == "none":
            return ClassificationTask(student, verbose=False)
        if mode == "online":
            teacher = DistillationTeacher(
                with_normalisation(self.teacher.model, self.mean, self.std)
            )
            online = TokenDistillationTask if token else LogitDistillationTask
            return online(student, teacher, **weights)
        cached = CachedTokenDistillationTask if token else CachedLogitDistillationTask
        return cached(student, **weights)

    def run(self, mode: str, repeat: int) -> float:
        """One mode's timed steps; images per second."""
        args = self.args
        task = self.task(mode)
        task.train()
        optimizer = create_optimizer_v2(task.get_trainable_module(), "adamw", lr=args.lr)
        train_set = self.sets[mode]
        loader = make_loader(train_set, args.batch_size, args.workers, pin_memory=False)
        batches = endless(train_set, loader, first_epoch=repeat)
        for step in range(args.warmup_steps + args.steps):
            if step == args.warmup_steps:
                began, images = time.perf_counter(), 0
            batch = next(batches)
            inputs = normalize(batch["image"], self.mean, self.std)
            extra = (batch["targets"],) if mode == "cached" else ()
            result = task(inputs, batch["label"], *extra)
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            optimizer.step()
            if step >= args.warmup_steps:
                images += inputs.shape[0]
        return images / (time.perf_counter() - began)

    @torch.no_grad()
    def teacher_rate(self) -> float:
        """Images per second of the teacher's forward alone, at the student's input size."""
        size, args = self.resolution, self.args
        images = torch.rand(args.batch_size, self.manifest.channels, size, size)
        for _ in range(args.warmup_steps):
            self.teacher.model(images)
        began = time.perf_counter()
        for _ in range(args.steps):
            self.teacher.model(images)
        return args.steps * args.batch_size / (time.perf_counter() - began)


def with_normalisation(model: torch.nn.Module, mean, std) -> torch.nn.Module:
    """The dataset's mean/std in the model's pretrained_cfg: timm's online tasks renormalise the
    student's input for the teacher from these (here: no change, as for the cache's teacher)."""
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "mean": tuple(mean),
                            "std": tuple(std)}  # fmt: skip
    return model


def endless(train_set: TrainViews, loader, first_epoch: int):
    epoch = first_epoch
    while True:
        train_set.set_epoch(epoch)
        yield from loader
        epoch += 1


def prepare(args: argparse.Namespace) -> tuple[str, str, str]:
    """(data, cache, teacher checkpoint): the given ones, or a slice, a random teacher and a
    one-view cache made in ``--work``."""
    given = (args.data, args.cache, args.teacher_checkpoint)
    if all(given):
        return given
    if any(given):
        raise ValueError("--data, --cache and --teacher-checkpoint go together (or none)")
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach, start_ray, stop_ray

    work = args.work or tempfile.mkdtemp(prefix="kdcache-bench-timm-")
    data = os.path.join(work, "data")
    manifest = bench_manifest(data, args.source, args.images, args.test_images, args.shard_size)
    checkpoint = os.path.join(work, f"{args.teacher}.pth")
    random_teacher(manifest, args.teacher, args.resolution or 32, checkpoint)
    cache = os.path.join(work, f"cache-{time.time_ns()}.zarr")
    start_ray(None)
    run_teach(
        TeachConfig(
            manifest=data,
            cache=cache,
            teachers=[TeacherSource(checkpoint)],
            plan=ViewPlan(seed=0, views=1),
            topk=args.topk or manifest.num_classes,
            progress=False,
        )
    )
    stop_ray()  # free the CPUs for training
    return data, cache, checkpoint


def run_benchmark(args: argparse.Namespace) -> dict:
    if args.repeats < 1 or args.steps < 1 or args.warmup_steps < 0:
        raise ValueError("need --repeats >= 1, --steps >= 1 and --warmup-steps >= 0")
    data, cache, checkpoint = prepare(args)
    bench = Bench(args, data, cache, checkpoint)
    rates = {mode: [] for mode in (*MODES, "teacher")}
    order = []
    for repeat in range(args.repeats):
        for mode in MODES:
            rates[mode].append(bench.run(mode, repeat))
            order.append(mode)
            print(f"bench-timm: repeat {repeat + 1} {mode:7s} {rates[mode][-1]:8.1f} img/s",
                  flush=True)  # fmt: skip
        rates["teacher"].append(bench.teacher_rate())
        order.append("teacher")
    per_repeat = {
        "cached_over_none": [c / n for c, n in zip(rates["cached"], rates["none"], strict=True)],
        "cached_over_online": [
            c / o for c, o in zip(rates["cached"], rates["online"], strict=True)
        ],
        # (t_student + t_teacher) / t_student, t = 1 / rate
        "ideal_cached_over_online": [
            (1 / n + 1 / t) * n for n, t in zip(rates["none"], rates["teacher"], strict=True)
        ],
    }
    ratios = {name: spread(values) for name, values in per_repeat.items()}
    ratios["share_of_ideal"] = (
        ratios["cached_over_online"]["median"] / ratios["ideal_cached_over_online"]["median"]
    )
    token = bench.distill == "token"
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("run", "command")},
        "data": data,
        "cache": cache,
        "teacher_checkpoint": checkpoint,
        "distill": bench.distill,
        "resolution": bench.resolution,
        "student_kwargs": bench.model_kwargs(),
        "teacher_arch": bench.teacher.spec.arch,
        "teacher_resolution_cached": bench.teacher.spec.resolution,
        "teacher_resolution_online": bench.resolution,
        "topk": bench.cached.topk,
        "num_classes": bench.manifest.num_classes,
        "train_images": len(bench.sets["cached"]),
        "plan": bench.cached.plan.to_attrs(),
        "tasks": {
            "none": "timm.task.ClassificationTask",
            "online": f"timm.task.{'Token' if token else 'Logit'}DistillationTask",
            "cached": f"kdcache.trainer.kd.Cached{'Token' if token else 'Logit'}DistillationTask",
        },
        "optimizer": {"name": "adamw", "lr": args.lr},
        "loss_weights": {
            "task_loss_weight": 1 - args.alpha,
            "distill_loss_weight": args.alpha,
            "temperature": args.tau,
        },  # fmt: skip
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    return {
        "config": config,
        "order": order,
        "images_per_s": {mode: spread(values) for mode, values in rates.items()},
        "ratios": ratios,
    }


def add_bench_timm_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-timm",
        help="benchmark against timm's tasks: no KD vs timm online KD vs kdcache's cached task",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--student",
        default="deit_tiny_distilled_patch16_224",
        help="timm architecture (DeiT gets a small size unless --model-kwargs) "
        "(default: %(default)s)",
    )
    parser.add_argument("--model-kwargs", default=None, help="JSON for timm.create_model")
    parser.add_argument(
        "--distill",
        choices=("logit", "token"),
        default=None,
        help="timm task pair (default: token for a student with a distillation head)",
    )
    parser.add_argument(
        "--teacher", default="regnety_032", help="timm architecture (default: %(default)s)"
    )
    parser.add_argument(
        "--teacher-checkpoint", default=None, help="with --data and --cache: use these"
    )
    parser.add_argument("--data", default=None, help="a kdcache shard folder")
    parser.add_argument("--cache", default=None, help="a cache of its train split")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="student input (and online teacher) size (default: the teacher's, 32 if made here)",
    )
    parser.add_argument("--images", type=int, default=5000, help="default: %(default)s")
    parser.add_argument("--test-images", type=int, default=100, help="default: %(default)s")
    parser.add_argument(
        "--steps", type=int, default=30, help="timed, per run (default: %(default)s)"
    )
    parser.add_argument("--warmup-steps", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--repeats", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument("--workers", type=int, default=2, help="default: %(default)s")
    parser.add_argument(
        "--topk", type=int, default=None, help="cached top-k used (default: all the cache holds)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="default: %(default)s")
    parser.add_argument("--tau", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    add_bench_data_arguments(parser, work="shards, teacher and cache")
    parser.set_defaults(run=run_bench_timm_command)


def run_bench_timm_command(args: argparse.Namespace) -> None:
    result = run_benchmark(args)
    rates, ratios, config = result["images_per_s"], result["ratios"], result["config"]

    def figure(values: dict) -> str:
        return f"{values['median']:.3f} ({values['min']:.3f}-{values['max']:.3f})"

    print(
        f"bench-timm: {config['student']} at {config['resolution']} px ({config['distill']}), "
        f"teacher {config['teacher_arch']}, batch {config['batch_size']}, {config['repeats']} "
        f"repeats x {config['steps']} steps, {config['cpus']} CPUs\n"
        + "".join(
            f"  {mode:8s} {rates[mode]['median']:8.1f} img/s "
            f"({rates[mode]['min']:.1f}-{rates[mode]['max']:.1f})\n"
            for mode in (*MODES, "teacher")
        )
        + f"  cached / none:   {figure(ratios['cached_over_none'])}\n"
        f"  cached / online: {figure(ratios['cached_over_online'])}, ideal "
        f"{figure(ratios['ideal_cached_over_online'])}: {ratios['share_of_ideal']:.3f} of ideal"
    )
    write_result(args.json, result)
