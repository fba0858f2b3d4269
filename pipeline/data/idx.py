"""Reader for the IDX format used by MNIST and Fashion-MNIST (optionally gzip-compressed)."""

import gzip
import struct
from pathlib import Path

import numpy as np

from kdcache.errors import ManifestError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ManifestError(f"{path}: not an IDX file (bad magic {data[:4].hex()!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _DTYPES:
        raise ManifestError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ManifestError(
            f"{path}: expected {expected} data bytes for shape {shape}, found {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
