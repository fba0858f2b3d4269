"""What indexing existing shards in place shares, whatever their format: which files the
patterns name, their splits, where the manifest records them, and the manifest built from the
samples found (keys, content hashes, labels, image sizes, class count, pixel statistics)."""

import fnmatch
import hashlib
import io
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from braceexpand import braceexpand
from PIL import Image

from kdcache.errors import ManifestError, OutputExists
from kdcache.pipeline.data import storage, urls
from kdcache.pipeline.data.image_header import image_size
from kdcache.pipeline.data.index_config import IndexConfig
from kdcache.pipeline.data.manifest import Manifest, ShardInfo, write_manifest
from kdcache.pipeline.data.shard_writer import PixelStats
from kdcache.pipeline.views import decode_image

_GLOB = ("*", "?", "[")


def expand_locations(patterns: str | Sequence[str]) -> list[str]:
    """Every file ``patterns`` name, in the order given: brace ranges expanded
    (``train-{000000..000146}.tar``), then globs matched (locally or through fsspec, matches
    sorted). A name that matches nothing, or a file named twice, is refused."""
    found: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        for location in braceexpand(pattern):
            if not any(c in location for c in _GLOB):
                if not urls.exists(location):
                    raise ManifestError(f"{location}: no such file")
                found.append(location)
                continue
            fs, path = storage.filesystem(location)
            matches = sorted(fs.glob(path))
            if not matches:
                raise ManifestError(f"{location}: no file matches this pattern")
            found += [m if urls.local_path(location) == location else fs.unstrip_protocol(m)
                      for m in matches]  # fmt: skip
    twice = sorted(x for x, n in Counter(found).items() if n > 1)
    if twice:
        raise ManifestError(f"{twice[0]}: named twice by the patterns {patterns}")
    return found


def assign_splits(locations: list[str], splits: dict[str, str]) -> list[str]:
    """Each file's split: the one ``NAME=PATTERN`` whose glob matches its name or whole
    location (every file is ``train`` without patterns); a file matching none or several is
    refused."""
    if not splits:
        return ["train"] * len(locations)
    names = []
    for location in locations:
        name = posixpath.basename(location.rstrip("/"))
        hits = [s for s, p in splits.items() if fnmatch.fnmatchcase(name, p)
                or fnmatch.fnmatchcase(location, p)]  # fmt: skip
        if len(hits) != 1:
            which = "no split pattern" if not hits else f"the patterns of splits {hits}"
            raise ManifestError(f"{location}: matches {which} ({splits})")
        names.append(hits[0])
    if "train" not in names:
        raise ManifestError(f"no file is in split train (splits {splits})")
    return names


def recorded_location(location: str, folder: str) -> str:
    """How the manifest in ``folder`` records a shard file: relative to ``folder`` when the file
    is under it, else as given (a local path made absolute, a URL unchanged)."""
    path, base = urls.local_path(location), urls.local_path(folder)
    if path is not None and base is not None:
        path, base = os.path.abspath(path), os.path.abspath(base)
        return os.path.relpath(path, base) if path.startswith(base + os.sep) else path
    if path is None and base is None and _scheme(location) == _scheme(folder):
        # compared as the filesystem spells paths (memory://a and memory:///a are one file)
        within = storage.filesystem(location)[1]
        prefix = storage.filesystem(folder)[1].rstrip("/") + "/"
        if within.startswith(prefix):
            return within[len(prefix) :]
    return urls.resolved(location)


def _scheme(location: str) -> str:
    return location.split("://", 1)[0]


