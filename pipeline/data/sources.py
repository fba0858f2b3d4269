"""Image datasets that `kdcache shard` can read: Fashion-MNIST IDX files and ImageFolder trees."""

import hashlib
import io
import random
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kdcache.errors import ConfigError, ManifestError
from kdcache.pipeline.data.idx import read_idx
from kdcache.pipeline.data.shard_config import BAD_IMAGE_POLICIES
from kdcache.pipeline.views import check_pixels

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
_UNSAFE = re.compile(r"[^A-Za-z0-9_/-]")


@dataclass(frozen=True)
class SourceSample:
    """One image as it goes into a shard: encoded bytes plus what the manifest records."""

    key: str
    image: bytes
    ext: str
    label: int
    height: int
    width: int
    path: str = ""  # the file it came from, relative to the dataset root ("" if none)


@dataclass
class DatasetSource:
    """A labelled image dataset with named splits."""

    name: str
    classes: tuple[str, ...]
    channels: int
    split_sizes: dict[str, int]
    _iterators: dict
    skipped: list[dict] = field(default_factory=list)  # bad files left out: path, error

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
        "or name a source folder holding the four IDX files"
    )


def fashion_mnist(directory: str | Path = FASHION_MNIST_DIR) -> DatasetSource:
    """Fashion-MNIST from its four IDX files (Debian package ``dataset-fashion-mnist``)."""
    directory = Path(directory)
    arrays = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images = read_idx(_find_idx(directory, images_stem))
        labels = read_idx(_find_idx(directory, labels_stem))
        if images.ndim != 3 or len(images) != len(labels):
            raise ManifestError(
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


def _regular(path: Path) -> bool:
    """Whether ``path`` is a regular file (after symlinks): FIFOs, sockets, devices are not."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (any depth), by suffix, sorted by relative path."""
    return sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def _escapes(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies outside ``root`` (resolved)."""
    return not path.resolve().is_relative_to(root.resolve())


def sample_key(relative: str) -> str:
    """The tar key of the file at ``relative`` (POSIX path from the root): the path without its
    extension. A path holding characters a WebDataset key cannot (a dot in the file name splits
    key and extension; anything outside ``A-Za-z0-9_-/``) has them replaced by ``_`` and
    ``_`` + 8 hex digits of the path's sha1 appended, so keys stay distinct."""
    stem = relative.rsplit(".", 1)[0]
    clean = _UNSAFE.sub("_", stem)
    if clean == stem:
        return stem
    return f"{clean}_{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def stratified_order(labels: list[int], seed: int) -> list[int]:
    """A seeded shuffled order of positions in which every class is spread evenly: the i-th of
    a class's n samples (in shuffled order) gets a key drawn in [i/n, (i+1)/n), and positions
    are sorted by key. Any run of L positions then holds each class's fair share L*n/N within
    +-2, so no shard gathers one class (Mixup/CutMix partners come from the same shard)."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(label, []).append(position)
    keyed = []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        keyed += [((i + rng.random()) / len(members), p) for i, p in enumerate(members)]
    return [position for _, position in sorted(keyed)]


def _read_image(path: Path) -> tuple[bytes, int, int]:
    """(bytes, height, width) of an image file, fully decoded once to prove it is readable."""
    if not _regular(path):
        raise OSError("not a regular file")
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        check_pixels(image)
        image.load()
        width, height = image.size
    return data, height, width


def image_folder(
    root: str | Path,
    *,
    on_bad_image: str = "fail",
    shuffle_seed: int = 0,
    follow_symlinks: bool = False,
) -> DatasetSource:
    """An ImageFolder tree ``root/{train,test}/<class>/**/<image>``; classes are sorted names.

    Each file's bytes go into the shard as they are (a JPEG stays a JPEG) under the key of its
    relative path (:func:`sample_key`; the manifest's ``path`` column holds the path itself).
    Samples are in a seeded, class-stratified shuffled order (:func:`stratified_order`).
    Channels: the data is RGB (3 channels) whatever each file's mode; every image is decoded
    as Pillow's ``Image.convert("RGB")`` gives it (torchvision's ImageFolder rule): grey is
    replicated, alpha (RGBA, LA, PA) dropped, palettes expanded, CMYK converted.
    A file that is not a regular file (a FIFO), does not decode or declares more pixels than
    the limit (:mod:`pipeline.views.pixel_limit`): ``on_bad_image="fail"`` raises naming it;
    ``"skip"`` leaves it out and lists it in ``skipped`` (the manifest's). A file or class
    folder whose symlinks lead outside ``root`` is refused (named) unless ``follow_symlinks``.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    root = Path(root)
    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    if "train" not in splits:
        raise FileNotFoundError(f"{root}: expected a train/ folder of class folders")
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise ConfigError(f"{root / 'train'}: no class folders found", field="source")
    files = {split: _split_files(root, split, classes, shuffle_seed, follow_symlinks)
             for split in splits}  # fmt: skip
    skipped: list[dict] = []
    iterators = {split: _folder_samples(root, files[split], on_bad_image, skipped)
                 for split in splits}  # fmt: skip
    return DatasetSource(
        name=root.name,
        classes=classes,
        channels=3,
        split_sizes={split: len(entries) for split, entries in files.items()},
        _iterators=iterators,
        skipped=skipped,
    )


def _split_files(
    root: Path, split: str, classes: tuple[str, ...], shuffle_seed: int, follow_symlinks: bool
) -> list[tuple[Path, int]]:
    """A split's (file, label) pairs in seeded, class-stratified shuffled order; a symlink
    leading outside ``root`` refused unless ``follow_symlinks``."""
    entries = []
    for label, name in enumerate(classes):
        folder = root / split / name
        if folder.is_dir():
            entries += [(path, label) for path in image_files(folder)]
    if not follow_symlinks:
        outside = next((path for path, _ in entries if _escapes(path, root)), None)
        if outside is not None:
            raise ManifestError(
                f"{outside}: a symlink leads outside the dataset root {root} (to "
                f"{outside.resolve()}); follow symlinks explicitly to read it"
            )
    order = stratified_order([label for _, label in entries], shuffle_seed)
    return [entries[i] for i in order]


def _folder_samples(
    root: Path, files: list[tuple[Path, int]], on_bad_image: str, skipped: list[dict]
) -> Callable[[int | None], Iterator[SourceSample]]:
    """The samples of ``files`` (at most ``limit`` of them), each file's bytes as they are; a
    bad image raises, or with ``on_bad_image="skip"`` is listed in ``skipped``."""

    def iterate(limit: int | None) -> Iterator[SourceSample]:
        count = 0
        for path, label in files:
            if limit is not None and count == limit:
                return
            relative = path.relative_to(root).as_posix()
            try:
                data, height, width = _read_image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                if on_bad_image == "fail":
                    raise ManifestError(
                        f"{path}: unreadable image ({error}); fix or remove it, or skip bad images"
                    ) from None
                skipped.append({"path": relative, "error": str(error)})
                continue
            count += 1
            yield SourceSample(
                key=sample_key(relative), image=data, ext=IMAGE_SUFFIXES[path.suffix.lower()],
                label=label, height=height, width=width, path=relative,
            )  # fmt: skip

    return iterate


def open_source(source: str | None, **folder_options) -> DatasetSource:
    """``None`` or ``fashion-mnist``: the Debian package's files; a folder of IDX files; or an
    ImageFolder (``folder_options``: :func:`image_folder`'s ``on_bad_image``, ``shuffle_seed``,
    ``follow_symlinks``)."""
    if source in (None, "fashion-mnist"):
        return fashion_mnist()
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(f"source {source}: not a directory", field="source")
    if any(path.glob("*-idx3-ubyte*")):
        return fashion_mnist(path)
    return image_folder(path, **folder_options)
