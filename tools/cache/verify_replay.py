"""``kdcache verify --replay``: rebuild sampled views through the trainer's loader and compare
them with the teacher job's inputs, reporting the largest pixel difference.

The job's side is what the teacher pass feeds the teacher: the plan's params recomputed,
rendered by ``pipeline.teacher_targets.teacher_inputs`` at the teacher's resolution and
normalised with its mean and std. The trainer's side is ``trainer.loader.TrainViews`` over the
cache (stored params, shard buffer, mixing partners) at the same resolution, normalised the
same way. On one machine and library versions the two are bitwise equal.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, read_shard_images, teacher_inputs
from kdcache.pipeline.views import ViewRenderer, normalize
from kdcache.trainer.data import CachedTargets, TrainViews


@dataclass
class ReplayReport:
    """Views rebuilt and the largest absolute difference (normalised pixel units)."""

    views_compared: int = 0
    largest_pixel_diff: float = 0.0
    problems: list[str] = field(default_factory=list)


def replay_check(
    store: CacheStore, manifest: Manifest, *, samples: int, seed: int = 0, tolerance: float = 0.0
) -> ReplayReport:
    """Compare ``samples`` random (row, view) pairs per teacher preprocessing (one shard pass
    of the trainer's loader per sampled shard and view)."""
    report = ReplayReport()
    rng = np.random.default_rng(seed)
    shards = manifest.shards_of(store.attrs["splits"])
    renderer = ViewRenderer(store.plan)
    specs = {}  # one pass per distinct preprocessing (resolution, mean, std)
    for name in store.teacher_names:
        identity = store.teacher_identity(name)
        p = identity["preprocessing"]
        spec = ModelSpec(identity["arch"], identity["num_classes"], p["in_chans"],
                         p["resolution"], p["mean"], p["std"])  # fmt: skip
        specs.setdefault((spec.resolution, tuple(spec.mean), tuple(spec.std)), (name, spec))
    for (resolution, mean, std), (teacher, spec) in sorted(specs.items()):
        source = CachedTargets(store.location, manifest, teachers=[teacher])
        loader = TrainViews(manifest, source, resolution=resolution)
        pairs = [(s, v) for s in shards for v in range(store.plan.views)]
        rows = rng.integers(0, [pairs[i][0].num_rows for i in range(len(pairs))], len(pairs))
        picks = rng.choice(len(pairs), size=min(samples, len(pairs)), replace=False)
        picked: dict[tuple[int, int], list[int]] = {}
        for pick in picks:  # spread over (shard, view) pairs, one row each
            shard, view = pairs[pick]
            picked.setdefault((shard.id, view), []).append(int(rows[pick]))
        for (shard_id, view), positions in sorted(picked.items()):
            shard = manifest.shards[shard_id]
            images = read_shard_images(manifest, shard)
            params = store.plan.shard_params(manifest, shard, views=[view])[:, 0]
            job = teacher_inputs(renderer, images, params, positions, spec)
            loader.set_epoch(view)
            start = shard_id * manifest.shard_size
            trained = {s["row"] - start: s["image"] for s in loader.iter_views([shard])}
            replayed = normalize(torch.stack([trained[p] for p in positions]), mean, std)
            diff = (replayed - job).abs().flatten(1).amax(1)
            report.views_compared += len(positions)
            report.largest_pixel_diff = max(report.largest_pixel_diff, float(diff.max()))
            for position, d in zip(positions, diff.tolist(), strict=True):
                if d > tolerance:
                    report.problems.append(
                        f"{shard.file} row {start + position} view {view}: the trainer's view "
                        f"differs from the teacher's input by {d:.4g} (tolerance {tolerance})"
                    )
    return report
