"""An encoded image's size read from its JPEG frame header or PNG ``IHDR`` chunk, without
Pillow's per-image objects (a few microseconds instead of tens).

Only images whose headers Pillow is known to open the same way are answered: the parser
walks a JPEG's markers as Pillow's ``JpegImagePlugin`` does, up to the start of scan, and
gives up (``None``: ask Pillow, which then opens or refuses the image) at anything Pillow
checks further or could refuse: 12-bit or 2-layer frames, a short or malformed segment, an
unknown marker, EXIF (Pillow reads its resolution), MPF (multi-picture) and Photoshop
segments, a size beyond Pillow's decompression-bomb limit. A PNG is answered when its
``IHDR`` (checksum, colour mode, filter method) is followed directly by image data.
"""

import struct
import zlib

from PIL import Image
from PIL.PngImagePlugin import _MODES as PNG_MODES

_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF, 0xDE))  # fmt: skip
# markers Pillow knows that carry no segment (it reads none for them)
_BARE = frozenset((0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)))
_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">II")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or PNG as ``PIL.Image.open(...).size`` gives it, or None when
    Pillow must be asked (another format, or a header this parser does not vouch for)."""
    if data.startswith(b"\xff\xd8\xff"):
        size = _jpeg_size(data)
    elif data.startswith(_PNG):
        size = _png_size(data)
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is not None and size[0] * size[1] > limit else size


def _png_size(data: bytes) -> tuple[int, int] | None:
    header = data[16:29]
    if len(data) < 41 or data[37:41] != b"IDAT" or header[11] != 0:
        return None
    if (header[8], header[9]) not in PNG_MODES:
        return None
    if zlib.crc32(header, zlib.crc32(b"IHDR")) != int.from_bytes(data[29:33], "big"):
        return None
    width, height = _BE32.unpack_from(header)
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame size Pillow's JPEG plugin finds before the start of scan, or None."""
    pos, end, size, byte = 3, len(data), None, 0xFF
    while True:
        if byte != 0xFF:  # junk between segments, skipped as Pillow does
            if pos >= end:
                return None
            byte, pos = data[pos], pos + 1
            continue
        if pos >= end:
            return None
        marker, pos = data[pos], pos + 1
        if marker == 0xFF:
            continue  # fill byte
        if marker < 0xC0:
            return None  # Pillow: 0xFF00 skipped, anything else "no marker found"
        if marker not in _BARE:
            if pos + 2 > end:
                return None
            length = _BE16.unpack_from(data, pos)[0] - 2
            segment, pos = data[pos + 2 : pos + 2 + max(length, 0)], pos + 2 + max(length, 0)
            if len(segment) < length:
                return None
            if marker in _SOF:
                size = _frame(segment)
                if size is None:
                    return None
            elif not _segment_as_pillow_reads_it(marker, segment):
                return None
            if marker == 0xDA:
                return size
        if pos >= end:
            return None
        byte, pos = data[pos], pos + 1


def _frame(segment: bytes) -> tuple[int, int] | None:
    """(width, height) of a start-of-frame segment Pillow accepts."""
    if len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3, 4):
        return None
    if (len(segment) - 6) % 3:
        return None  # a partial component entry: Pillow fails on it
    return _BE16.unpack_from(segment, 3)[0], _BE16.unpack_from(segment, 1)[0]


def _segment_as_pillow_reads_it(marker: int, segment: bytes) -> bool:
    """Whether Pillow's handler reads ``segment`` without error and without more checks."""
    if marker == 0xDB:  # quantization tables: whole tables only
        pos = 0
        while pos < len(segment):
            pos += 1 + (64 if segment[pos] < 16 else 128)
        return pos == len(segment)
    if marker == 0xE0 and segment.startswith(b"JFIF"):
        return len(segment) >= 7
    if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
        return False
    if marker == 0xE2 and segment.startswith(b"ICC_PROFILE\0"):
        return len(segment) >= 14
    if marker == 0xE2 and segment.startswith(b"MPF\0"):
        return False
    if marker == 0xED and segment.startswith(b"Photoshop 3.0\0"):
        return False
    if marker == 0xEE and segment.startswith(b"Adobe"):
        return len(segment) >= 7
    return True
