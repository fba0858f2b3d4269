"""Write a dataset as WebDataset tar shards plus ``manifest.parquet``."""

import hashlib

import pyarrow as pa
import webdataset as wds
from tqdm import tqdm

from kdcache.errors import ConfigError, OutputExists
from kdcache.pipeline.data import storage, urls
from kdcache.pipeline.data.file_identity import HashedFile
from kdcache.pipeline.data.manifest import Manifest, ShardInfo, write_manifest
from kdcache.pipeline.data.shard_config import ShardConfig
from kdcache.pipeline.data.sources import DatasetSource, open_source
from kdcache.pipeline.views import decode_image, set_pixel_limit

STATS_SIDE = 512  # pixel statistics on images shrunk to fit this square (bounded memory)


class PixelStats:
    """Running per-channel mean and std of pixel values on [0, 1] (of each image as
    :data:`STATS_SIDE` bounds it)."""

    def __init__(self):
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, pixels) -> None:
        values = pixels.double().flatten(1) / 255.0
        self.count += values.shape[1]
        self.total = self.total + values.sum(1)
        self.squares = self.squares + (values * values).sum(1)

    def result(self) -> tuple[list[float], list[float]]:
        mean = self.total / self.count
        std = (self.squares / self.count - mean * mean).clamp_min(1e-12).sqrt()
        return mean.tolist(), std.tolist()


def write_shards(source: DatasetSource | str | None, out: str, **options) -> Manifest:
    """Shard ``source`` into ``out/shards/<split>-NNNNNN.tar`` and write ``out/manifest.parquet``;
    ``options`` are :class:`~pipeline.data.shard_config.ShardConfig`'s fields.

    Each tar sample holds ``__key__``, the encoded image (``png``/``jpg``...) and ``cls``.
    The manifest is written last, so a folder with a manifest always has all its shards.
    ``source``: a :class:`DatasetSource`, or what ``kdcache shard --source`` takes (None or
    ``fashion-mnist``, a folder of IDX files, an ImageFolder root; for a folder,
    ``on_bad_image`` and ``shuffle_seed`` as :func:`~pipeline.data.sources.image_folder` takes).
    ``storage_options`` (fsspec's, over ``$KDCACHE_STORAGE_OPTIONS``) reach ``out``.
    """
    config = ShardConfig(**options)
    set_pixel_limit(config.max_pixels)
    with storage.using(config.storage_options):
        return _write_shards(source, out, config)


def _check_request(source: DatasetSource, config: ShardConfig, manifest_location: str) -> None:
    """Refuse, before anything is written, a bad shard size, an existing manifest (unless
    ``overwrite``) or splits the source lacks."""
    if config.shard_size < 1:
        raise ConfigError(
            f"shard_size must be at least 1, got {config.shard_size}", field="shard_size"
        )
    if urls.exists(manifest_location) and not config.overwrite:
        raise OutputExists(f"{manifest_location} exists; overwrite replaces it", field="overwrite")
    unknown = set(config.splits) - set(source.split_sizes)
    if unknown:
        raise ConfigError(
            f"{source.name}: no split {sorted(unknown)}; it has {sorted(source.split_sizes)}",
            field="splits",
        )


def _write_shards(source: DatasetSource | str | None, out: str, config: ShardConfig) -> Manifest:
    shard_size, splits, limits = config.shard_size, config.splits, config.limits
    if not isinstance(source, DatasetSource):
        source = open_source(
            source,
            on_bad_image=config.on_bad_image,
            shuffle_seed=config.shuffle_seed,
            follow_symlinks=config.follow_symlinks,
        )
    manifest_location = urls.join(out, "manifest.parquet")
    _check_request(source, config, manifest_location)
    fs, out_path = storage.filesystem(out)
    fs.makedirs(urls.join(out_path, "shards"), exist_ok=True)

    columns: dict[str, list] = {name: [] for name in ("row", "key", "shard", "label", "split")}
    columns.update(height=[], width=[], sha1=[], path=[])
    total = sum(min(source.split_sizes[s], limits.get(s, source.split_sizes[s])) for s in splits)
    stats = PixelStats()
    bar = tqdm(total=total, desc="shard", unit="img", disable=None if config.progress else True)
    tars = TarShards(fs, out_path, shard_size)
    try:
        for split in splits:
            for sample in source.iter_split(split, limits.get(split)):
                if split == "train":
                    stats.add(decode_image(sample.image, source.channels, fit=STATS_SIDE))
                shard_id, position = tars.write(split, sample)
                columns["row"].append(shard_id * shard_size + position)
                columns["key"].append(sample.key)
                columns["shard"].append(shard_id)
                columns["label"].append(sample.label)
                columns["split"].append(split)
                columns["height"].append(sample.height)
                columns["width"].append(sample.width)
                columns["sha1"].append(hashlib.sha1(sample.image).hexdigest())
                columns["path"].append(sample.path)
                bar.update()
            tars.finish()
    except BaseException:
        tars.abort()
        raise
    bar.close()
    if stats.count == 0:
        raise ConfigError(f"{source.name}: the train split is empty; nothing to shard")
    pixel_mean, pixel_std = stats.result()
    if not any(columns["path"]):  # sources without files (IDX arrays) keep the old columns
        del columns["path"]
    write_manifest(
        manifest_location,
        pa.table(columns),
        dataset=source.name,
        classes=list(source.classes),
        channels=source.channels,
        shard_size=shard_size,
        shards=tars.shards,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        skipped=source.skipped,
    )
    return Manifest.read(manifest_location)


class TarShards:
    """The tar files of a split being written, ``shard_size`` samples each, as ``ShardInfo``s
    with the size and sha256 of their bytes as written (the manifest reads nothing back)."""

    def __init__(self, fs, out_path: str, shard_size: int):
        self.fs, self.out_path, self.shard_size = fs, out_path, shard_size
        self.shards: list[ShardInfo] = []
        self.writer, self.stream, self.count = None, None, 0

    def write(self, split: str, sample) -> tuple[int, int]:
        """Write ``sample`` to the current tar (a new one of ``split`` when it is full or
        finished); return its (shard id, position in the shard)."""
        if self.writer is None or self.count == self.shard_size:
            self.finish()
            file = f"shards/{split}-{sum(s.split == split for s in self.shards):06d}.tar"
            self.shards.append(ShardInfo(len(self.shards), file, split, 0))
            self.stream = HashedFile(self.fs.open(urls.join(self.out_path, file), "wb"))
            # a fixed integer mtime: byte-identical tars on every run, and no PAX headers
            self.writer, self.count = wds.TarWriter(self.stream, mtime=0), 0
        self.writer.write({"__key__": sample.key, sample.ext: sample.image, "cls": sample.label})
        self.count += 1
        return self.shards[-1].id, self.count - 1

    def finish(self) -> None:
        """Close the current tar (TarWriter leaves a given stream open; S3 uploads on close)
        and record its rows, size and sha256."""
        if self.writer is None:
            return
        self.writer.close()
        self.stream.close()
        last = self.shards[-1]
        self.shards[-1] = ShardInfo(last.id, last.file, last.split, self.count,
                                    *self.stream.identity())  # fmt: skip
        self.writer = self.stream = None

    def abort(self) -> None:
        """After an error: the unfinished tar is dropped, not uploaded where the store can do
        that (an object store's buffered file aborts its upload); a local file is closed as
        written."""
        if self.writer is None:
            return
        self.writer.close()  # the tar's own buffer, before its file is dropped
        try:
            self.stream.discard()
        except (AttributeError, RuntimeError):  # local files: "cannot discard if set to autocommit"
            self.stream.close()
        self.writer = self.stream = None
