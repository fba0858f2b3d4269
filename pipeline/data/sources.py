"""Image datasets that `kdcache shard` can read: Fashion-MNIST IDX files and ImageFolder trees."""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdcache.pipeline.data.idx import read_idx

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".bmp": "bmp"}


@dataclass(frozen=True)
class SourceSample:
    """One image as it goes into a shard: encoded bytes plus what the manifest records."""

    key: str
    image: bytes
    ext: str
    label: int
    height: int
    width: int


@dataclass
class DatasetSource:
    """A labelled image dataset with named splits."""

    name: str
    classes: tuple[str, ...]
    channels: int
    split_sizes: dict[str, int]
    _iterators: dict

    def iter_split(self, split: str, limit: int | None = None) -> Iterator[SourceSample]:
        """Yield the split's samples in their stable order (at most ``limit``)."""
        return self._iterators[split](limit)


def _encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{directory}: no IDX file {stem}(.gz); install Debian's dataset-fashion-mnist "
        "or pass --source DIR holding the four IDX files"
    )


def fashion_mnist(directory: str | Path = FASHION_MNIST_DIR) -> DatasetSource:
    """Fashion-MNIST from its four IDX files (Debian package ``dataset-fashion-mnist``)."""
    directory = Path(directory)
    arrays = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images = read_idx(_find_idx(directory, images_stem))
        labels = read_idx(_find_idx(directory, labels_stem))
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(
                f"{directory}: {split} images have shape {images.shape} but "
                f"{len(labels)} labels; expected (n, H, W) with n labels"
            )
        arrays[split] = (images, labels)

    def iterator(split: str):
        images, labels = arrays[split]

        def iterate(limit: int | None) -> Iterator[SourceSample]:
            count = len(images) if limit is None else min(limit, len(images))
            for index in range(count):
                yield SourceSample(
                    key=f"{split}-{index:06d}",
                    image=_encode_png(images[index]),
                    ext="png",
                    label=int(labels[index]),
                    height=images.shape[1],
                    width=images.shape[2],
                )

        return iterate

    return DatasetSource(
        name="fashion-mnist",
        classes=FASHION_MNIST_CLASSES,
        channels=1,
        split_sizes={split: len(arrays[split][0]) for split in arrays},
        _iterators={split: iterator(split) for split in arrays},
    )


def image_folder(root: str | Path) -> DatasetSource:
    """An ImageFolder tree ``root/{train,test}/<class>/<image>``; classes are sorted names."""
    root = Path(root)
    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    if "train" not in splits:
        raise FileNotFoundError(f"{root}: expected a train/ folder of class folders")
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise ValueError(f"{root / 'train'}: no class folders found")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in splits:
        entries = []
        for label, name in enumerate(classes):
            folder = root / split / name
            if folder.is_dir():
                entries += [
                    (path, label)
                    for path in sorted(folder.iterdir())
                    if path.suffix.lower() in IMAGE_SUFFIXES
                ]
        files[split] = entries
    with Image.open(files["train"][0][0]) as first:
        channels = len(first.getbands()) if first.mode != "P" else 3

    def iterator(split: str):
        def iterate(limit: int | None) -> Iterator[SourceSample]:
            for index, (path, label) in enumerate(files[split][:limit]):
                with Image.open(path) as image:
                    width, height = image.size
                yield SourceSample(
                    key=f"{split}-{index:06d}",
                    image=path.read_bytes(),
                    ext=IMAGE_SUFFIXES[path.suffix.lower()],
                    label=label,
                    height=height,
                    width=width,
                )

        return iterate

    return DatasetSource(
        name=root.name,
        classes=classes,
        channels=min(channels, 3),
        split_sizes={split: len(entries) for split, entries in files.items()},
        _iterators={split: iterator(split) for split in splits},
    )


def open_source(source: str | None) -> DatasetSource:
    """``None`` or ``fashion-mnist``: the Debian package's files; a folder of IDX files; or an ImageFolder."""
    if source in (None, "fashion-mnist"):
        return fashion_mnist()
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"--source {source}: not a directory")
    if any(path.glob("*-idx3-ubyte*")):
        return fashion_mnist(path)
    return image_folder(path)
