"""Reading WebDataset tars from any fsspec location (local paths, ``file://``, ``s3://`` ...).

webdataset opens only local files, pipes and a few schemes itself; these stages open every
URL through fsspec and hand the stream to webdataset's own tar expansion and grouping.
"""

import json
from collections.abc import Iterable, Iterator, Sequence

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from kdcache.errors import ShardError
from kdcache.pipeline.data import storage

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")
LABEL_FIELD = "cls"  # what kdcache's own tars hold: the label as a text integer


def image_extension(sample: dict, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str | None:
    """The first of ``extensions`` that the sample has a member for, or None."""
    return next((ext for ext in extensions if ext in sample), None)


def sample_image(sample: dict, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bytes:
    """The encoded image of a tar sample: its member of the first of ``extensions`` it has."""
    ext = image_extension(sample, extensions)
    if ext is None:
        raise ShardError(
            f"{sample.get('__url__')}: sample {sample['__key__']} has no image member "
            f"(looked for {'/'.join(extensions)}; it has {'/'.join(_members(sample)) or 'none'})"
        )
    return sample[ext]


def sample_label(sample: dict, field: str = LABEL_FIELD) -> int | None:
    """A sample's label from ``field``: ``EXT`` (a member holding a text integer, e.g. ``cls``)
    or ``EXT:NAME`` (a JSON member's field, e.g. ``json:label``); None if the sample lacks it."""
    ext, _, name = field.partition(":")
    if ext not in sample:
        return None
    raw = sample[ext]
    try:
        if not name:
            return int(raw)
        value = json.loads(raw)
        if not isinstance(value, dict) or name not in value:
            return None
        return int(value[name])
    except (ValueError, TypeError) as error:
        raise ShardError(
            f"{sample.get('__url__')}: sample {sample['__key__']}: label field {field!r} is "
            f"not an integer ({type(error).__name__}: {error})"
        ) from None


def _members(sample: dict) -> list[str]:
    return [k for k in sample if not k.startswith("__")]


def _open_streams(sources: Iterable[dict]) -> Iterator[dict]:
    for source in sources:
        # closed when the expander asks for the next tar, i.e. once this one is read
        with storage.open_file(source["url"], "rb") as stream:
            yield {**source, "stream": stream}


def stream_samples(stream, url: str) -> Iterator[dict]:
    """Samples of the one tar being read from ``stream`` (its location ``url``)."""
    return group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))


def tar_samples(urls: list[str], *splitters) -> wds.DataPipeline:
    """Samples (dicts keyed by extension, with ``__key__`` and ``__url__``) of the tars at
    ``urls``, in order, after the given shard-list stages (e.g. ``wds.split_by_worker``)."""
    return wds.DataPipeline(
        wds.SimpleShardList(urls), *splitters, _open_streams, tar_file_expander, group_by_keys
    )
