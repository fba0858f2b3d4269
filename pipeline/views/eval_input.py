"""Whole-image (evaluation) inputs the way timm evaluates: the shorter side resized to
``floor(size / crop_pct)`` with the model's interpolation, then a centre crop of ``size``
(``crop_mode`` ``center``; ``squash`` resizes the whole image to ``size x size``, ``border``
pads as timm does). Built with timm's own eval transform, so the pixels are timm's.
"""

import io
from functools import lru_cache

import torch
from PIL import Image
from timm.data import create_transform

from kdcache.errors import ConfigError
from kdcache.pipeline.views.pixel_limit import check_pixels

EVAL_CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@lru_cache(maxsize=16)
def _transform(size: int, crop_pct: float, interpolation: str, crop_mode: str):
    return create_transform(
        size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        normalize=False,
    )


def eval_image(
    data: bytes,
    channels: int,
    size: int,
    *,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
) -> torch.Tensor:
    """Encoded image bytes -> float32 (C, size, size) on [0, 1], unnormalised; the image
    converted to RGB (or L for 1-channel data) as the renderers decode it."""
    if crop_mode not in EVAL_CROP_MODES or interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"evaluation crop mode {crop_mode!r} / interpolation {interpolation!r}: expected "
            f"one of {', '.join(EVAL_CROP_MODES)} / {', '.join(INTERPOLATIONS)}"
        )
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"evaluation crop_pct must lie in (0, 1], got {crop_pct}")
    with Image.open(io.BytesIO(data)) as image:
        check_pixels(image)
        image = image.convert("L" if channels == 1 else "RGB")
    pixels = _transform(size, float(crop_pct), interpolation, crop_mode)(image)  # uint8 CHW
    return pixels.to(torch.float32).div_(255.0)
