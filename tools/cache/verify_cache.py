"""``kdcache verify``: recompute a sample of cached views with the teacher, and check every
done region's checksum; any mismatch is reported with its shard and row."""

import argparse
import json
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from kdcache.pipeline.cache import CacheStore, ShardTargets, region_checksum, sample_uniforms
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.teach import Teacher, load_teacher, read_shard_images, teacher_targets
from kdcache.tools.cache.cache_manifest import manifest_for
from kdcache.tools.cache.verify_replay import ReplayReport, replay_check
from kdcache.tools.cli.arg_types import key_value

LOGIT_TOLERANCE = 2e-2  # fp16 storage plus batch-dependent float sums


@dataclass
class VerifyReport:
    """What verify found; ``ok`` is False on any mismatch."""

    cache: str
    regions_checked: int = 0
    views_recomputed: int = 0
    largest_logit_diff: float = 0.0
    replay: ReplayReport | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        status = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return [
            f"verify {self.cache}: {status}",
            f"verify: {self.regions_checked} (shard, view) checksums checked, "
            f"{self.views_recomputed} views recomputed, largest logit difference "
            f"{self.largest_logit_diff:.4g} (tolerance {LOGIT_TOLERANCE})",
            *(
                [
                    f"verify: replay: {self.replay.views_compared} views rebuilt by the trainer's "
                    f"loader, largest pixel difference from the teacher's input "
                    f"{self.replay.largest_pixel_diff:.4g}"
                ]
                if self.replay
                else []
            ),
            *[f"verify: {problem}" for problem in self.problems[:50]],
        ]


def _compare(
    report: VerifyReport,
    shard: ShardInfo,
    rows: np.ndarray,
    view: int,
    stored: ShardTargets,
    fresh: ShardTargets,
    teacher: str,
) -> None:
    """Record rows whose stored view differs from the recomputed one (stored/fresh: (n, 1, ...))."""
    diff = np.abs(stored.topk_logits.astype(np.float32) - fresh.topk_logits.astype(np.float32))
    diff = np.nan_to_num(diff, nan=np.inf)[:, 0]
    report.largest_logit_diff = max(report.largest_logit_diff, float(diff.max(initial=0)))
    index_bad = (stored.topk_index != fresh.topk_index)[:, 0]
    # a swapped pair of near-equal logits is not a mismatch
    index_bad &= ~(
        np.abs(np.diff(fresh.topk_logits.astype(np.float32), axis=-1)) < LOGIT_TOLERANCE
    ).any(-1)[:, 0, None]
    lse_bad = np.abs(stored.logsumexp - fresh.logsumexp)[:, 0] > LOGIT_TOLERANCE
    params_bad = (stored.params != fresh.params).any(-1)[:, 0]
    bad = (diff > LOGIT_TOLERANCE).any(-1) | index_bad.any(-1) | lse_bad | params_bad
    if fresh.sample_index is not None:  # equal unless a draw lies within rounding of a CDF step
        bad |= (stored.sample_index != fresh.sample_index)[:, 0].any(-1)
    for position in np.flatnonzero(bad):
        report.problems.append(
            f"{shard.file} row {rows[position]} view {view} (teacher {teacher}): stored values "
            f"differ from the teacher's (largest logit difference {diff[position].max():.4g})"
        )


def _recompute(
    teacher: Teacher,
    store: CacheStore,
    manifest: Manifest,
    shard: ShardInfo,
    images: list,
    positions: np.ndarray,
    view: int,
) -> ShardTargets:
    rows = manifest.shard_rows(shard)[positions]
    params = store.plan.shard_params(manifest, shard, views=[view])
    samples = store.samples
    return teacher_targets(
        teacher,
        store.plan,
        images,
        params,
        topk=store.topk,
        positions=positions,
        uniforms=sample_uniforms(store.plan.seed, rows, [view], samples) if samples else None,
    )


