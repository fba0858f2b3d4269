"""Turning an encoded image and one row of view params into the model's input tensor.

Part of the contract: the teacher job and the trainer both build inputs only through
:class:`ViewRenderer`, so a replayed view is bitwise the tensor the teacher saw (same machine
and library versions). Rendering is a pure function of (the shard's images, the params, the
output size):

1. crop: pixel box = ``floor(fraction * source_size + 0.5)`` for top, left, height and width
   (height and width at least 1, clipped to the image), resized to ``size x size`` with
   bilinear interpolation and antialiasing (torchvision, float32 on [0, 1]);
2. mirrored if ``flip`` is 1;
3. RandAugment on the view quantised to uint8 (timm's PIL ops, bilinear resampling), back to
   float32 (``pipeline.randaugment``);
4. colour jitter, then random erasing (``pipeline.augment``);
5. Mixup or CutMix with the partner's view 1-4 at the same size (``pipeline.mixing``);

and the caller normalises with its model's mean and std. Every geometric quantity is a
fraction of the source or of the view, so a teacher at 64 px and a student at 32 px render the
same view at their own resolution, each with the same interpolation (bilinear, antialiased
when shrinking); only the pixel rounding of the boxes and the resampling differ between sizes.
"""

import io
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from kdcache.pipeline.views.augment import apply_erasing, apply_jitter
from kdcache.pipeline.views.mix import mix_views, mix_weight
from kdcache.pipeline.views.plan import ViewPlan
from kdcache.pipeline.views.randaugment import apply_randaugment

INTERPOLATION = "bilinear-antialias"


def decode_image(data: bytes, channels: int) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor (C, H, W) with C = ``channels`` (1 or 3)."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def crop_box(values: dict[str, float], height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel box (top, left, height, width) of one view's crop on a ``height x width`` source."""
    h = min(height, max(1, math.floor(values["crop_height"] * height + 0.5)))
    w = min(width, max(1, math.floor(values["crop_width"] * width + 0.5)))
    top = min(height - h, math.floor(values["crop_top"] * height + 0.5))
    left = min(width - w, math.floor(values["crop_left"] * width + 0.5))
    return top, left, h, w


class ViewRenderer:
    """Renders planned views from params rows: the one code path of teacher job and trainer."""

    def __init__(self, plan: ViewPlan):
        self.plan = plan
        self.names = plan.param_names

    def values(self, params: np.ndarray) -> dict[str, float]:
        """One params row as ``{column name: value}``."""
        return dict(zip(self.names, params.tolist(), strict=True))

    def base_view(self, image: torch.Tensor, values: dict[str, float], size: int) -> torch.Tensor:
        """One image's own view (everything but mixing): float32 (C, size, size) on [0, 1]."""
        top, left, h, w = crop_box(values, image.shape[-2], image.shape[-1])
        pixels = image.to(torch.float32) / 255.0
        view = F.resized_crop(
            pixels, top, left, h, w, [size, size], InterpolationMode.BILINEAR, antialias=True
        )
        if values["flip"] >= 0.5:
            view = view.flip(-1)
        if self.plan.randaugment:
            view = apply_randaugment(view, values, self.plan.randaugment)
        if any(self.plan.color_jitter):
            view = apply_jitter(view, values)
        if self.plan.erase_prob > 0:
            view = apply_erasing(view, values, self.plan.erase_mode)
        return view

    def render(
        self, images: Sequence[torch.Tensor], params: np.ndarray, position: int, size: int
    ) -> torch.Tensor:
        """View of the shard's sample at ``position``: ``images`` are the shard's uint8 (C, H, W)
        images (decoded on access is fine) and ``params`` its (n, P) params of that view."""
        values = self.values(params[position])
        view = self.base_view(images[position], values, size)
        if self.plan.mixes and values["mix_mode"] > 0:
            partner = int(values["mix_partner"])
            other = self.base_view(images[partner], self.values(params[partner]), size)
            view = mix_views(view, other, values)
        return view

    def label_weight(self, params: np.ndarray, size: int) -> float:
        """Weight of the sample's own label in its view at ``size`` (1 unless mixed)."""
        return mix_weight(self.values(params), size) if self.plan.mixes else 1.0

    def partner(self, params: np.ndarray) -> int | None:
        """Position of the view's mixing partner in its shard, or None if it is not mixed."""
        if not self.plan.mixes:
            return None
        values = self.values(params)
        return int(values["mix_partner"]) if values["mix_mode"] > 0 else None


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
