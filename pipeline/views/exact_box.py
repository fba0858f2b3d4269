"""Renderer ``cpu/4``'s crop and resize: the planned box, exactly, at every JPEG reduction.

Part of the replay contract. The box is the planned pixel box ``(top, left, h, w)`` on the
full-size image (``render.crop_box``). A baseline JPEG whose box is at least
``REDUCE_MARGIN * r * size`` pixels on both sides is decoded at 1/r in the DCT domain (the
largest such r of 8, 4, 2; else r = 1), where source pixel column x maps to x / r. Then:

* r = 1: the box cropped and resized to ``size x size`` by
  ``torch.nn.functional.interpolate(uint8, mode="bilinear", antialias=True,
  align_corners=False)`` (torch's port of Pillow's fixed-point antialiased bilinear filter);
* r > 1: the box on the reduced image is fractional, ``(left / r, top / r, (left + w) / r,
  (top + h) / r)``; the covering integer region (floor of the first edges, ceil of the last)
  is cropped and resized by Pillow's ``Image.resize((size, size), BILINEAR, box=...)`` with
  that fractional box relative to the region: the filter's support is fractional, so the view
  covers the planned box, not one snapped to the reduced grid.
"""

import contextlib
import math
import threading

import numpy as np
import torch
from PIL import Image

REDUCTIONS = (8, 4, 2)  # DCT scalings of a baseline JPEG (besides 1)
REDUCE_MARGIN = 2  # the reduced box keeps at least this many pixels per output pixel
# a resize whose float32 copy of its crop would take more runs alone in the process: torch
# resizes a 1-channel uint8 crop through float32 (4x the crop; 3 and 4 channels stay uint8),
# so concurrent render threads on huge grey images would each hold one
LARGE_RESIZE_BYTES = 64 << 20
_large_resize = threading.Lock()


def reduction(is_jpeg: bool, height: int, width: int, size: int) -> int:
    """The DCT reduction cpu/4 decodes at for a (height, width) box shown at ``size``."""
    if not is_jpeg:
        return 1
    room = min(height, width) // (size * REDUCE_MARGIN)
    return next((r for r in REDUCTIONS if room >= r), 1)


def box_view(
    decoded: torch.Tensor, box: tuple[int, int, int, int], reduce: int, size: int
) -> torch.Tensor:
    """The full-size ``box`` (top, left, h, w) of an image decoded at 1/``reduce`` (uint8
    (H, W, C)), resized to uint8 (C, size, size)."""
    top, left, h, w = box
    if reduce == 1:
        crop = decoded[top : top + h, left : left + w].permute(2, 0, 1)[None]
        return crop[0] if (h, w) == (size, size) else resize_uint8(crop, size)[0]
    edges = (top / reduce, left / reduce, (top + h) / reduce, (left + w) / reduce)
    row0, col0 = math.floor(edges[0]), math.floor(edges[1])
    row1 = min(math.ceil(edges[2]), decoded.shape[0])
    col1 = min(math.ceil(edges[3]), decoded.shape[1])
    region = np.ascontiguousarray(decoded[row0:row1, col0:col1].numpy())
    image = Image.fromarray(region[:, :, 0] if region.shape[2] == 1 else region)
    fractional = (edges[1] - col0, edges[0] - row0, edges[3] - col0, edges[2] - row0)
    view = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=fractional))
    view = view[:, :, None] if view.ndim == 2 else view
    return torch.from_numpy(view.copy()).permute(2, 0, 1)


def resize_uint8(crop: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 (1, C, h, w) crop resized to (1, C, size, size): bilinear, antialiased (torch's
    port of Pillow's filter); a large one alone in the process (``LARGE_RESIZE_BYTES``)."""
    large = 4 * crop.numel() > LARGE_RESIZE_BYTES
    with _large_resize if large else contextlib.nullcontext():
        return torch.nn.functional.interpolate(
            crop.contiguous(memory_format=torch.channels_last), size=(size, size),
            mode="bilinear", antialias=True, align_corners=False,
        )  # fmt: skip
