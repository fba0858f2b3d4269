"""``kdcache bench-replay``: per-view cost of kdcache's renderers at the real shape (RGB JPEGs
of about 500x375 to 224 px) against today's renderer and timm's training transform, side by
side in one process.

Every mode starts from the same encoded JPEGs in memory (``tools.bench.photo_set``, made from
scikit-image's photos) and ends with normalised float tensors at the same size. Trainer path:
one view per image, decoded per view (a mixed view decodes and renders its partner too).
Teacher path: each image decoded once and rendered in V views. Modes: ``kdcache`` (the
default renderer, ``cpu/2``), ``today`` (``cpu/1``, the renderer of caches made before
renderer versions), ``timm`` (``PIL.Image.open`` and ``transforms_imagenet_train``, what
``create_transform(is_training=True)`` builds, with the same operations; with mixing, timm's
``Mixup`` in element mode on batches of 128). Time is CPU time of this process (core-µs) on
one torch thread, after a warm-up, the modes interleaved (ABCABC) for several repeats: the
table gives the median and the min-max per view, and views/s per core.
"""

import argparse
import io
import os
import platform
import time
from dataclasses import replace

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from timm.data import Mixup
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision.io import ImageReadMode, decode_jpeg

from kdcache.pipeline.teach import teacher_inputs
from kdcache.pipeline.views import ViewPlan, ViewRenderer, normalize, source_image
from kdcache.tools.bench.bench_data import write_result
from kdcache.tools.bench.photo_set import photo_jpegs

# magnitude 7: timm itself fails on this Pillow when PosterizeIncreasing reaches magnitude 10
RANDAUGMENT = "rand-m7-mstd0.5-inc1"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BASE = ViewPlan(seed=0, views=8, crop_scale=(0.08, 1.0))
CONFIGURATIONS = {
    "crop + flip": BASE,
    "full plan": replace(
        BASE, randaugment=RANDAUGMENT, color_jitter=(0.4, 0.4, 0.4, 0.0), erase_prob=0.25,
        mixup_alpha=0.8, cutmix_alpha=1.0,
    ),
}  # fmt: skip
MODES = ("kdcache", "today", "timm", "decode")  # decode: torchvision's JPEG decode alone
PATHS = ("trainer", "teacher")


def _params(plan: ViewPlan, encoded: list[bytes]) -> np.ndarray:
    """(n, V, P) params of the images as one shard (partners among them)."""
    aspect = []
    for data in encoded:
        with Image.open(io.BytesIO(data)) as image:
            aspect.append(image.height / image.width)
    rows = np.arange(len(encoded))
    return plan.params(rows, np.array(aspect), shard_size=len(encoded), shard_rows=len(encoded))


class _Spec:  # the preprocessing teacher_inputs reads
    mean, std = MEAN, STD

    def __init__(self, resolution: int):
        self.resolution = resolution


class _Encoded:
    """A shard's images decoded on access, as the trainer's loader holds them."""

    def __init__(self, encoded: list[bytes]):
        self.encoded = encoded

    def __getitem__(self, position: int):
        return source_image(self.encoded[position], 3)


def _kdcache(plan: ViewPlan, encoded, params, size: int, path: str, views: int) -> int:
    """Render with the plan's renderer; returns the number of views made."""
    renderer = ViewRenderer(plan)
    if path == "trainer":
        images = _Encoded(encoded)
        for position in range(len(encoded)):
            normalize(renderer.render(images, params[:, 0], position, size), MEAN, STD)
        return len(encoded)
    images = [source_image(data, 3) for data in encoded]  # the job decodes a shard once
    for image in images:
        image.legacy_chw() if plan.renderer == "cpu/1" else image.hwc()
    spec = _Spec(size)
    for view in range(views):  # what the teacher job feeds its model, batch by batch
        for start in range(0, len(images), 256):
            positions = range(start, min(start + 256, len(images)))
            teacher_inputs(renderer, images, params[:, view], positions, spec)
    return len(encoded) * views


def _timm_transform(plan: ViewPlan, size: int):
    return transforms_imagenet_train(
        size, scale=plan.crop_scale, ratio=plan.crop_ratio, hflip=plan.flip_prob,
        color_jitter=plan.color_jitter[:3] if any(plan.color_jitter) else None,
        force_color_jitter=True, auto_augment=plan.randaugment or None,
        interpolation="bilinear", mean=MEAN, std=STD, re_prob=plan.erase_prob,
        re_mode=plan.erase_mode,
    )  # fmt: skip


def _timm(plan: ViewPlan, encoded, size: int, path: str, views: int) -> int:
    transform = _timm_transform(plan, size)
    mixup = (
        Mixup(mixup_alpha=plan.mixup_alpha, cutmix_alpha=plan.cutmix_alpha, mode="elem",
              label_smoothing=0.0, num_classes=1000)
        if plan.mixes else None
    )  # fmt: skip
    decoded = [_pil(data) for data in encoded] if path == "teacher" else None
    images = decoded * views if decoded else (_pil(data) for data in encoded)
    batch, count = [], 0
    for image in images:
        batch.append(transform(image))
        count += 1
        if mixup is not None and len(batch) == 128:
            mixup(torch.stack(batch), torch.zeros(128, dtype=torch.long))
            batch = []
    return count


