"""Renderer ``device/1``: views as tensor operations on any device (CUDA or CPU).

The same operations in the same order as the CPU renderers, on float32 tensors where the
device does the work: the image decoded on the device (nvjpeg through
``torchvision.io.decode_jpeg(device="cuda")`` for baseline JPEGs on CUDA; the CPU decode of
``pipeline.views.source`` elsewhere), the box (step 2 of the replay contract in
docs/guide/views.md, no reduced decode) cropped
*before* converting to float32 / 255, resized in float (``interpolate``, bilinear, antialias),
flipped; RandAugment on the view rounded to uint8 with timm's PIL ops on the host (there is no
device version of timm's ops; the one host round trip), then colour jitter (torchvision's
``adjust_*`` on float tensors), erasing and mixing in float on the device.

On CPU tensors this is renderer ``cpu/1``'s arithmetic, cropped first (elementwise conversion
commutes with cropping), with the faster decode. Against ``cpu/2`` (uint8 resampling) the
views differ by rounding: at 224 px from ~500x375 JPEGs under one level on average and a few
at most for crop and flip (``tests/test_device_views.py`` holds the tolerance). nvjpeg's
decode is not libjpeg-turbo's, so a cache made on CUDA replays on CPU within that tolerance,
not bitwise; bitwise replay needs the same device kind and libraries.
"""

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from kdcache.pipeline.views.pixel_ops import apply_erasing, apply_jitter, apply_randaugment
from kdcache.pipeline.views.source import SourceImage


def device_pixels(source: SourceImage, device: torch.device) -> torch.Tensor:
    """uint8 (C, H, W) on ``device``, decoded once per source and device."""
    key = f"device:{device}"
    if key not in source._decoded:
        nvjpeg = device.type == "cuda" and source.format == "JPEG" and source.mode in ("RGB", "L")
        if nvjpeg and (source.channels == 3 or source.mode == "L"):
            mode = ImageReadMode.RGB if source.channels == 3 else ImageReadMode.GRAY
            encoded = torch.frombuffer(bytearray(source.data), dtype=torch.uint8)
            pixels = decode_jpeg(encoded, mode=mode, device=device)
        else:
            pixels = source.hwc().permute(2, 0, 1).to(device, non_blocking=True)
        source._decoded[key] = pixels
    return source._decoded[key]


class DeviceViews:
    """Own views (everything but mixing) of a plan, rendered on ``device``."""

    def __init__(self, plan, device: torch.device):
        self.plan = plan
        self.device = device

    def base_views(self, sources: list[SourceImage], values: list[dict], size: int):
        """float32 (B, C, size, size) on the device."""
        from kdcache.pipeline.views.render import crop_box

        views = []
        for source, v in zip(sources, values, strict=True):
            top, left, h, w = crop_box(v, source.height, source.width)
            crop = device_pixels(source, self.device)[:, top : top + h, left : left + w]
            view = crop.to(torch.float32) / 255.0
            if (h, w) != (size, size):
                view = F.resize(view, [size, size], InterpolationMode.BILINEAR, antialias=True)
            if v["flip"] >= 0.5:
                view = view.flip(-1)
            if self.plan.randaugment:
                view = apply_randaugment(view.cpu(), v, self.plan.randaugment).to(self.device)
            if any(self.plan.color_jitter):
                view = apply_jitter(view, v)
            if self.plan.erase_prob > 0:
                view = apply_erasing(view, v, self.plan.erase_mode)
            views.append(view)
        return torch.stack(views)
