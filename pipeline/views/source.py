"""A source image as the renderers see it: its encoded bytes, decoded on demand and at most
once per reduction (the teacher job renders a shard's V views from one decode per image).

Decoding (part of the replay contract): the image converted to RGB (or L for 1-channel data)
as Pillow's ``Image.convert`` gives it. For baseline JPEGs (modes RGB and L) kdcache decodes
with ``torchvision.io.decode_jpeg`` instead, which is the same libjpeg-turbo decode (islow
IDCT, fancy upsampling) and gives the same pixels, faster (tests check that it does).

Reduced decoding: a JPEG can be decoded at 1/2, 1/4 or 1/8 of its size in the DCT domain
(libjpeg's scaling, Pillow's ``Image.draft``), far cheaper than a full decode. The renderer
asks for the largest reduction that still leaves the crop at least the output size.

Renderers ``cpu/3`` and ``cpu/4`` decode baseline JPEGs with simplejpeg
(:meth:`SourceImage.fast_hwc`, ``pipeline.views.jpeg_decode``; cpu/4's decode is Pillow's
pixels, cpu/3's upsamples chroma its own way); every other image as above. A JPEG's header is read by
simplejpeg (same size and mode as Pillow's, far cheaper); other files by Pillow.
"""

import io
import math

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from kdcache.pipeline.views.jpeg_decode import decode_jpeg as fast_decode
from kdcache.pipeline.views.jpeg_decode import jpeg_header
from kdcache.pipeline.views.pixel_limit import check_pixels

REDUCTIONS = (8, 4, 2)  # DCT scalings Pillow's draft offers (besides 1)


def pil_decode(data: bytes, channels: int, reduce: int = 1) -> np.ndarray:
    """Pillow's decode (at 1/``reduce`` for a JPEG) as uint8 (H, W, C)."""
    with Image.open(io.BytesIO(data)) as image:
        check_pixels(image)
        if reduce > 1:
            width, height = image.size
            image.draft(image.mode, (width // reduce, height // reduce))
        pixels = np.array(image.convert("L" if channels == 1 else "RGB"))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


class SourceImage:
    """One encoded image of a shard: size from its header (refused over the pixel limit),
    pixels decoded when first asked."""

    def __init__(self, data: bytes, channels: int):
        self.data = data
        self.channels = channels
        self._decoded: dict[int | str | tuple, torch.Tensor] = {}
        header = jpeg_header(data)
        if header is not None:
            self.width, self.height, self.mode = header
            self.format = "JPEG"
            return
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(image)
            self.width, self.height = image.size
            self.format, self.mode = image.format, image.mode

    @classmethod
    def from_pixels(cls, pixels: torch.Tensor) -> "SourceImage":
        """An already decoded uint8 (C, H, W) image (no reduced decoding)."""
        image = cls.__new__(cls)
        image.data, image.format, image.mode = None, None, None
        image.channels, image.height, image.width = pixels.shape
        image._decoded = {1: pixels.permute(1, 2, 0)}
        return image

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the full-size decode."""
        return self.channels, self.height, self.width

    def reduction_for(self, height: int, width: int, size: int) -> int:
        """The DCT reduction to decode at for a (height, width) crop shown at ``size``: the
        largest of 8, 4, 2 with both crop sides at least ``size`` times it, else 1."""
        if self.format != "JPEG":
            return 1
        room = min(height, width) // size
        return next((r for r in REDUCTIONS if room >= r), 1)

    def hwc(self, reduce: int = 1) -> torch.Tensor:
        """uint8 (H, W, C) pixels decoded at 1/``reduce`` (cached)."""
        if reduce not in self._decoded:
            self._decoded[reduce] = self._decode(reduce)
        return self._decoded[reduce]

    def fast_hwc(self, reduce: int = 1, renderer: str = "cpu/3") -> torch.Tensor:
        """Renderer cpu/3's (or cpu/4's) uint8 (H, W, C) decode at 1/``reduce`` (cached):
        simplejpeg for a baseline JPEG (modes RGB and L; L only from a grey JPEG), :meth:`hwc`
        for the rest."""
        if not self._simplejpeg():
            return self.hwc(reduce)
        key = (renderer, reduce)
        if key not in self._decoded:
            pixels = fast_decode(
                self.data, self.channels, reduce, self.height, self.width, renderer == "cpu/3"
            )
            self._decoded[key] = torch.from_numpy(pixels)
        return self._decoded[key]

    def exact_hwc(self, reduce: int = 1) -> torch.Tensor:
        """Renderer cpu/4's uint8 (H, W, C) decode at 1/``reduce`` (cached)."""
        return self.fast_hwc(reduce, "cpu/4")

    def prepare(self, renderer: str) -> None:
        """Decode now what ``renderer`` renders this image from at full size."""
        if renderer == "cpu/1":
            self.legacy_chw()
        elif renderer in ("cpu/3", "cpu/4"):
            self.fast_hwc(1, renderer)
        else:
            self.hwc()

    def _simplejpeg(self) -> bool:
        baseline = self.data is not None and self.format == "JPEG" and self.mode in ("RGB", "L")
        return baseline and (self.channels == 3 or self.mode == "L")

    def release(self) -> None:
        """Forget the decoded pixels (an image with encoded bytes decodes again on demand)."""
        if self.data is not None:
            self._decoded.clear()

    def chw(self) -> torch.Tensor:
        """uint8 (C, H, W) full-size pixels, contiguous."""
        return self.hwc().permute(2, 0, 1).contiguous()

    def legacy_chw(self) -> torch.Tensor:
        """uint8 (C, H, W) as Pillow decodes it: renderer cpu/1's decode, always Pillow's."""
        if self.data is None:
            return self.chw()
        if "pil" not in self._decoded:
            pixels = torch.from_numpy(pil_decode(self.data, self.channels))
            self._decoded["pil"] = pixels.permute(2, 0, 1).contiguous()
        return self._decoded["pil"]

    def reduced_size(self, reduce: int) -> tuple[int, int]:
        """(height, width) of the decode at 1/``reduce`` (libjpeg rounds up)."""
        return math.ceil(self.height / reduce), math.ceil(self.width / reduce)

    def _decode(self, reduce: int) -> torch.Tensor:
        fast = self.format == "JPEG" and self.mode in ("RGB", "L") and reduce == 1
        if fast and (self.channels == 3 or self.mode == "L"):
            mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
            encoded = torch.frombuffer(bytearray(self.data), dtype=torch.uint8)
            return decode_jpeg(encoded, mode=mode).permute(1, 2, 0)
        return torch.from_numpy(pil_decode(self.data, self.channels, reduce))


def as_source(image) -> SourceImage:
    """A :class:`SourceImage` for a source image or a decoded uint8 (C, H, W) tensor."""
    return image if isinstance(image, SourceImage) else SourceImage.from_pixels(image)
