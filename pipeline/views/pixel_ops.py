"""The pixel side of the planned operations: each applies a view's recorded params to it.

The draws live beside each operation's plan (``augment``: colour jitter and random erasing,
``randaugment``, ``mix``: Mixup/CutMix); these functions are pure in (view, params), so the
teacher job and the trainer, on the CPU or the device renderer, apply identical operations.
"""

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from kdcache.pipeline.views.augment import (
    JITTER_IDENTITY,
    JITTER_NAMES,
    JITTER_ORDERS,
    fraction_box,
)
from kdcache.pipeline.views.mix import MIXUP, cutmix_box
from kdcache.pipeline.views.randaugment import parse_randaugment

_ADJUST = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def apply_jitter(view: torch.Tensor, values: dict[str, float]) -> torch.Tensor:
    """The view with its jitter factors applied in the recorded order."""
    for index in JITTER_ORDERS[int(values["jitter_order"])]:
        factor = values[JITTER_NAMES[index]]
        if factor != JITTER_IDENTITY[index]:
            view = _ADJUST[index](view, factor)
    return view


def apply_erasing(view: torch.Tensor, values: dict[str, float], mode: str) -> torch.Tensor:
    """The view with its erasing box filled (unchanged if the box is empty)."""
    top, left, h, w = fraction_box(
        values["erase_top"], values["erase_left"], values["erase_height"],
        values["erase_width"], view.shape[-1],
    )  # fmt: skip
    if h == 0 or w == 0:
        return view
    channels = view.shape[0]
    if mode == "const":
        fill = torch.full((channels, 1, 1), 0.5)
    else:
        generator = torch.Generator().manual_seed(int(values["erase_seed"]))
        shape = (channels, 1, 1) if mode == "rand" else (channels, h, w)
        fill = 0.5 + 0.25 * torch.randn(shape, generator=generator)
    view = view.clone()
    view[:, top : top + h, left : left + w] = fill
    return view


def mix_views(own: torch.Tensor, partner: torch.Tensor, values: dict[str, float]) -> torch.Tensor:
    """Mixup blend or CutMix paste of two rendered views of the same size."""
    if values["mix_mode"] == MIXUP:
        lam = float(values["mix_lam"])
        return own * lam + partner * (1.0 - lam)
    top, left, h, w = cutmix_box(values, own.shape[-1])
    mixed = own.clone()
    mixed[:, top : top + h, left : left + w] = partner[:, top : top + h, left : left + w]
    return mixed


def _applied(values: dict[str, float], config: str) -> list[tuple[int, float]]:
    """(op index, recorded argument) of every layer that applies, in order."""
    layers = parse_randaugment(config).num_layers
    return [(int(values[f"ra{i}_op"]), values[f"ra{i}_arg"])
            for i in range(layers) if values[f"ra{i}_op"] >= 0]  # fmt: skip


def randaugment_image(image: Image.Image, values: dict[str, float], config: str) -> Image.Image:
    """A uint8 PIL view (mode L or RGB) after its recorded RandAugment ops."""
    augment = parse_randaugment(config)
    fill = 128 if image.mode == "L" else (128, 128, 128)
    for op_index, argument in _applied(values, config):
        op = augment.ops[op_index]
        args = () if op.level_fn is None else (_op_argument(op.name, argument),)
        if op.name.startswith("Posterize") and args[0] == 0:
            # keeping 0 bits (PosterizeIncreasing at magnitude 10): Pillow >= 11 refuses it,
            # older Pillow (and so timm's semantics) gave an all-zero image
            image = Image.new(image.mode, image.size, 0)
            continue
        image = op.aug_fn(image, *args, fillcolor=fill, resample=Image.Resampling.BILINEAR)
    return image


def apply_randaugment(view: torch.Tensor, values: dict[str, float], config: str) -> torch.Tensor:
    """The float view after its recorded RandAugment ops (unchanged if none applies): quantised
    to uint8 for timm's PIL ops, back to float32 on [0, 1] (renderer cpu/1)."""
    if not _applied(values, config):
        return view
    channels = view.shape[0]
    pixels = (view * 255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    out = torch.from_numpy(np.asarray(randaugment_image(image, values, config)).copy())
    out = out[None] if channels == 1 else out.permute(2, 0, 1)
    return out.to(torch.float32) / 255.0


def _op_argument(name: str, argument: float) -> float | int:
    """Posterize bits and solarize thresholds are integers in timm; the rest are floats."""
    return int(round(argument)) if name.startswith(("Posterize", "Solarize")) else argument
