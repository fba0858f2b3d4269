"""``kdcache bench-replay``: per-sample cost of kdcache's replayed views against plain timm
transforms doing the same operations, side by side in one process.

Both sides start from the same encoded PNGs in memory and produce normalised float tensors at
the same size. kdcache: ``decode_image`` and ``ViewRenderer.render`` from params (the plan's
params are computed per shard and counted; a trainer reads them from the cache instead), a
mixed view rendering its partner too. timm: ``PIL.Image.open`` and
timm's training transform (``transforms_imagenet_train``, what
``create_transform(is_training=True)`` builds, here with ``force_color_jitter`` so jitter runs
beside RandAugment as in kdcache) with the equivalent options, and for
mixing ``timm.data.Mixup`` (element mode) on batches of 128. Printed as microseconds per
sample and the ratio kdcache / timm per configuration.
"""

import argparse
import io
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.transforms_factory import transforms_imagenet_train

from kdcache.pipeline.data import sample_image, tar_samples
from kdcache.pipeline.views import ViewPlan, ViewRenderer, decode_image, normalize
from kdcache.tools.bench.bench_data import bench_manifest, write_result

# magnitude 7: timm itself fails on this Pillow when PosterizeIncreasing reaches magnitude 10
RANDAUGMENT = "rand-m7-mstd0.5-inc1"
BASE = ViewPlan(seed=0, views=1, crop_scale=(0.35, 1.0))
CONFIGURATIONS = {
    "crop + flip": BASE,
    "+ RandAugment, jitter, erasing": replace(
        BASE, randaugment=RANDAUGMENT, color_jitter=(0.4, 0.4, 0.4, 0.0), erase_prob=0.25
    ),
    "+ Mixup/CutMix": replace(
        BASE, randaugment=RANDAUGMENT, color_jitter=(0.4, 0.4, 0.4, 0.0), erase_prob=0.25,
        mixup_alpha=0.8, cutmix_alpha=1.0,
    ),
}  # fmt: skip


def _kdcache_seconds(plan: ViewPlan, shards: list[list[bytes]], size: int, mean, std) -> float:
    renderer = ViewRenderer(plan)
    began = time.perf_counter()
    for number, encoded in enumerate(shards):
        rows = np.arange(len(encoded)) + number * len(encoded)
        params = plan.params(rows, np.ones(len(rows)), shard_size=len(encoded),
                             shard_rows=len(encoded))[:, 0]  # fmt: skip
        images = _Decoded(encoded)
        for position in range(len(encoded)):
            normalize(renderer.render(images, params, position, size), mean, std)
    return time.perf_counter() - began


class _Decoded:
    def __init__(self, encoded: list[bytes]):
        self.encoded = encoded

    def __getitem__(self, position: int) -> torch.Tensor:
        return decode_image(self.encoded[position], 1)


def _timm_seconds(plan: ViewPlan, shards: list[list[bytes]], size: int, mean, std) -> float:
    transform = transforms_imagenet_train(
        size, scale=plan.crop_scale, ratio=plan.crop_ratio,
        hflip=plan.flip_prob, color_jitter=plan.color_jitter[:3] if any(plan.color_jitter) else None,
        force_color_jitter=True, auto_augment=plan.randaugment or None, interpolation="bilinear",
        mean=mean, std=std, re_prob=plan.erase_prob, re_mode=plan.erase_mode,
    )  # fmt: skip
    mixup = (
        Mixup(mixup_alpha=plan.mixup_alpha, cutmix_alpha=plan.cutmix_alpha, mode="elem",
              label_smoothing=0.0, num_classes=10)
        if plan.mixes else None
    )  # fmt: skip
    began = time.perf_counter()
    for encoded in shards:
        batch = []
        for data in encoded:
            with Image.open(io.BytesIO(data)) as image:
                batch.append(transform(image.convert("L")))
            if mixup is not None and len(batch) == 128:
                mixup(torch.stack(batch), torch.zeros(128, dtype=torch.long))
                batch = []
    return time.perf_counter() - began


def run_bench_replay(args: argparse.Namespace) -> dict:
    """Time both sides per configuration; print and return the table."""
    torch.set_num_threads(1)
    manifest = bench_manifest(args.work, args.source, args.images, 10, shard_size=500)
    shards = [
        [sample_image(s) for s in tar_samples([manifest.shard_url(shard)])]
        for shard in manifest.shards_of("train")
    ]
    count = sum(len(s) for s in shards)
    mean, std = manifest.pixel_mean, manifest.pixel_std
    results = {}
    print(f"bench-replay: {count} Fashion-MNIST images at {args.resolution} px, 1 thread")
    print(f"{'configuration':34s} {'kdcache us':>11s} {'timm us':>9s} {'ratio':>7s}")
    for name, plan in CONFIGURATIONS.items():
        ours = _kdcache_seconds(plan, shards, args.resolution, mean, std) / count * 1e6
        theirs = _timm_seconds(plan, shards, args.resolution, mean, std) / count * 1e6
        results[name] = {"kdcache_us": ours, "timm_us": theirs, "ratio": ours / theirs}
        print(f"{name:34s} {ours:11.0f} {theirs:9.0f} {ours / theirs:7.2f}")
    write_result(args.json, results)
    return results


def add_bench_replay_parser(commands) -> None:
    parser = commands.add_parser(
        "bench-replay",
        help="per-sample cost of replayed views against plain timm transforms",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument("--images", type=int, default=2000, help="default: %(default)s")
    parser.add_argument("--resolution", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--source", default="fashion-mnist", help="dataset (as for kdcache shard)")
    parser.add_argument("--work", required=True, help="folder for the shards")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")
    parser.set_defaults(run=run_bench_replay)
