"""``kdcache verify --replay``: rebuild sampled views through the trainer's loader and compare
them with the teacher job's inputs, reporting the largest pixel difference.

The job's side is what the teacher pass feeds the teacher: the plan's params recomputed,
rendered by ``pipeline.teacher_targets.teacher_inputs`` at the teacher's resolution and
normalised with its mean and std. The trainer's side is ``trainer.data.TrainViews`` over the
cache's stored params (shard buffer, mixing partners) at the same resolution, normalised the
same way; only (shard, view) regions marked done are sampled, so unfinished caches work too.
On one machine and library versions the two are bitwise equal.
"""

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.teach import ModelSpec, read_shard_images, teacher_inputs
from kdcache.pipeline.views import ViewRenderer, normalize
from kdcache.trainer.data import PlannedViews, TrainViews


@dataclass
class ReplayReport:
    """Views rebuilt and the largest absolute difference (normalised pixel units)."""

    views_compared: int = 0
    largest_pixel_diff: float = 0.0
    problems: list[str] = field(default_factory=list)


def sample_done_rows(
    done: np.ndarray, shards: list[ShardInfo], samples: int, rng: np.random.Generator
) -> dict[tuple[int, int], np.ndarray]:
    """``samples`` distinct (row, view) pairs (all if fewer) drawn uniformly from the regions
    ``done`` (S, V) marks done among ``shards``: sorted positions per (shard id, view)."""
    ids = np.array([s.id for s in shards], dtype=np.int64)
    rows = np.array([s.num_rows for s in shards], dtype=np.int64)
    where, views = np.nonzero(done[ids]) if len(ids) else (np.zeros(0, int), np.zeros(0, int))
    sizes = rows[where]  # regions in shard order, then view order
    total = int(sizes.sum())
    picks = np.sort(rng.choice(total, size=min(samples, total), replace=False)) if total else []
    ends = np.cumsum(sizes)
    region = np.searchsorted(ends, picks, side="right")
    positions = np.asarray(picks, np.int64) - (ends[region] - sizes[region])
    picked: dict[tuple[int, int], list[int]] = {}
    for r, position in zip(region.tolist(), positions.tolist(), strict=True):
        picked.setdefault((int(ids[where[r]]), int(views[r])), []).append(position)
    return {key: np.array(positions) for key, positions in picked.items()}


class _StoredViews(PlannedViews):
    """The trainer's view source over a cache's stored params, unfinished caches included
    (no targets: replay compares images). ``CachedTargets`` reads the same params, but
    refuses a cache with unfinished shards."""

    def __init__(self, store: CacheStore, manifest: Manifest, teacher: str):
        super().__init__(store.plan, manifest)
        self.store, self.teacher = store, teacher

    def block(self, shard: ShardInfo, views: list[int] | None = None):
        planned = super().block(shard, views)  # the trainer's, its params replaced by the stored
        if views is None:
            return replace(planned, params=self.store.read_shard(self.teacher, shard).params)
        stored = self.store.read_views(self.teacher, shard, views)
        return replace(planned, params=stored.params)


def _preprocessings(store: CacheStore) -> list[tuple[str, ModelSpec]]:
    """One teacher per distinct preprocessing (resolution, mean, std), with its spec."""
    specs = {}
    for name in store.teacher_names:
        identity = store.teacher_identity(name)
        p = identity["preprocessing"]
        spec = ModelSpec(identity["arch"], identity["num_classes"], p["in_chans"],
                         p["resolution"], p["mean"], p["std"])  # fmt: skip
        specs.setdefault((spec.resolution, tuple(spec.mean), tuple(spec.std)), (name, spec))
    return [specs[key] for key in sorted(specs)]


def replay_check(
    store: CacheStore, manifest: Manifest, *, samples: int, seed: int = 0, tolerance: float = 0.0
) -> ReplayReport:
    """Compare ``samples`` random (row, view) pairs per teacher preprocessing, drawn from the
    views that teacher has done (so unfinished caches too): one pass of the trainer's loader
    per sampled shard and view."""
    report = ReplayReport()
    rng = np.random.default_rng(seed)
    shards = manifest.shards_of(store.attrs["splits"])
    renderer = ViewRenderer(store.plan)
    for teacher, spec in _preprocessings(store):
        source = _StoredViews(store, manifest, teacher)
        loader = TrainViews(manifest, source, resolution=spec.resolution)
        done = store.views_done(teacher)[:, : store.plan.views]
        for (shard_id, view), positions in sorted(
            sample_done_rows(done, shards, samples, rng).items()
        ):
            shard = manifest.shards[shard_id]
            images = read_shard_images(manifest, shard, renderer=store.plan.renderer)
            params = store.plan.shard_params(manifest, shard, views=[view])[:, 0]
            job = teacher_inputs(renderer, images, params, positions, spec)
            loader.set_epoch(view)
            start = shard_id * manifest.shard_size
            trained = {s["row"] - start: s["image"] for s in loader.iter_views([shard])}
            replayed = normalize(torch.stack([trained[p] for p in positions]), spec.mean, spec.std)
            _record(report, shard, start, view, positions, (replayed - job).abs(), tolerance)
    return report


def _record(
    report: ReplayReport,
    shard: ShardInfo,
    start: int,
    view: int,
    positions: np.ndarray,
    diff: torch.Tensor,
    tolerance: float,
) -> None:
    """Count the compared views and name each differing by more than ``tolerance``."""
    largest = diff.flatten(1).amax(1)
    report.views_compared += len(positions)
    report.largest_pixel_diff = max(report.largest_pixel_diff, float(largest.max()))
    for position, d in zip(positions.tolist(), largest.tolist(), strict=True):
        if d > tolerance:
            report.problems.append(
                f"{shard.file} row {start + position} view {view}: the trainer's view "
                f"differs from the teacher's input by {d:.4g} (tolerance {tolerance})"
            )
