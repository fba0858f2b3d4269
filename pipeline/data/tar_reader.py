"""Reading WebDataset tars from any fsspec location (local paths, ``file://``, ``s3://`` ...).

webdataset opens only local files, pipes and a few schemes itself; these stages open every
URL through fsspec and hand the stream to webdataset's own tar expansion and grouping.
"""

from collections.abc import Iterable, Iterator

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from kdcache.errors import ShardError
from kdcache.pipeline.data import storage

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


def sample_image(sample: dict) -> bytes:
    """The encoded image of a tar sample, whatever its extension."""
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise ShardError(f"{sample.get('__url__')}: sample {sample['__key__']} has no image")


def _open_streams(sources: Iterable[dict]) -> Iterator[dict]:
    for source in sources:
        # closed when the expander asks for the next tar, i.e. once this one is read
        with storage.open_file(source["url"], "rb") as stream:
            yield {**source, "stream": stream}


def tar_samples(urls: list[str], *splitters) -> wds.DataPipeline:
    """Samples (dicts keyed by extension, with ``__key__`` and ``__url__``) of the tars at
    ``urls``, in order, after the given shard-list stages (e.g. ``wds.split_by_worker``)."""
    return wds.DataPipeline(
        wds.SimpleShardList(urls), *splitters, _open_streams, tar_file_expander, group_by_keys
    )
