"""``kdcache index`` over Parquet files of encoded images and labels (Hugging Face's ImageNet
layout): a manifest over the files as they are, each file one shard, read by row groups."""

from collections.abc import Sequence

from tqdm import tqdm

from kdcache.errors import KdcacheError, ManifestError
from kdcache.pipeline.data import storage
from kdcache.pipeline.data.index_config import IndexConfig
from kdcache.pipeline.data.index_files import (
    IndexBuilder,
    assign_splits,
    dataset_name,
    expand_locations,
)
from kdcache.pipeline.data.manifest import Manifest
from kdcache.pipeline.data.parquet_reader import parquet_samples

LABEL_COLUMN = "label"


def index_parquet(files: str | Sequence[str], out: str, **options) -> Manifest:
    """Write ``out/manifest.parquet`` over the Parquet files ``files`` names (paths or fsspec
    URLs, brace ranges and globs) without rewriting them; ``options`` are
    :class:`~pipeline.data.index_config.IndexConfig`'s fields (``image_column``: a
    struct{bytes, path} or binary column; ``label_field``: the label column, default
    ``label``). Each file is a shard; a row's key is its image's path without extension, or
    ``<file name>/<row>`` (:func:`~pipeline.data.parquet_reader.row_key`). Refused, naming file
    and key: a missing column, a row without image bytes or label, a key seen twice."""
    config = IndexConfig(**options)
    with storage.using(config.storage_options):
        return _index_parquet(files, out, config)


def _index_parquet(files: str | Sequence[str], out: str, config: IndexConfig) -> Manifest:
    image, label = config.image_column, config.label_field or LABEL_COLUMN
    locations = expand_locations(files)
    splits = assign_splits(locations, config.splits)
    samples = {"format": "parquet", "image_extensions": [image], "label_field": label}
    builder = IndexBuilder(out, config, samples)
    bar = tqdm(desc="index", unit="img", disable=None if config.progress else True)
    for location, split in zip(locations, splits, strict=True):
        builder.begin_shard(location, split)
        try:
            for sample in parquet_samples(location, image, label):
                if not sample[image]:
                    raise ManifestError(
                        f"{location}: sample {sample['__key__']} has no image bytes in {image!r}"
                    )
                builder.add(sample["__key__"], sample[label], sample[image])
                bar.update()
        except KdcacheError:
            raise
        except Exception as error:  # Arrow errors: not Parquet, no such column, another type
            message = " ".join(str(error).split())
            raise ManifestError(
                f"{location}: unreadable as Parquet of images ({type(error).__name__}: {message})"
            ) from None
    bar.close()
    return builder.write(dataset_name(config, out))