def verify_cache(
    location: str,
    data: str | None = None,
    *,
    samples: int = 64,
    seed: int = 0,
    teachers: dict[str, str] | None = None,
    replay: bool = False,
    replay_tolerance: float = 0.0,
) -> VerifyReport:
    """Check every done region's checksum (recomputing any failing region row by row), and
    recompute ``samples`` random (row, view) pairs per teacher; with ``replay``, also rebuild
    ``samples`` views in the trainer's loader and compare them with the teacher's inputs."""
    store = CacheStore.open(location)
    manifest = manifest_for(store, data)
    report = VerifyReport(cache=location)
    if replay:
        report.replay = replay_check(
            store, manifest, samples=samples, seed=seed, tolerance=replay_tolerance
        )
        report.problems += report.replay.problems
    rng = np.random.default_rng(seed)
    shards = manifest.shards_of(store.attrs["splits"])
    for name in store.teacher_names:
        identity = store.teacher_identity(name)
        teacher = load_teacher(
            (teachers or {}).get(name, identity["source"]),
            name=name,
            arch=identity["arch"],
            num_classes=identity["num_classes"],
            in_chans=identity["preprocessing"]["in_chans"],
            resolution=identity["preprocessing"]["resolution"],
        )
        if teacher.weights_sha256 != identity["weights_sha256"]:
            report.problems.append(
                f"teacher {name}: weights at {teacher.source} have sha256 "
                f"{teacher.weights_sha256[:12]}, the cache was made with {identity['weights_sha256'][:12]}"
            )
            continue
        done = store.views_done(name)
        checksums = store.shard_checksums(name)
        done_views = {s.id: [v for v in range(store.plan.views) if done[s.id, v]] for s in shards}
        sampled = [
            (shard.id, view, position)
            for shard in shards
            for view in done_views[shard.id]
            for position in range(shard.num_rows)
        ]
        picks = rng.choice(len(sampled), size=min(samples, len(sampled)), replace=False)
        picked: dict[int, dict[int, list[int]]] = {}
        for pick in picks:
            shard_id, view, position = sampled[pick]
            picked.setdefault(shard_id, {}).setdefault(view, []).append(position)
        for shard in shards:
            if not done_views[shard.id]:
                continue
            block = store.read_shard(name, shard)  # one read per shard for checksums and samples
            rows = manifest.shard_rows(shard)
            images = None
            for view in done_views[shard.id]:
                report.regions_checked += 1
                if region_checksum(block.view(view)) == checksums[shard.id, view]:
                    continue
                report.problems.append(
                    f"{shard.file} view {view} (teacher {name}): checksum mismatch"
                )
                if images is None:
                    images = read_shard_images(manifest, shard)
                everything = np.arange(shard.num_rows)
                fresh = _recompute(teacher, store, manifest, shard, images, everything, view)
                report.views_recomputed += shard.num_rows
                _compare(report, shard, rows, view, block.view(view), fresh, name)
            for view, positions in sorted(picked.get(shard.id, {}).items()):
                positions = np.array(sorted(positions))
                if images is None:
                    images = read_shard_images(manifest, shard)
                stored = block.select(positions, slice(view, view + 1))
                fresh = _recompute(teacher, store, manifest, shard, images, positions, view)
                report.views_recomputed += len(positions)
                _compare(report, shard, rows[positions], view, stored, fresh, name)
    return report


def add_verify_parser(commands) -> None:
    parser = commands.add_parser(
        "verify",
        help="recompute sampled views with the teacher and check every region's checksum",
        description="Check the checksum of every done (shard, view) region against its data "
        "(a failing region is recomputed row by row), and recompute a random sample of "
        "(row, view) with the teacher, reporting the largest logit difference and top-k "
        "mismatches. Exits 1 on any mismatch, naming shard and row.",
    )
    parser.add_argument("cache", help="cache location")
    parser.add_argument(
        "--data", default=None, help="manifest folder (default: the one the cache records)"
    )
    parser.add_argument(
        "--samples", type=int, default=64, help="(row, view) pairs recomputed per teacher"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    parser.add_argument("--teacher", type=partial(key_value, form="NAME=PATH"), action="append", default=[],
                        metavar="NAME=PATH", help="weights of a teacher if moved since teaching")  # fmt: skip
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also rebuild --samples views in the trainer's loader and compare them with the "
        "teacher job's inputs (largest pixel difference; any difference is a problem)",
    )
    parser.add_argument(
        "--replay-tolerance",
        type=float,
        default=0.0,
        help="pixel difference allowed by --replay, e.g. across machines (default: 0, bitwise)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    report = verify_cache(
        args.cache,
        args.data,
        samples=args.samples,
        seed=args.seed,
        teachers=dict(args.teacher),
        replay=args.replay,
        replay_tolerance=args.replay_tolerance,
    )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print("\n".join(report.lines()))
    if not report.ok:
        raise SystemExit(1)
