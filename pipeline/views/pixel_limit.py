"""The largest image kdcache decodes, checked from the image header before any pixel is
decoded: a small file can declare a huge image (a 17 KB PNG of 12000 x 12000), whose decode
would take gigabytes. The limit is per process; each command sets it from its options."""

from typing import Any

from PIL import Image

from kdcache._options import option
from kdcache.errors import ConfigError

MAX_PIXELS = 50_000_000  # above any real photo (a 45 MP camera frame fits)
_limit = {"pixels": MAX_PIXELS}


def max_pixels_option(**extra) -> Any:
    """The ``max_pixels`` field of a config (``--max-pixels``), declared once."""
    return option(MAX_PIXELS, help="largest image (width x height) decoded, checked from its "
                  "header", **extra)  # fmt: skip


def set_pixel_limit(pixels: int) -> None:
    """Refuse images of more than ``pixels`` pixels from now on, in this process."""
    if pixels < 1:
        raise ConfigError(f"max_pixels must be at least 1, got {pixels}", field="max_pixels")
    _limit["pixels"] = int(pixels)


def check_pixels(image: Image.Image) -> None:
    """Raise Pillow's ``DecompressionBombError`` for an opened (not yet decoded) ``image``
    whose header declares more pixels than the limit."""
    check_size(*image.size)


def check_size(width: int, height: int) -> None:
    """:func:`check_pixels` for an image whose header declares ``width`` x ``height``."""
    if width * height > _limit["pixels"]:
        raise Image.DecompressionBombError(
            f"{width}x{height} image has {width * height} pixels, above the limit of "
            f"{_limit['pixels']} (max pixels)"
        )
