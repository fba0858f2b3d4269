"""ImageNet-shaped JPEGs made from the real photos scikit-image ships, for cost benchmarks.

Each image is a random crop of one photo (scale, aspect ratio, position), resized to about
500x375 (or 375x500, with some odd sizes), flipped at random, colour-shifted (per-channel gain
and a brightness offset), and saved as JPEG at quality 88..92; about one in twelve is grey.
Natural content keeps the decode cost real (a flat or noise image decodes at another speed).
Seeded: the same arguments give byte-identical files. :func:`write_wds_tars` packs them as
WebDataset tars written with plain ``tarfile``, as tars kdcache did not write look.
"""

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image

from kdcache.errors import ConfigError

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "horse.png", "hubble_deep_field.jpg", "retina.jpg", "color.png", "brick.png",
          "grass.png", "gravel.png")  # fmt: skip
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (640, 480), (423, 317))


def _photos() -> list[Image.Image]:
    try:
        import skimage
    except ImportError as error:  # a one-line message for the CLI
        raise ConfigError(
            "the real-shape benchmark needs scikit-image: pip install scikit-image"
        ) from error
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    return [Image.open(os.path.join(folder, name)).convert("RGB") for name in PHOTOS
            if os.path.exists(os.path.join(folder, name))]  # fmt: skip


def photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` encoded JPEGs shaped like ImageNet's (see the module docstring)."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = SIZES[0] if rng.random() < 0.5 else SIZES[rng.integers(len(SIZES))]
        scale = rng.uniform(0.5, 1.0)
        crop_w = max(16, int(photo.width * scale))
        crop_h = max(16, min(photo.height, int(crop_w * height / width)))
        left = int(rng.integers(0, photo.width - crop_w + 1))
        top = int(rng.integers(0, photo.height - crop_h + 1))
        image = photo.crop((left, top, left + crop_w, top + crop_h))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels * rng.uniform(0.8, 1.2, 3) + rng.uniform(-20, 20)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        if rng.random() < 1 / 12:
            image = image.convert("L")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(88, 93)))
        out.append(buffer.getvalue())
    return out


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_wds_tars(
    folder: str,
    count: int,
    *,
    per_tar: int,
    classes: int = 1000,
    prefix: str = "train",
    seed: int = 0,
    members: tuple[str, ...] = ("jpg", "cls", "json"),
) -> list[str]:
    """``count`` photo JPEGs (:func:`photo_jpegs`) as WebDataset tars
    ``folder/<prefix>-NNNNNN.tar`` of ``per_tar`` samples, written with plain ``tarfile``.

    Sample i (label drawn from ``classes``) is the members ``<key>.<ext>`` for ``members``:
    ``jpg`` the image, ``cls`` the label as text, ``json`` ``{"label": ..., "index": i}``. Keys
    hold slashes and dots, as ImageNet-style tars have: ``n<label:08d>.d/<prefix>.<i>`` is not
    a valid key (the dot in the file name ends it), so the key is ``n<label>.d/<prefix>_<i>``
    with the dot in its folder part. Returns the tar paths.
    """
    rng = np.random.default_rng(seed + 1)
    images = photo_jpegs(count, seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for first in range(0, count, per_tar):
        path = os.path.join(folder, f"{prefix}-{len(paths):06d}.tar")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(first, min(first + per_tar, count)):
                label = int(rng.integers(classes))
                key = f"n{label:08d}.d/{prefix}_{index:06d}"
                data = {"jpg": images[index], "cls": str(label).encode(),
                        "json": json.dumps({"label": label, "index": index}).encode()}  # fmt: skip
                for ext in members:
                    _add_member(tar, f"{key}.{ext}", data[ext])
        paths.append(path)
    return paths
