"""Colour jitter and random erasing planned per view (replayed by ``pixel_ops``).

Draws are pure in (seed, row, view) (``pipeline.draws``); replay is a pure function of the
view and its params, so the teacher job and the trainer apply identical operations.

* Colour jitter follows torchvision's ``ColorJitter``: brightness, contrast and saturation
  factors uniform in ``[max(0, 1 - s), 1 + s]``, hue shift uniform in ``[-h, h]``, the four
  applied in a random order (torchvision's ``adjust_*`` functions on float images; a factor
  equal to identity is skipped, so 1-channel images are unchanged by saturation and hue).
* Random erasing follows timm's ``RandomErasing`` box sampling (probability, target area
  uniform in 2 %..1/3 of the view, log-uniform aspect ratio in 0.3..3.3, 10 tries, one box).
  kdcache erases before normalisation, so teacher and student see the same pixels whatever
  their mean and std: ``const`` fills 0.5, ``rand`` one value per channel and ``pixel`` one per
  pixel, both ``0.5 + 0.25 * z`` with z standard normal from ``torch.Generator(erase_seed)``
  (timm draws z in normalised space).
"""

import itertools
import math

import numpy as np

from kdcache.pipeline.views.draws import integer_seed, uniform

JITTER_NAMES = ("jitter_brightness", "jitter_contrast", "jitter_saturation", "jitter_hue")
JITTER_COLUMNS = (*JITTER_NAMES, "jitter_order")
JITTER_ORDERS = tuple(itertools.permutations(range(4)))
ERASE_COLUMNS = ("erase_top", "erase_left", "erase_height", "erase_width", "erase_seed")
ERASE_MODES = ("const", "rand", "pixel")
ERASE_AREA = (0.02, 1 / 3)
ERASE_RATIO = (0.3, 1 / 0.3)
_ERASE_TRIES = 10
_JITTER_DRAW = 41  # 41..48
_ERASE_DRAW = 200  # 200..241
JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)  # factors that leave a view unchanged


def jitter_params(seed: int, rows, views, strength) -> dict[str, np.ndarray]:
    """Colour-jitter columns for ``strength`` = (brightness, contrast, saturation, hue)."""
    columns = {}
    for index, (name, s) in enumerate(zip(JITTER_NAMES, strength, strict=True)):
        u = uniform(seed, rows, views, _JITTER_DRAW + index)
        low, high = (-s, s) if name == "jitter_hue" else (max(0.0, 1 - s), 1 + s)
        identity = JITTER_IDENTITY[index]
        columns[name] = np.where(s > 0, low + u * (high - low), identity)
    keys = np.stack([uniform(seed, rows, views, _JITTER_DRAW + 4 + i) for i in range(4)], -1)
    order = np.argsort(keys, axis=-1, kind="stable")
    lookup = {permutation: index for index, permutation in enumerate(JITTER_ORDERS)}
    columns["jitter_order"] = np.apply_along_axis(lambda p: lookup[tuple(p)], -1, order)
    return columns


def erase_params(seed: int, rows, views, probability: float) -> dict[str, np.ndarray]:
    """Random-erasing columns (a box of fractions of the view; height 0 = no erasing)."""
    shape = np.broadcast(rows, views).shape
    height, width = np.zeros(shape), np.zeros(shape)
    top, left = np.zeros(shape), np.zeros(shape)
    wanted = uniform(seed, rows, views, _ERASE_DRAW) < probability
    placed = ~wanted
    log_low, log_high = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    for attempt in range(_ERASE_TRIES):
        draws = [uniform(seed, rows, views, _ERASE_DRAW + 1 + 4 * attempt + i) for i in range(4)]
        area = ERASE_AREA[0] + draws[0] * (ERASE_AREA[1] - ERASE_AREA[0])
        ratio = np.exp(log_low + draws[1] * (log_high - log_low))
        h, w = np.sqrt(area * ratio), np.sqrt(area / ratio)
        take = ~placed & (h < 1) & (w < 1)
        height[take], width[take] = h[take], w[take]
        top[take], left[take] = (draws[2] * (1 - h))[take], (draws[3] * (1 - w))[take]
        placed |= take
    noise_seed = integer_seed(seed, rows, views, _ERASE_DRAW + 1 + 4 * _ERASE_TRIES)
    return dict(zip(ERASE_COLUMNS, (top, left, height, width, noise_seed), strict=True))


def fraction_box(top: float, left: float, height: float, width: float, size: int):
    """Pixel box (top, left, height, width) on a ``size x size`` view: each edge at
    ``floor(fraction * size + 0.5)``, so the box stays inside the view."""
    y0, x0 = math.floor(top * size + 0.5), math.floor(left * size + 0.5)
    y1 = min(size, math.floor((top + height) * size + 0.5))
    x1 = min(size, math.floor((left + width) * size + 0.5))
    return y0, x0, max(0, y1 - y0), max(0, x1 - x0)
