"""Reading and writing a cache's shard blocks: one write per run of consecutive views per
array, then the ledger; reads decoded (:mod:`codecs`) and, where asked, checked region by
region against the ledger (:mod:`ledger`). Mixed into :class:`~store.CacheStore`, whose
arrays, codec and ledger it uses."""

import numpy as np

from kdcache.errors import CacheCorrupt, TargetsNotFinite
from kdcache.pipeline.cache.integrity import non_finite_counts
from kdcache.pipeline.cache.quantize import QUANTISED, topk_kl
from kdcache.pipeline.cache.target_block import ShardTargets, region_checksum
from kdcache.pipeline.cache.zarr_arrays import FORMAT, readable, view_runs
from kdcache.pipeline.data import ShardInfo


class BlockIO:
    """Block reads and writes of a :class:`~store.CacheStore`."""

    def _rows(self, shard: ShardInfo) -> slice:
        start = shard.id * self.shard_size
        return slice(start, start + shard.num_rows)

    def _encode(self, teacher: str, block: ShardTargets) -> dict[str, np.ndarray]:
        return self.codec.encode(block, self.feature_targets(teacher))

    def _decode(self, teacher: str, params: np.ndarray, stored: dict) -> ShardTargets:
        return self.codec.decode(params, stored, self.feature_targets(teacher))

    def as_stored(self, teacher: str, block: ShardTargets) -> ShardTargets:
        """What reading ``block`` back from this cache gives (q8: quantised and decoded)."""
        return self._decode(teacher, block.params, self._encode(teacher, block))

    def _stored_names(self, teacher: str | None = None) -> tuple[str, ...]:
        """The stored per-view arrays of a teacher (no teacher: those every teacher has)."""
        if self.format == FORMAT:
            return tuple(s.name for s in self._specs(teacher) if not s.ledger)
        return self._arrays()

    def write_shard(
        self, teacher: str, shard: ShardInfo, views: list[int], block: ShardTargets
    ) -> list[int]:
        """Write ``views`` of a shard (block axis 1 in that order), then checksums, then done flags.

        Each run of consecutive views is one write per array (one rewrite of its storage
        object in format 2). An earlier partial write of these regions (a crash) is
        overwritten, never trusted.
        """
        rows = self._rows(shard)
        self._refuse_non_finite(teacher, shard, views, block, "")
        stored = self._encode(teacher, block)
        decoded = self._decode(teacher, block.params, stored)
        self._refuse_non_finite(
            teacher, shard, views, decoded, f" once stored as {self.target_dtype}"
        )
        for first, last in view_runs(views):  # positions in the block
            where = (rows, slice(views[first], views[last] + 1))
            self._array(None, "params")[where] = block.params[:, first : last + 1]
            for name, values in stored.items():
                self._array(teacher, name)[where] = values[:, first : last + 1]
        checksums = [region_checksum(decoded.view(index)) for index in range(len(views))]
        kl = None
        if self.target_dtype in QUANTISED:
            tail = self.topk < self.attrs["dataset"]["num_classes"]
            kl = topk_kl(block.topk_logits, block.logsumexp, decoded.topk_logits,
                         decoded.logsumexp, tail).mean(0)  # fmt: skip
        self.ledger.record(teacher, shard.id, views, checksums, kl)
        return checksums

    def _refuse_non_finite(
        self, teacher: str, shard: ShardInfo, views: list[int], block: ShardTargets, how: str
    ) -> None:
        """Raise :class:`TargetsNotFinite` for the first view of ``block`` holding NaN or inf
        (checked before encoding, and on what a reader would decode): nothing is written."""
        counts = non_finite_counts(block)
        if counts.any():
            first = int(np.flatnonzero(counts)[0])
            raise TargetsNotFinite(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), view "
                f"{views[first]}: {int(counts[first])} target values are NaN or inf{how} "
                "(the teacher's logits overflow or diverge); nothing written for this shard"
            )

    def read_shard(self, teacher: str, shard: ShardInfo, views: int | None = None) -> ShardTargets:
        """Views ``0..views-1`` (default: the plan's) of a shard's block: one read per array."""
        rows, columns = self._rows(shard), slice(0, self.plan.views if views is None else views)
        return self._read(teacher, shard, (rows, columns))

    def _read(self, teacher: str, shard: ShardInfo, where: tuple[slice, slice]) -> ShardTargets:
        """The block at ``where`` (rows, views); a chunk that cannot be decoded or fails its
        crc32c is a :class:`CacheCorrupt` naming teacher, shard and the first bad view."""
        try:
            return self._decode(
                teacher,
                self._array(None, "params")[where],
                {name: self._array(teacher, name)[where] for name in self._stored_names(teacher)},
            )
        except Exception as error:  # codec and store errors: a damaged chunk
            views = range(where[1].start, where[1].stop)
            bad = [v for v in views if not self._view_readable(teacher, where[0], v)]
            named = f"view {bad[0]}" if bad else f"views {views.start}..{views.stop - 1}"
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), "
                f"{named}: a chunk cannot be read ({type(error).__name__}: {error})"
            ) from error

    def _view_readable(self, teacher: str, rows: slice, view: int) -> bool:
        names = [(None, "params"), *((teacher, n) for n in self._stored_names(teacher))]
        arrays = [self._array(*name) for name in names]
        return all(readable(a, (rows, slice(view, view + 1))) for a in arrays)

    def read_views(self, teacher: str, shard: ShardInfo, views: list[int]) -> ShardTargets:
        """Only ``views`` of a shard (block axis 1 in that order), each view one read per
        array (in format 2 one inner chunk each), each checked as :meth:`read_verified`."""
        parts = [self.read_region(teacher, shard, view) for view in views]
        arrays = [part.arrays() for part in parts]
        return ShardTargets.from_arrays(
            {k: np.concatenate([a[k] for a in arrays], 1) for k in arrays[0]}
        )

    def region_problems(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> dict[int, str]:
        """Per view, what is wrong with its region (:meth:`Ledger.region_problems`)."""
        return self.ledger.region_problems(teacher, shard, block, views, first)

    def read_verified(
        self, teacher: str, shard: ShardInfo, views: int | None = None
    ) -> ShardTargets:
        """:meth:`read_shard`, each view's region checked against its stored checksum and for
        finite targets; raises :class:`CacheCorrupt` naming teacher, shard and view."""
        block = self.read_shard(teacher, shard, views)
        views = list(range(block.params.shape[1]))
        self.check_regions(teacher, shard, block, views)
        return block

    def read_region(self, teacher: str, shard: ShardInfo, view: int) -> ShardTargets:
        """One view of a shard (a view axis of length 1), checked as :meth:`read_verified`."""
        block = self._read(teacher, shard, (self._rows(shard), slice(view, view + 1)))
        self.check_regions(teacher, shard, block, [view], view)
        return block

    def check_regions(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> None:
        """Raise :class:`CacheCorrupt` for the first bad region (:meth:`Ledger.check_regions`)."""
        self.ledger.check_regions(teacher, shard, block, views, first)
