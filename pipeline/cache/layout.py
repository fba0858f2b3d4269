"""The arrays of a ``kdcache/2`` cache, their chunks and storage shards, and what they cost.

One storage object per (data shard, block of views) per array: a view block is the views the
cache was created with (``attrs.layout.view_block``); views added later go to new blocks, so
no existing object is rewritten. Inside an object every inner chunk is one data shard long
and one view wide, stored raw (no compressor) with a crc32c, so a reader fetches the byte
range of just the views it uses and every read is checked. Raw chunks make the size exact:
:func:`plan_size` computes the objects and bytes of a plan from these specs alone.
"""

import math
from dataclasses import dataclass

import numpy as np
from zarr.codecs import Crc32cCodec

from kdcache.pipeline.cache.q6_layout import packed_size
from kdcache.pipeline.cache.quantize import QUANTISED, packed_bytes

CHUNK_CRC = 4  # crc32c after every inner chunk
INDEX_ENTRY = 16  # (offset, length) uint64 per inner chunk in a storage object's index
INDEX_CRC = 4
CODECS = (Crc32cCodec(),)


@dataclass(frozen=True)
class ArraySpec:
    """One array: per row its trailing shape; ``ledger`` arrays have one row per data shard."""

    name: str
    dtype: str
    fill: float | int
    tail: tuple[int, ...] = ()
    ledger: bool = False

    def shape(self, rows: int, shards: int, views: int) -> tuple[int, ...]:
        return (shards if self.ledger else rows, views, *self.tail)

    def chunks(self, shard_size: int) -> tuple[int, ...]:
        return (1 if self.ledger else shard_size, 1, *self.tail)

    def storage_shards(self, shard_size: int, view_block: int) -> tuple[int, ...]:
        return (1 if self.ledger else shard_size, view_block, *self.tail)

    def chunk_bytes(self, shard_size: int) -> int:
        """Stored bytes of one inner chunk (raw values and their crc32c)."""
        values = math.prod(self.chunks(shard_size)) * np.dtype(self.dtype).itemsize
        return values + CHUNK_CRC


def params_spec(param_count: int) -> ArraySpec:
    return ArraySpec("params", "float32", np.nan, (param_count,))


def teacher_specs(
    target_dtype: str, topk: int, num_classes: int, samples: int, classes_dtype: str
) -> list[ArraySpec]:
    """A teacher's arrays in the ``fp16``, ``q8`` (:mod:`quantize`) or ``q6``
    (:mod:`q6_layout`) layout, then its ledger."""
    if target_dtype == "q6":
        specs = [ArraySpec("topk_packed", "uint8", 0, (packed_size(topk, num_classes),))]
    elif target_dtype == "q8":
        specs = [
            ArraySpec("topk_logits", "uint8", 0, (topk,)),
            ArraySpec("logit_scale", "float16", np.nan),
            ArraySpec("topk_index", "uint8", 0, (packed_bytes(topk, num_classes),)),
            ArraySpec("logsumexp", "float16", np.nan),
        ]
    else:
        specs = [
            ArraySpec("topk_logits", "float16", np.nan, (topk,)),
            ArraySpec("topk_index", classes_dtype, -1, (topk,)),
            ArraySpec("logsumexp", "float32", np.nan),
        ]
    if samples:
        specs.append(ArraySpec("sample_index", classes_dtype, -1, (samples,)))
    specs.append(ArraySpec("shard_done", "uint8", 0, ledger=True))
    specs.append(ArraySpec("shard_checksum", "uint64", 0, ledger=True))
    if target_dtype in QUANTISED:
        specs.append(ArraySpec("quant_kl", "float32", np.nan, ledger=True))
    return specs


def object_bytes(spec: ArraySpec, shard_size: int, view_block: int, written: int) -> int:
    """Bytes of one storage object holding ``written`` of its ``view_block`` inner chunks."""
    index = view_block * INDEX_ENTRY + INDEX_CRC
    return written * spec.chunk_bytes(shard_size) + index


def plan_size(specs: list[ArraySpec], shards: int, shard_size: int, views: int) -> dict:
    """Per array, the storage objects and bytes of ``shards`` data shards of ``views`` views
    in a cache created with those views (one view block)."""
    return {
        spec.name: {
            "objects": shards,
            "bytes": shards * object_bytes(spec, shard_size, views, views),
            "bytes_per_view": object_bytes(spec, shard_size, views, views) / (shard_size * views),
        }
        for spec in specs
    }
