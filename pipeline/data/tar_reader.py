"""Reading WebDataset tars from any fsspec location (local paths, ``file://``, ``s3://`` ...).

webdataset opens only local files, pipes and a few schemes itself; these stages open every
URL through fsspec, expand the tar here and hand its members to webdataset's grouping. Tars
are read as they are stored: a compressed tar (gzip, bzip2, xz, zstd) is refused, never
inflated, and a member larger than :data:`MAX_MEMBER_BYTES` is refused before it is read, so
memory is bounded by what a sample may hold, not by what a file declares.
"""

import json
import re
from collections.abc import Iterable, Iterator, Sequence

import webdataset as wds
from webdataset.tariterators import group_by_keys

from kdcache.errors import ShardError
from kdcache.pipeline.data import storage
from kdcache.pipeline.data.tar_headers import regular_members

MAX_MEMBER_BYTES = 256 << 20  # one member of a sample (an encoded image, a label, a JSON)
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members, skipped as it does
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


def tar_members(stream, url: str) -> Iterator[dict]:
    """The regular members of the uncompressed tar read from ``stream`` (its location
    ``url``), in order, as ``{"fname", "data", "__url__"}`` (webdataset's metadata members
    skipped). A compressed tar, or a member above :data:`MAX_MEMBER_BYTES`, is a
    :class:`ShardError` raised before anything is inflated or read into memory; a damaged tar
    a ``tarfile.ReadError`` (:mod:`tar_headers`)."""
    head = stream.read(512)
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        raise ShardError(
            f"{url}: a {kind}-compressed tar; shards are read as uncompressed tars only "
            "(decompress it first)"
        )
    for name, data in regular_members(stream.read, head, url, MAX_MEMBER_BYTES, _META):
        yield {"fname": name, "data": data, "__url__": url}


def _expand(sources: Iterable[dict]) -> Iterator[dict]:
    """Every tar's members, each tar followed by webdataset's end-of-shard marker ``{}``."""
    for source in sources:
        yield from tar_members(source["stream"], source["url"])
        yield {}


def _open_streams(sources: Iterable[dict]) -> Iterator[dict]:
    for source in sources:
        # closed when the expander asks for the next tar, i.e. once this one is read
        with storage.open_file(source["url"], "rb") as stream:
            yield {**source, "stream": stream}


def stream_samples(stream, url: str) -> Iterator[dict]:
    """Samples of the one tar being read from ``stream`` (its location ``url``)."""
    return group_by_keys(_expand([{"url": url, "stream": stream}]))


def tar_samples(urls: list[str], *splitters) -> wds.DataPipeline:
    """Samples (dicts keyed by extension, with ``__key__`` and ``__url__``) of the tars at
    ``urls``, in order, after the given shard-list stages (e.g. ``wds.split_by_worker``)."""
    return wds.DataPipeline(
        wds.SimpleShardList(urls), *splitters, _open_streams, _expand, group_by_keys
    )
