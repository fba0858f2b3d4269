"""Where a training run's views and teacher targets come from, one shard block at a time.

With a cache, a shard's stored params and targets are read in one go (one Zarr read per array
per shard); without one, the params come from the plan and there are no targets.
"""

from dataclasses import dataclass, replace

import numpy as np

from pipeline.manifest import Manifest, ShardInfo
from pipeline.plan import ViewPlan
from pipeline.store import CacheMismatch, CacheStore, ShardTargets


@dataclass
class ShardBlock:
    """A shard's view params (n, v, P) and, per teacher name, its cached targets."""

    params: np.ndarray
    targets: dict[str, ShardTargets]


class PlannedViews:
    """Views straight from the plan, no teacher targets (``--kd none`` without a cache)."""

    def __init__(self, plan: ViewPlan, manifest: Manifest):
        self.plan = plan
        self.manifest = manifest
        self.topk = 0

    def block(self, shard: ShardInfo) -> ShardBlock:
        return ShardBlock(self.plan.shard_params(self.manifest, shard), {})


class CachedTargets:
    """A teacher's cached targets, checked against the manifest, plan and split on open."""

    def __init__(
        self,
        location: str,
        manifest: Manifest,
        *,
        teacher: str | None = None,
        plan: dict | None = None,
        split: str = "train",
    ):
        """``plan`` holds the plan fields the run asked for; each must equal the cache's, but
        ``views`` may be fewer than the cache holds (the first ones are used)."""
        self.store = CacheStore.open(location)
        self.plan = replace(self.store.plan, **(plan or {}))
        self.store.check_matches(manifest, plan=self.plan)
        self.manifest = manifest
        names = self.store.teacher_names
        if teacher is None:
            if len(names) != 1:
                raise CacheMismatch(
                    f"{location}: holds teachers {names}; pick one with --teacher-name"
                )
            teacher = names[0]
        self.teacher = teacher
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
        self.topk = self.store.topk

    def block(self, shard: ShardInfo) -> ShardBlock:
        targets = self.store.read_shard(self.teacher, shard, views=self.plan.views)
        return ShardBlock(targets.params, {self.teacher: targets})
