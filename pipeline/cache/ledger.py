"""A cache's ledger: per teacher, (S, V) arrays with one row per data shard — ``shard_done``
(1 once a (shard, view) region is written and checksummed), ``shard_checksum`` (its
``region_checksum``) and, for q8/q6 targets, ``quant_kl`` — and the region checks made
against it.

A read-only store reads each ledger array whole, once per process, and keeps it (one request
per storage object, however many shards are asked about); a forked DataLoader worker inherits
what its parent read. A writer reads fresh, since its ledger changes as it writes.
"""

from collections.abc import Callable

import numpy as np
import zarr

from kdcache.errors import CacheCorrupt
from kdcache.pipeline.cache.integrity import region_problem
from kdcache.pipeline.cache.quantize import QUANTISED
from kdcache.pipeline.cache.target_block import ShardTargets, region_checksum
from kdcache.pipeline.cache.zarr_arrays import readable, view_runs
from kdcache.pipeline.data import ShardInfo

BLOCK = 1024  # shard rows per read of a whole ledger array


def _whole(array: zarr.Array) -> np.ndarray:
    """A ledger array read :data:`BLOCK` shard rows at a time: one read of all its storage
    objects (one per data shard) made zarr hold work for every one of them at once (+14 MiB
    at 14,200 shards, kept by the allocator); by blocks that is bounded."""
    parts = [array[start : start + BLOCK] for start in range(0, array.shape[0], BLOCK)]
    if len(parts) == 1:
        return parts[0]  # read once, not again as a whole
    return np.concatenate(parts) if parts else array[:]


class Ledger:
    """The ledger of the cache at ``location``; ``array(teacher, name)`` opens its arrays and
    ``read_only()`` says whether whole reads may be kept."""

    def __init__(
        self,
        location: str,
        array: Callable[[str, str], zarr.Array],
        read_only: Callable[[], bool],
        target_dtype: str,
    ):
        self.location, self._array, self._read_only = location, array, read_only
        self.target_dtype = target_dtype
        self._kept: dict[tuple[str, str], np.ndarray] = {}

    def read(self, teacher: str, name: str, shard_id: int | None = None) -> np.ndarray:
        """A ledger array, whole or one shard's row (from the whole array when kept)."""
        if not self._read_only():
            return self._fetch(teacher, name, shard_id)
        key = (teacher, name)
        if key not in self._kept:
            self._kept[key] = self._fetch(teacher, name, None)
        whole = self._kept[key]
        return whole if shard_id is None else whole[shard_id]

    def _fetch(self, teacher: str, name: str, shard_id: int | None) -> np.ndarray:
        """Read from the store; an object failing its crc32c is a :class:`CacheCorrupt` naming
        teacher and shard."""
        array = self._array(teacher, name)
        try:
            return _whole(array) if shard_id is None else array[shard_id]
        except Exception as error:  # codec and store errors: a damaged object
            shards = range(array.shape[0]) if shard_id is None else [shard_id]
            bad = next((s for s in shards if not readable(array, s)), shard_id)
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard id {bad}, views "
                f"0..{array.shape[1] - 1}: its {name} ledger cannot be read "
                f"({type(error).__name__}: {error})"
            ) from error

    def views_done(self, teacher: str) -> np.ndarray:
        """Boolean (S, array views): view v of shard s written and checksummed."""
        return self.read(teacher, "shard_done").astype(bool)

    def pending_views(self, teacher: str, shard_id: int, views: int) -> list[int]:
        """Views among ``0..views-1`` of a shard not yet done."""
        done = self.read(teacher, "shard_done", shard_id)[:views]
        return [v for v in range(views) if not done[v]]

    def checksums(self, teacher: str, shard_id: int | None = None) -> np.ndarray:
        """(S, array views) checksums, or one shard's row; 0 where not written."""
        return self.read(teacher, "shard_checksum", shard_id)

    def quantisation_kl(self, teacher: str) -> np.ndarray | None:
        """(S, array views) mean KL(fp32 targets || stored q8/q6 targets) per region, NaN
        where not written; None for fp16 targets."""
        if self.target_dtype not in QUANTISED:
            return None
        return self.read(teacher, "quant_kl")

    def record(
        self, teacher: str, shard_id: int, views: list[int], checksums: list[int], kl=None
    ) -> None:
        """Write the checksums (and mean KL per view, q8/q6) of ``views`` of a shard, then
        their done flags: one write per run of consecutive views."""
        for first, last in view_runs(views):
            where = (shard_id, slice(views[first], views[last] + 1))
            self._array(teacher, "shard_checksum")[where] = np.array(
                checksums[first : last + 1], np.uint64
            )
            if kl is not None:
                self._array(teacher, "quant_kl")[where] = kl[first : last + 1].astype(np.float32)
        for first, last in view_runs(views):
            self._array(teacher, "shard_done")[shard_id, views[first] : views[last] + 1] = 1

    def region_problems(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> dict[int, str]:
        """Per view of ``views`` (cache view ids; ``block``'s view axis starts at view
        ``first``), what is wrong with that region: checksum mismatch or non-finite targets."""
        stored = self.checksums(teacher, shard.id)
        found = {}
        for view in views:
            problem = region_problem(block.view(view - first), stored[view], region_checksum)
            if problem is not None:
                found[view] = problem
        return found

    def check_regions(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> None:
        """Raise :class:`CacheCorrupt` for the first bad region among ``views`` (see
        :meth:`region_problems`), naming teacher, shard and view."""
        problems = self.region_problems(teacher, shard, block, views, first)
        if problems:
            view, problem = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} more views)" if len(problems) > 1 else ""
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), view "
                f"{view}: {problem}{more}; refusing to use it (kdcache inspect/verify list every "
                "bad region; re-teach the shard into a fresh cache)"
            )
