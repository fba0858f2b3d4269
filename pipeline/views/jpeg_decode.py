"""Renderers ``cpu/3``'s and ``cpu/4``'s JPEG decoder: simplejpeg (libjpeg-turbo, bundled in
its wheel).

Part of the replay contract: a baseline JPEG (one or three components) is decoded by
``simplejpeg.decode_jpeg(data, colorspace, fastdct=False, fastupsample, min_height,
min_width)``: the accurate integer IDCT, at 1/2, 1/4 or 1/8 of the size in the DCT domain when
asked. cpu/3 upsamples chroma without libjpeg's "fancy" (triangular) filter
(``fastupsample=True``); cpu/4 with it (``fastupsample=False``: the pixels Pillow decodes). The
decoder and its version are part of the renderer's identity (:data:`DECODERS`, recorded in
the cache's ``attrs.plan.decoder``), so a cache is replayed only by the same decode.
"""

import math

import numpy as np
import simplejpeg

from kdcache.errors import ConfigError, ShardError
from kdcache.pipeline.views.pixel_limit import check_size
from kdcache.pipeline.views.plan import RENDERER_DECODERS

DECODERS = {name: RENDERER_DECODERS[name] for name in ("cpu/3", "cpu/4")}
SIMPLEJPEG_VERSION = DECODERS["cpu/3"].split()[1]  # pinned in pyproject.toml
_MODES = {"Gray": "L", "YCbCr": "RGB", "RGB": "RGB", "CMYK": "CMYK", "YCCK": "CMYK"}


def check_decoder(renderer: str = "cpu/3") -> None:
    """Refuse to render ``renderer`` (cpu/3, cpu/4) with another simplejpeg than the one that
    defines it."""
    if simplejpeg.__version__ != SIMPLEJPEG_VERSION:
        raise ConfigError(
            f"renderer {renderer} decodes with simplejpeg {SIMPLEJPEG_VERSION}, found simplejpeg "
            f"{simplejpeg.__version__} (pip install simplejpeg=={SIMPLEJPEG_VERSION})"
        )


def jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, Pillow's mode) of a JPEG from its header (refused over the pixel
    limit), or None for anything simplejpeg does not read as one plain JPEG (Pillow reads
    those: other formats, multi-picture files)."""
    if data[:2] != b"\xff\xd8" or _maybe_multi_picture(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _MODES:
        return None
    check_size(width, height)
    return width, height, _MODES[colorspace]


def _maybe_multi_picture(data: bytes) -> bool:
    """Whether a JPEG's segments before its image data hold an MPF (multi-picture) APP2
    segment, or cannot be walked (Pillow then reads the file, as for every other image)."""
    offset = 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker == 0xDA:  # start of scan: no MPF segment before it
            return False
        elif marker == 0xE2 and data[offset + 4 : offset + 8] == b"MPF\x00":
            return True
        else:
            offset += 2 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return True


def decode_jpeg(
    data: bytes, channels: int, reduce: int, height: int, width: int, fastupsample: bool = True
) -> np.ndarray:
    """A baseline JPEG of ``height`` x ``width`` decoded at 1/``reduce``: uint8 (H, W, C),
    ``channels`` 3 (RGB; a grey JPEG's value repeated) or 1 (a grey JPEG only); chroma
    upsampled the fast way (cpu/3) or with libjpeg's fancy filter (``fastupsample=False``)."""
    pixels = simplejpeg.decode_jpeg(
        data, "RGB" if channels == 3 else "GRAY", fastdct=False, fastupsample=fastupsample,
        min_height=math.ceil(height / reduce), min_width=math.ceil(width / reduce),
    )  # fmt: skip
    expected = (math.ceil(height / reduce), math.ceil(width / reduce))
    if pixels.shape[:2] != expected:
        raise ShardError(f"JPEG decoded at 1/{reduce} to {pixels.shape[:2]}, expected {expected}")
    return pixels
