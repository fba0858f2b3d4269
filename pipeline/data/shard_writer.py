"""Write a dataset as WebDataset tar shards plus ``manifest.parquet``."""

import hashlib

import pyarrow as pa
import webdataset as wds
from tqdm import tqdm

from kdcache.pipeline.data import storage, urls
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


def _write_shards(source: DatasetSource | str | None, out: str, config: ShardConfig) -> Manifest:
    shard_size, splits, limits = config.shard_size, config.splits, config.limits
    if not isinstance(source, DatasetSource):
        source = open_source(
            source,
            on_bad_image=config.on_bad_image,
            shuffle_seed=config.shuffle_seed,
            follow_symlinks=config.follow_symlinks,
        )
    if shard_size < 1:
        raise ValueError(f"--shard-size must be at least 1, got {shard_size}")
    manifest_location = urls.join(out, "manifest.parquet")
    if urls.exists(manifest_location) and not config.overwrite:
        raise FileExistsError(f"{manifest_location} exists; pass --overwrite to replace it")
    unknown = set(splits) - set(source.split_sizes)
    if unknown:
        raise ValueError(
            f"{source.name}: no split {sorted(unknown)}; it has {sorted(source.split_sizes)}"
        )
    fs, out_path = storage.filesystem(out)
    fs.makedirs(urls.join(out_path, "shards"), exist_ok=True)

    columns: dict[str, list] = {name: [] for name in ("row", "key", "shard", "label", "split")}
    columns.update(height=[], width=[], sha1=[], path=[])
    shards: list[ShardInfo] = []
    total = sum(min(source.split_sizes[s], limits.get(s, source.split_sizes[s])) for s in splits)
    stats = PixelStats()
    bar = tqdm(total=total, desc="shard", unit="img", disable=None if config.progress else True)
    opened: list = []  # shard files; on an error the unfinished one is dropped, not uploaded
    writer = None
    try:
        for split in splits:
            writer, stream, count = None, None, 0
            for sample in source.iter_split(split, limits.get(split)):
                if writer is None or count == shard_size:
                    if writer is not None:
                        writer.close()
                        stream.close()  # TarWriter leaves a given stream open; S3 uploads on close
                    shard_id = len(shards)
                    file = f"shards/{split}-{sum(s.split == split for s in shards):06d}.tar"
                    shards.append(ShardInfo(shard_id, file, split, 0))
                    # a fixed integer mtime: byte-identical tars on every run, and no PAX headers
                    stream = fs.open(urls.join(out_path, file), "wb")
                    opened.append(stream)
                    writer = wds.TarWriter(stream, mtime=0)
                    count = 0
                if split == "train":
                    stats.add(decode_image(sample.image, source.channels, fit=STATS_SIDE))
                writer.write({"__key__": sample.key, sample.ext: sample.image, "cls": sample.label})
                columns["row"].append(shard_id * shard_size + count)
                columns["key"].append(sample.key)
                columns["shard"].append(shard_id)
                columns["label"].append(sample.label)
                columns["split"].append(split)
                columns["height"].append(sample.height)
                columns["width"].append(sample.width)
                columns["sha1"].append(hashlib.sha1(sample.image).hexdigest())
                columns["path"].append(sample.path)
                count += 1
                shards[-1] = ShardInfo(shard_id, shards[-1].file, split, count)
                bar.update()
            if writer is not None:
                writer.close()
                stream.close()
    except BaseException:
        if writer is not None:
            writer.close()  # the tar's own buffer, before its file is dropped
        for stream in opened:
            if not stream.closed:
                _drop(stream)
        raise
    bar.close()
    if stats.count == 0:
        raise ValueError(f"{source.name}: the train split is empty; nothing to shard")
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
        shards=shards,
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
        skipped=source.skipped,
    )
    return Manifest.read(manifest_location)


def _drop(stream) -> None:
    """An unfinished shard file closed without being uploaded where the store can do that (an
    object store's buffered file aborts its upload); a local file is closed as written."""
    try:
        stream.discard()
    except (AttributeError, RuntimeError):  # local files: "cannot discard if set to autocommit"
        stream.close()
