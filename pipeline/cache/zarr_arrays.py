"""Making and opening a cache's Zarr arrays as the format defines them, and what an array's
metadata must be (:func:`expected_metadata`, checked on every open)."""

import functools
import json

import zarr
from zarr.codecs import BloscCodec

from kdcache.pipeline.cache.feature_layout import projection_matrix, slug
from kdcache.pipeline.cache.layout import CODECS, ArraySpec
from kdcache.pipeline.data import storage, urls

FORMAT = "kdcache/2"
FORMATS = ("kdcache/1", FORMAT)  # readable
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)  # format 1


def open_group(location: str, mode: str, storage_options: dict | None) -> zarr.Group:
    """The Zarr group at ``location``; a URL opened with ``storage_options`` (default: the
    current ones)."""
    options = (
        storage.options_for(location)
        if storage_options is None
        else storage.with_defaults(location, storage_options)
    )
    extra = {"storage_options": options} if options and urls.local_path(location) is None else {}
    return zarr.open_group(_zarr_location(location), mode=mode, **extra)


def _zarr_location(location: str) -> str:
    """Local locations as plain paths (zarr's fsspec store cannot create ``file://`` groups)."""
    return urls.local_path(location) or location


def readable(array: zarr.Array, where) -> bool:
    try:
        array[where]
    except Exception:  # codec and store errors
        return False
    return True


def view_runs(views: list[int]) -> list[tuple[int, int]]:
    """(first, last) positions in ``views`` of each run of consecutive view ids."""
    runs, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i] != views[i - 1] + 1:
            runs.append((start, i - 1))
            start = i
    return runs


@functools.lru_cache(maxsize=256)
def expected_metadata(spec: ArraySpec, shard_size: int, view_block: int | None, fmt: str) -> dict:
    """The ``data_type``, ``chunk_grid`` and ``codecs`` an array of ``spec`` has in format
    ``fmt`` (from a reference array made in memory as :meth:`CacheStore.create` makes it)."""
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    if fmt == FORMAT:
        create_spec(group, spec, (shard_size, 1, shard_size), view_block, view_block)
    else:
        create_format1(group, spec.name, spec.shape(shard_size, 1, 1), spec.chunks(shard_size),
                spec.dtype, spec.fill)  # fmt: skip
    found = group[spec.name].metadata.to_dict()
    return {key: plain_metadata(found[key]) for key in ("codecs", "data_type", "chunk_grid")}


def plain_metadata(value):
    """Metadata as plain JSON values (tuples as lists), for comparing."""
    return json.loads(json.dumps(value, default=str))


def create_spec(group: zarr.Group, spec: ArraySpec, sizes, views: int, view_block: int) -> None:
    """A format-2 array: ``sizes`` (rows, shards, shard size), sharded per :mod:`layout`."""
    rows, shards, shard_size = sizes
    group.create_array(
        spec.name,
        shape=spec.shape(rows, shards, views),
        chunks=spec.chunks(shard_size),
        shards=spec.storage_shards(shard_size, view_block),
        dtype=spec.dtype,
        fill_value=spec.fill,
        compressors=CODECS,
    )


def write_projections(group: zarr.Group, targets: list[dict]) -> None:
    """Each projected target's matrix at ``projections/<slug>`` (:mod:`feature_layout`)."""
    for target in targets:
        projection = target.get("projection")
        if projection:
            matrix = projection_matrix(projection["seed"], projection["in_dim"], projection["dim"])
            group.require_group("projections").create_array(
                slug(target["name"]), data=matrix, chunks=matrix.shape
            )


def create_format1(group: zarr.Group, name: str, shape, chunks, dtype: str, fill) -> None:
    group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=_COMPRESSORS
    )
