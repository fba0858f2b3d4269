"""Turning an encoded image and one row of view params into the model's input tensor.

Part of the contract: the teacher job and the trainer both build inputs only through these
functions, so a replayed view is bitwise the tensor the teacher saw (same machine and library
versions). Pixel box of a crop = ``floor(fraction * source_size + 0.5)`` for top, left, height
and width (height and width at least 1, the box clipped to the image); the crop is resized to
``size x size`` with bilinear interpolation and antialiasing (torchvision), in float32 on
[0, 1], then mirrored if ``flip`` is 1, then normalised with the model's mean and std.
"""

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pipeline.plan import PARAM_NAMES

INTERPOLATION = "bilinear-antialias"
_COLUMN = {name: index for index, name in enumerate(PARAM_NAMES)}


def decode_image(data: bytes, channels: int) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor (C, H, W) with C = ``channels`` (1 or 3)."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def crop_box(params: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel box (top, left, height, width) of one view's crop on a ``height x width`` source."""
    h = min(height, max(1, math.floor(float(params[_COLUMN["crop_height"]]) * height + 0.5)))
    w = min(width, max(1, math.floor(float(params[_COLUMN["crop_width"]]) * width + 0.5)))
    top = min(height - h, math.floor(float(params[_COLUMN["crop_top"]]) * height + 0.5))
    left = min(width - w, math.floor(float(params[_COLUMN["crop_left"]]) * width + 0.5))
    return top, left, h, w


def render_view(image: torch.Tensor, params: np.ndarray, size: int) -> torch.Tensor:
    """One planned view of a uint8 (C, H, W) image: float32 (C, size, size) on [0, 1]."""
    top, left, h, w = crop_box(params, image.shape[-2], image.shape[-1])
    pixels = image.to(torch.float32) / 255.0
    view = F.resized_crop(
        pixels, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
    )
    if params[_COLUMN["flip"]] >= 0.5:
        view = view.flip(-1)
    return view


def render_full(image: torch.Tensor, size: int) -> torch.Tensor:
    """The whole image, unaugmented, at ``size x size`` (evaluation input): float32 on [0, 1]."""
    pixels = image.to(torch.float32) / 255.0
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    return F.resize(pixels, [size, size], InterpolationMode.BILINEAR, antialias=True)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel, for a (..., C, H, W) tensor."""
    shape = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=batch.dtype, device=batch.device).view(shape)
    std_t = torch.tensor(std, dtype=batch.dtype, device=batch.device).view(shape)
    return (batch - mean_t) / std_t