def _pil(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _run(mode: str, plan: ViewPlan, encoded, params, size: int, path: str, views: int):
    """(core seconds, wall seconds, views) of one mode over every image."""
    cpu, wall = time.process_time(), time.perf_counter()
    if mode == "timm":
        count = _timm(plan, encoded, size, path, views)
    elif mode == "decode":  # the floor: one decode per trainer view, one per teacher image
        for data in encoded:
            decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        count = len(encoded) * (1 if path == "trainer" else views)
    else:
        chosen = replace(plan, renderer="cpu/2" if mode == "kdcache" else "cpu/1")
        count = _kdcache(chosen, encoded, params, size, path, views)
    return time.process_time() - cpu, time.perf_counter() - wall, count


def _measure(encoded, size: int, views: int, repeats: int) -> dict:
    results = {}
    for name, plan in CONFIGURATIONS.items():
        params, warm = _params(plan, encoded), _params(plan, encoded[:8])
        for path in PATHS:
            for mode in MODES:  # warm-up on a few images
                _run(mode, plan, encoded[:8], warm, size, path, views)
            samples = {mode: [] for mode in MODES}
            for _ in range(repeats):  # interleaved: ABCABC
                for mode in MODES:
                    cpu, wall, count = _run(mode, plan, encoded, params, size, path, views)
                    samples[mode].append((cpu / count * 1e6, wall / count * 1e6))
            results[f"{name} / {path}"] = _summary(samples)
    return results


def _summary(samples: dict) -> dict:
    out = {}
    for mode, values in samples.items():
        core = np.array([v[0] for v in values])
        wall = np.array([v[1] for v in values])
        out[mode] = {
            "core_us_median": float(np.median(core)), "core_us_min": float(core.min()),
            "core_us_max": float(core.max()), "wall_us_median": float(np.median(wall)),
            "views_per_s_per_core": float(1e6 / np.median(core)), "core_us_all": core.tolist(),
        }  # fmt: skip
    for mode in ("today", "timm"):
        out[f"kdcache_vs_{mode}"] = out[mode]["core_us_median"] / out["kdcache"]["core_us_median"]
    out["decode_share"] = out["decode"]["core_us_median"] / out["kdcache"]["core_us_median"]
    return out


def _configuration(args, encoded: list[bytes]) -> dict:
    return {
        "images": len(encoded), "mean_jpeg_bytes": float(np.mean([len(e) for e in encoded])),
        "resolution": args.resolution, "teacher_views": args.views, "repeats": args.repeats,
        "photo_seed": args.seed, "torch_threads": torch.get_num_threads(),
        "plans": {name: plan.to_attrs() for name, plan in CONFIGURATIONS.items()},
        "modes": {"kdcache": "renderer cpu/2", "today": "renderer cpu/1",
                  "timm": "transforms_imagenet_train + Mixup(elem, batch 128)",
                  "decode": "torchvision.io.decode_jpeg alone (trainer: per view; "
                            "teacher: per image, divided by V)"},
        "mean": MEAN, "std": STD, "timing": "time.process_time per view (core-us)",
        "load_average_start": os.getloadavg(), "cpu_count": os.cpu_count(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "pillow": PIL.__version__, "python": platform.python_version()},
    }  # fmt: skip


def run_bench_replay(args: argparse.Namespace) -> dict:
    """Time every mode per configuration and path; print and return the table."""
    torch.set_num_threads(1)
    encoded = photo_jpegs(args.images, seed=args.seed)
    if args.work:
        os.makedirs(args.work, exist_ok=True)
        for index, data in enumerate(encoded):
            with open(os.path.join(args.work, f"photo-{index:05d}.jpg"), "wb") as f:
                f.write(data)
    config = _configuration(args, encoded)
    print(f"bench-replay: {len(encoded)} JPEGs (~500x375) to {args.resolution} px, 1 thread, "
          f"teacher path {args.views} views, {args.repeats} repeats interleaved")  # fmt: skip
    results = _measure(encoded, args.resolution, args.views, args.repeats)
    config["load_average_end"] = os.getloadavg()
    print(f"{'configuration / path':28s} {'mode':8s} {'core-us/view':>13s} {'min-max':>13s} "
          f"{'views/s/core':>12s}")  # fmt: skip
    for name, row in results.items():
        for mode in MODES:
            r = row[mode]
            print(f"{name:28s} {mode:8s} {r['core_us_median']:13.0f} "
                  f"{r['core_us_min']:6.0f}-{r['core_us_max']:<6.0f} "
                  f"{r['views_per_s_per_core']:12.0f}")  # fmt: skip
        print(f"{'':28s} ratios: today/kdcache {row['kdcache_vs_today']:.2f}, "
              f"timm/kdcache {row['kdcache_vs_timm']:.2f}; decode is "
              f"{row['decode_share']:.0%} of kdcache's")  # fmt: skip
    result = {"configuration": config, "results": results}
    write_result(args.json, result)
    return result


def add_bench_replay_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-replay",
        help="per-view cost of kdcache's renderers against today's and timm's at 224 px",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--images", type=int, default=200, help="default: %(default)s")
    parser.add_argument("--resolution", type=int, default=224, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=8, help="teacher-path views per image")
    parser.add_argument("--repeats", type=int, default=3, help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated photos")
    parser.add_argument("--work", default=None, help="also save the generated JPEGs here")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    parser.set_defaults(run=run_bench_replay)
