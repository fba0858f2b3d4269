"""Image sizes from JPEG and PNG headers against Pillow's ``Image.open(...).size``: the same
size for the images the parser answers, and no answer (Pillow decides) for anything Pillow
refuses or checks further."""

import io
import struct

import numpy as np
import pytest
from PIL import Image

from kdcache.pipeline.data.image_header import image_size
from kdcache.tools.bench.photo_set import photo_jpegs


def _pillow(data: bytes):
    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _encoded(mode: str, size=(37, 23), fmt="JPEG", **options) -> bytes:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0], len(mode)) if len(mode) > 1 else (size[1], size[0])
    image = Image.fromarray(rng.integers(0, 255, shape, np.uint8))
    if mode not in ("L", "RGB"):
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _answered() -> list[bytes]:
    """Images the parser must answer itself (the common cases of a dataset)."""
    return [
        *photo_jpegs(24, seed=3),
        _encoded("RGB", progressive=True),
        _encoded("L"),
        _encoded("CMYK"),
        _encoded("RGB", icc_profile=b"p" * 300),
        _encoded("RGB", comment=b"a comment"),
        _encoded("RGB", fmt="PNG"),
        _encoded("L", fmt="PNG"),
        _encoded("RGBA", fmt="PNG"),
        _encoded("RGB", size=(1, 5000)),
    ]


def test_sizes_are_pillows():
    for data in _answered():
        assert image_size(data) is not None
        assert image_size(data) == _pillow(data)
    palette = _encoded("P", fmt="PNG")  # a chunk before the image data: Pillow reads it
    assert image_size(palette) is None and _pillow(palette) is not None


def _sof(data: bytes) -> int:
    return next(i for i in range(2, len(data)) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))


def _damaged() -> dict[str, bytes]:
    jpeg = _encoded("RGB")
    at = _sof(jpeg)
    dqt = jpeg.index(b"\xff\xdb")
    exif = Image.Exif()
    exif[0x0128] = 2
    return {
        "12-bit frame": jpeg[: at + 4] + b"\x0c" + jpeg[at + 5 :],
        "2-layer frame": jpeg[: at + 9] + b"\x02" + jpeg[at + 10 :],
        "short quantization table": jpeg[: dqt + 2] + struct.pack(">H", 40) + jpeg[dqt + 4 :],
        "header cut": jpeg[: at + 6],
        "unknown marker": jpeg[:2] + b"\xff\x10" + jpeg[2:],
        "zero width": jpeg[: at + 7] + b"\x00\x00" + jpeg[at + 9 :],
        "exif": _encoded("RGB", exif=exif.tobytes()),
        "png bad IHDR checksum": (png := _encoded("RGB", fmt="PNG"))[:29] + b"\0\0\0\0" + png[33:],
        "png bad mode": png[:24] + b"\x07" + png[25:],
        "gif": _encoded("P", fmt="GIF"),
        "not an image": b"\xff\xd8\xff" + bytes(40),
    }


@pytest.mark.parametrize("name", list(_damaged()))
def test_anything_pillow_checks_further_is_left_to_it(name):
    data = _damaged()[name]
    assert image_size(data) is None


def test_a_decompression_bomb_is_left_to_pillow(monkeypatch):
    data = _encoded("RGB", size=(300, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    assert image_size(data) is None
    assert _pillow(data) is None  # over twice the limit: Pillow refuses it