class IndexBuilder:
    """Collects the samples of existing shards, checks them (distinct keys, labels present and
    in range, readable image headers) and writes the manifest over them. Columns are kept as
    Arrow arrays, one per shard (Python values only for the shard being read)."""

    def __init__(self, out: str, config: IndexConfig, samples: dict):
        self.out, self.config, self.samples = out, config, samples
        self.manifest_location = urls.join(out, "manifest.parquet")
        if urls.exists(self.manifest_location) and not config.overwrite:
            raise OutputExists(
                f"{self.manifest_location} exists; overwrite replaces it", field="overwrite"
            )
        self.parts: list[pa.RecordBatch] = []  # the samples of each shard read
        self.current: dict[str, list] = {}  # the shard being read
        self.shards: list[ShardInfo] = []
        self.locations: list[str] = []  # each shard's file as given
        self.seen: set[str] = set()  # keys of the shard being read
        self.stats, self.decoded = PixelStats(), 0
        if config.stats_images < 1:
            raise ManifestError(f"stats_images must be at least 1, got {config.stats_images}")

    @property
    def location(self) -> str:
        """The file being read."""
        return self.locations[-1]

    def begin_shard(self, location: str, split: str) -> None:
        """Samples added next belong to the file at ``location``."""
        self._close_shard()
        file = recorded_location(location, self.out)
        self.shards.append(ShardInfo(len(self.shards), file, split, 0))
        self.locations.append(location)
        self.current = {name: [] for name in ("key", "label", "height", "width", "sha1")}
        self.seen = set()

    def end_shard(self, identity: tuple[int, str]) -> None:
        """The current file is read whole: its (size, sha256), so the manifest need not read
        it again (files indexed without this are hashed when the manifest is written)."""
        self.shards[-1] = replace(self.shards[-1], bytes=identity[0], sha256=identity[1])

    def add(self, key: str, label: int | None, image: bytes) -> None:
        """One sample of the current shard: its key, label (None: missing) and encoded image."""
        shard = self.shards[-1]
        if key in self.seen:
            raise ManifestError(
                f"{self.location}: duplicate key {key!r} (first in {self.location}); "
                "every sample's key must be distinct"
            )
        self.seen.add(key)
        field = self.samples["label_field"]
        if label is None:
            raise ManifestError(f"{self.location}: sample {key} has no label {field!r}")
        if label < 0:
            raise ManifestError(f"{self.location}: sample {key} has label {label} ({field}) < 0")
        width, height = image_size(image) or self._opened_size(key, image)
        if shard.split == "train" and self.decoded < self.config.stats_images:
            self.stats.add(decode_image(image, 3))
            self.decoded += 1
        columns = self.current
        columns["key"].append(key)
        columns["label"].append(label)
        columns["height"].append(height)
        columns["width"].append(width)
        columns["sha1"].append(hashlib.sha1(image).hexdigest())

    def _opened_size(self, key: str, image: bytes) -> tuple[int, int]:
        """The size Pillow opens an image at (what :func:`image_size` leaves to it)."""
        try:
            with Image.open(io.BytesIO(image)) as opened:
                return opened.size
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ManifestError(
                f"{self.location}: sample {key}: unreadable image ({type(error).__name__}: {error})"
            ) from None

    def _close_shard(self) -> None:
        """The shard read so far as Arrow arrays (its Python values let go)."""
        if not self.shards:
            return
        columns = self.current
        shard = self.shards[-1] = replace(self.shards[-1], num_rows=len(columns["key"]))
        self.parts.append(pa.record_batch({
            "key": pa.array(columns["key"], pa.string()),
            "shard": pa.array(np.full(shard.num_rows, shard.id, np.int32)),
            "position": pa.array(np.arange(shard.num_rows, dtype=np.int64)),
            "label": pa.array(columns["label"], pa.int32()),
            "split": pa.array([shard.split] * shard.num_rows, pa.string()),
            "height": pa.array(columns["height"], pa.int32()),
            "width": pa.array(columns["width"], pa.int32()),
            "sha1": pa.array(columns["sha1"], pa.string()),
        }))  # fmt: skip
        self.current = {name: [] for name in columns}

    def write(self, dataset: str) -> Manifest:
        """Write ``manifest.parquet``: rows laid out with the largest shard as the shard size,
        classes from the labels (or ``num_classes``), pixel statistics of the first train
        images (RGB, the ImageFolder rule)."""
        self._close_shard()
        table = pa.Table.from_batches(self.parts) if self.parts else None
        if table is None or not len(table):
            raise ManifestError(f"{dataset}: no samples found")
        self._check_distinct(table)
        labels = table["label"].to_numpy()
        top = int(labels.max())
        classes = self.config.num_classes or top + 1
        if top >= classes:
            key = table["key"][int(np.argmax(labels))].as_py()
            raise ManifestError(
                f"sample {key} has label {top}, but there are {classes} "
                "classes (labels must be below the class count)"
            )
        shard_size = max(s.num_rows for s in self.shards)
        position = table["position"].to_numpy()
        rows = table["shard"].to_numpy().astype(np.int64) * shard_size + position
        table = table.drop_columns(["position"]).append_column("row", pa.array(rows))
        mean, std = self.stats.result()
        fs, path = storage.filesystem(self.out)
        fs.makedirs(path, exist_ok=True)
        write_manifest(
            self.manifest_location,
            table,
            dataset=dataset,
            classes=[str(c) for c in range(classes)],
            channels=3,
            shard_size=shard_size,
            shards=self.shards,
            pixel_mean=mean,
            pixel_std=std,
            samples=self.samples,
        )
        return Manifest.read(self.manifest_location, allow_remote_shards=True)  # as asked

    def _check_distinct(self, table: pa.Table) -> None:
        """Refuse a key found in two files, naming both: of the keys seen twice, the one whose
        second sample comes first in reading order (a stable sort by key in Arrow)."""
        order = pc.sort_indices(table["key"]).to_numpy()
        keys = table["key"].take(order)
        if len(keys) < 2:
            return
        same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
        twice = np.flatnonzero(same)
        if not len(twice):
            return
        at = int(twice[np.argmin(order[twice + 1])])
        shard_of = table["shard"].to_numpy()
        first, second = shard_of[order[at]], shard_of[order[at + 1]]
        raise ManifestError(
            f"{self.locations[second]}: duplicate key {keys[at].as_py()!r} (first in "
            f"{self.locations[first]}); every sample's key must be distinct"
        )


def dataset_name(config: IndexConfig, out: str) -> str:
    """The name recorded for the dataset: ``config.dataset``, else the output folder's name."""
    return config.dataset or posixpath.basename(out.rstrip("/")) or "dataset"
