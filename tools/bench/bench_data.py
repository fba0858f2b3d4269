"""The recipes the benchmarks share: a sharded slice of Fashion-MNIST or of ImageNet-shaped
photos, randomly initialised teachers (speed does not depend on the weights) and a one-view
cache of them, every one made afresh in the work folder on every run (a rerun with other
options must not measure stale data). Imports no torch until a recipe runs."""

import argparse
import os
from dataclasses import dataclass

from kdcache.errors import ConfigError
from kdcache.tools.bench.harness import (
    Session,
    add_common_options,
    add_data_options,
    add_step_options,
    fresh,
    set_threads,
    work_folder,
)

IMAGENET_SHAPED = "imagenet-shaped"
IMAGENET_CLASSES = 1000
SMALL_DEIT = {"embed_dim": 128, "depth": 6, "num_heads": 4}  # patches: a quarter of the side


def small_deit(resolution: int) -> dict:
    """The Fashion-MNIST shape's DeiT: DeiT-Tiny's layout, narrower, patches a quarter wide."""
    return {**SMALL_DEIT, "patch_size": max(1, resolution // 4)}


def photo_folder(root: str, train: int, test: int, classes: int = IMAGENET_CLASSES) -> str:
    """An ImageFolder at ``root`` of ``train`` + ``test`` ImageNet-shaped JPEGs
    (:func:`~kdcache.tools.bench.photo_set.photo_jpegs`), labels round-robin over ``classes``
    class folders (all made, some may stay empty); written once per size and kept."""
    from kdcache.tools.bench.photo_set import photo_jpegs

    stamp = os.path.join(root, f"made-{train}-{test}-{classes}")
    if os.path.exists(stamp):
        return root
    fresh(root)
    for split, count, seed in (("train", train, 0), ("test", test, 1)):
        names = [f"n{label:05d}" for label in range(classes)]
        for name in names if count else []:
            os.makedirs(os.path.join(root, split, name))
        for index, data in enumerate(photo_jpegs(count, seed=seed)):
            path = os.path.join(root, split, names[index % classes], f"{split}_{index:07d}.jpg")
            with open(path, "wb") as f:
                f.write(data)
    open(stamp, "w").close()
    return root


def bench_manifest(folder: str, source: str, train_images: int, test_images: int, shard_size: int):
    """The slice's shards written to ``folder`` (replacing earlier ones: a rerun with other
    sizes must not measure a stale slice; the tars are byte-identical on every write); the
    ``imagenet-shaped`` photos are made once beside it (``folder``-photos)."""
    from kdcache.pipeline.data import open_source, write_shards

    if source == IMAGENET_SHAPED:
        source = photo_folder(f"{folder}-photos", train_images, test_images)
    return write_shards(
        open_source(source),
        folder,
        shard_size=shard_size,
        limits={"train": train_images, "test": test_images},
        overwrite=True,
        progress=False,
    )


def random_teacher(manifest, arch: str, resolution: int, path: str):
    """A randomly initialised ``arch`` saved as a kdcache checkpoint at ``path``; its spec."""
    from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint

    spec = ModelSpec(arch, manifest.num_classes, manifest.channels, resolution,
                     manifest.pixel_mean, manifest.pixel_std)  # fmt: skip
    save_checkpoint(path, create_model(spec), spec)
    return spec


def one_view_cache(work: str, args, teacher: str, resolution: int, topk: int | None):
    """(data, cache, teacher checkpoint, plan): the slice of ``args`` (``source``, ``images``,
    ``test_images``, ``shard_size``), a random ``teacher`` at ``resolution`` px and its
    one-view cache (top-``topk``, default all classes), all rebuilt in ``work``; Ray is
    stopped afterwards to free the CPUs for what is timed."""
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach, start_ray, stop_ray
    from kdcache.pipeline.views import ViewPlan

    data = os.path.join(work, "data")
    manifest = bench_manifest(data, args.source, args.images, args.test_images, args.shard_size)
    checkpoint = os.path.join(work, f"{teacher}.pth")
    random_teacher(manifest, teacher, resolution, checkpoint)
    plan = ViewPlan(seed=0, views=1)
    cache = fresh(os.path.join(work, "cache.zarr"))
    start_ray(None)
    try:
        run_teach(TeachConfig(manifest=data, cache=cache, teachers=[TeacherSource(checkpoint)],
                              plan=plan, topk=topk or manifest.num_classes, progress=False))  # fmt: skip
    finally:
        stop_ray()
    return data, cache, checkpoint, plan


def add_given_cache_options(parser) -> None:
    """--data, --cache and --teacher-checkpoint: measure on these instead of a made slice."""
    parser.add_argument("--data", default=None, help="a kdcache shard folder")
    parser.add_argument("--cache", default=None, help="a cache of its train split")
    parser.add_argument("--teacher-checkpoint", default=None,
                        help="its teacher (with --data and --cache: use these three)")  # fmt: skip


def given_or_made(args, benchmark: str, options: dict, resolution: int):
    """(data, cache, teacher checkpoint, plan fields or None, work folder or None): the given
    ones (the plan then is the cache's), or :func:`one_view_cache` of ``args.teacher`` at
    ``resolution`` rebuilt in a :func:`work_folder`."""
    from dataclasses import asdict

    given = (args.data, args.cache, args.teacher_checkpoint)
    if all(given):
        return (*given, None, None)
    if any(given):
        raise ConfigError("--data, --cache and --teacher-checkpoint go together (or none)")
    work = work_folder(args.work, benchmark, options)
    data, cache, checkpoint, plan = one_view_cache(work, args, args.teacher, resolution, args.topk)
    return data, cache, checkpoint, asdict(plan), work


def add_step_benchmark_options(parser, shapes: dict[str, dict], work: str) -> None:
    """The options of a benchmark training step by step (bench-train, bench-timm) beyond its
    own: a given data, cache and teacher (:func:`add_given_cache_options`), the slice made
    otherwise, the per-run step budget and the common ones (``work``: what its folder holds)."""
    add_given_cache_options(parser)
    add_data_options(parser, shapes)
    add_step_options(parser, shapes)
    add_common_options(parser, work=work)


@dataclass
class StepSetup:
    """What a benchmark training step by step runs on: its session, the torch threads in use,
    and the given or made data, cache, teacher checkpoint, plan fields (None: the cache's) and
    work folder (None when given)."""

    session: Session
    threads: int
    data: str
    cache: str
    checkpoint: str
    plan: dict | None
    work: str | None


def step_setup(args: argparse.Namespace, benchmark: str, shapes: dict[str, dict]) -> StepSetup:
    """The shape's defaults, the step budget checked, the session started, torch's threads set
    and the data, cache and teacher given or made (:func:`given_or_made`)."""
    session = Session.start(benchmark, args, shapes)
    if args.steps < 1 or args.warmup_steps < 0:
        raise ConfigError("need --steps >= 1 and --warmup-steps >= 0")
    threads = set_threads(args.threads)
    made = given_or_made(args, benchmark, session.options, args.teacher_resolution)
    return StepSetup(session, threads, *made)
