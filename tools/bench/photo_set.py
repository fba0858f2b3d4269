"""ImageNet-shaped JPEGs made from the real photos scikit-image ships, for cost benchmarks.

Each image is a random crop of one photo (scale, aspect ratio, position), resized to about
500x375 (or 375x500, with some odd sizes), flipped at random, colour-shifted (per-channel gain
and a brightness offset), and saved as JPEG at quality 88..92; about one in twelve is grey.
Natural content keeps the decode cost real (a flat or noise image decodes at another speed).
Seeded: the same arguments give byte-identical files.
"""

import io
import os

import numpy as np
from PIL import Image

PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
          "horse.png", "hubble_deep_field.jpg", "retina.jpg", "color.png", "brick.png",
          "grass.png", "gravel.png")  # fmt: skip
SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400), (640, 480), (423, 317))


def _photos() -> list[Image.Image]:
    try:
        import skimage
    except ImportError as error:  # a one-line message for the CLI
        raise ValueError(
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
