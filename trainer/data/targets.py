"""Where a training run's views and teacher targets come from, one shard block at a time.

With a cache, a shard's stored params and targets are read for the views its samples use this
epoch only (one Zarr read per array and view: in format 2 one inner chunk, checked by its
crc32c) and every view's region is checked against its stored checksum, and for finite
targets, before a sample of it is yielded; without one, the params come from the plan and
there are no targets.
"""

from dataclasses import dataclass, replace

import numpy as np

from kdcache.pipeline.cache import CacheMismatch, CacheStore, ShardTargets
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.views import ViewPlan


@dataclass
class ShardBlock:
    """A shard's view params (n, v, P) and, per teacher name, its cached targets; ``views``
    are the view ids along axis 1 (None: all, in order)."""

    params: np.ndarray
    targets: dict[str, ShardTargets]
    views: list[int] | None = None

    def column(self, view: int) -> int:
        """Where view ``view`` lies along axis 1."""
        return view if self.views is None else self.views.index(view)


class PlannedViews:
    """Views straight from the plan, no teacher targets (``--kd none`` without a cache)."""

    def __init__(self, plan: ViewPlan, manifest: Manifest):
        self.plan = plan
        self.manifest = manifest
        self.topk = 0
        self.teachers: list[str] = []

    def block(self, shard: ShardInfo, views: list[int] | None = None) -> ShardBlock:
        """A shard's params for ``views`` (default: all)."""
        if views is None:
            return ShardBlock(self.plan.shard_params(self.manifest, shard), {})
        return ShardBlock(self.plan.shard_params(self.manifest, shard, views=views), {}, views)


class CachedTargets:
    """One or more teachers' cached targets, checked against the manifest, plan and split."""

    def __init__(
        self,
        location: str,
        manifest: Manifest,
        *,
        teachers: list[str] | None = None,
        plan: dict | None = None,
        split: str = "train",
        topk: int | None = None,
        sampled: bool = False,
        samples: int | None = None,
    ):
        """``plan`` holds the plan fields the run asked for; each must equal the cache's, but
        ``views`` may be fewer than the cache holds (the first ones are used). ``topk`` keeps
        the first K of the cached top-k (what a top-K cache holds; default all). ``sampled``
        reads the drawn class ids too (the first ``samples`` of each view; default all)."""
        self.store = CacheStore.open(location)
        self.plan = replace(self.store.plan, **(plan or {}))
        self.store.check_matches(manifest, plan=self.plan)
        self.manifest = manifest
        names = self.store.teacher_names
        if not teachers:
            if len(names) != 1:
                raise CacheMismatch(
                    f"{location}: holds teachers {names}; pick one or several (an ensemble) "
                    "with teachers",
                    field="teachers",
                )
            teachers = names
        self.teachers = list(teachers)
        for teacher in self.teachers:
            self._check_teacher(location, teacher, manifest, split)
        if topk is not None and not 1 <= topk <= self.store.topk:
            raise CacheMismatch(f"{location}: holds top-{self.store.topk}; asked for top-{topk}")
        self.topk = topk or self.store.topk
        self.samples = self._samples(location, samples) if sampled else 0
        self.feature_targets = self.store.feature_targets(self.teachers[0])

    def _check_teacher(self, location: str, teacher: str, manifest: Manifest, split: str) -> None:
        identity = self.store.teacher_identity(teacher)
        if identity["num_classes"] != manifest.num_classes:
            raise CacheMismatch(
                f"{location}: teacher {teacher} has {identity['num_classes']} classes, "
                f"the manifest {manifest.num_classes}"
            )
        done = self.store.shard_done(teacher)
        missing = [s.file for s in manifest.shards_of(split) if not done[s.id]]
        if missing:
            raise CacheMismatch(
                f"{location}: teacher {teacher} has not finished {len(missing)} {split} shards "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); rerun kdcache teach"
            )
        self.store.shard_checksums(teacher)  # read once here: loader workers inherit it

    def _samples(self, location: str, wanted: int | None) -> int:
        held = self.store.samples
        if not held:
            raise CacheMismatch(
                f"{location}: has no sampled targets (attrs.samples is 0 or absent); "
                "teach the cache with samples D",
                field="targets",
            )
        if wanted is not None and not 1 <= wanted <= held:
            raise CacheMismatch(
                f"{location}: holds {held} sampled ids per view; asked for {wanted}"
            )
        return wanted or held

    def block(self, shard: ShardInfo, views: list[int] | None = None) -> ShardBlock:
        """A shard's params and targets for ``views`` (default: all the plan's), checked."""
        targets = {}
        for name in self.teachers:
            if views is None:
                block = self.store.read_verified(name, shard, views=self.plan.views)
            else:
                block = self.store.read_views(name, shard, views)
            keep = block.sample_index[..., : self.samples] if self.samples else None
            targets[name] = replace(
                block,
                topk_logits=block.topk_logits[..., : self.topk],
                topk_index=block.topk_index[..., : self.topk],
                sample_index=keep,
            )
        return ShardBlock(targets[self.teachers[0]].params, targets, views)
