"""bench-replay's modes: one pass of a renderer (or timm's transform, or the decode alone)
over every image, trainer path or teacher path, timed in core-us and wall-us per view."""

import io
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision.io import ImageReadMode, decode_jpeg

from kdcache.pipeline.teach import batch_buffers, teacher_inputs
from kdcache.pipeline.views import DEFAULT_RENDERER, ViewPlan, ViewRenderer, normalize, source_image
from kdcache.tools.bench.replay_plans import MEAN, STD

MIX_BATCH = 128  # timm's Mixup batches
BATCH = 256  # the teacher job's default batch
RENDERER_OF = {"kdcache": DEFAULT_RENDERER, "cpu2": "cpu/2", "today": "cpu/1"}


def photo_params(plan: ViewPlan, encoded: list[bytes]) -> np.ndarray:
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
        image.prepare(plan.renderer)
    spec, buffers, batch = _Spec(size), batch_buffers(2), 0
    for view in range(views):  # what the teacher job feeds its model, batch by batch
        for start in range(0, len(images), BATCH):
            positions = range(start, min(start + BATCH, len(images)))
            out = buffers(batch, (len(positions), 3, size, size))  # as teacher_targets does
            teacher_inputs(renderer, images, params[:, view], positions, spec, out=out)
            batch += 1
    return len(encoded) * views


def _timm_transform(plan: ViewPlan, size: int):
    return transforms_imagenet_train(
        size, scale=plan.crop_scale, ratio=plan.crop_ratio, hflip=plan.flip_prob,
        color_jitter=plan.color_jitter[:3] if any(plan.color_jitter) else None,
        force_color_jitter=True, auto_augment=plan.randaugment or None,
        interpolation="bilinear", mean=MEAN, std=STD, re_prob=plan.erase_prob,
        re_mode=plan.erase_mode,
    )  # fmt: skip


def _timm(plan: ViewPlan, encoded, size: int, path: str, views: int) -> tuple[int, int]:
    """(views made, views Mixup mixed) of timm's transform over every image."""
    transform = _timm_transform(plan, size)
    mixup = (
        Mixup(mixup_alpha=plan.mixup_alpha, cutmix_alpha=plan.cutmix_alpha, mode="elem",
              label_smoothing=0.0, num_classes=1000)
        if plan.mixes else None
    )  # fmt: skip
    decoded = [_pil(data) for data in encoded] if path == "teacher" else None
    images = decoded * views if decoded else (_pil(data) for data in encoded)
    batch, count, mixed = [], 0, 0
    for image in images:
        batch.append(transform(image))
        count += 1
        if mixup is not None and len(batch) == MIX_BATCH:
            mixed += _mix(mixup, batch)
            batch = []
    if mixup is not None and batch:  # the last, partial batch is mixed too
        mixed += _mix(mixup, batch)
    return count, mixed


def _mix(mixup: Mixup, batch: list[torch.Tensor]) -> int:
    """Mix ``batch`` (an odd one with its first sample repeated: Mixup takes pairs)."""
    even = batch + batch[:1] if len(batch) % 2 else batch
    mixup(torch.stack(even), torch.zeros(len(even), dtype=torch.long))
    return len(batch)


def _pil(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def run_mode(mode: str, plan: ViewPlan, encoded, params, size: int, path: str, views: int):
    """Core-us and wall-us per view of one mode over every image; timm: also the share of its
    views that Mixup mixed (1 with a mixing plan: every sample)."""
    cpu, wall = time.process_time(), time.perf_counter()
    extra = {}
    if mode == "timm":
        count, mixed = _timm(plan, encoded, size, path, views)
        extra["mixed_share"] = mixed / count
    elif mode == "decode":  # the floor: one decode per trainer view, one per teacher image
        for data in encoded:
            decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
        count = len(encoded) * (1 if path == "trainer" else views)
    else:
        chosen = replace(plan, renderer=RENDERER_OF[mode])
        count = _kdcache(chosen, encoded, params, size, path, views)
    return {"core_us": (time.process_time() - cpu) / count * 1e6,
            "wall_us": (time.perf_counter() - wall) / count * 1e6, **extra}  # fmt: skip
