"""``kdcache verify``: recompute a sample of cached views with the teacher, and check every
done region's checksum; any mismatch is reported with its shard and row."""

import functools
from dataclasses import dataclass, field

import numpy as np

from kdcache.pipeline.cache import CacheStore, ShardTargets, region_checksum, sample_uniforms
from kdcache.pipeline.cache.cache_manifest import manifest_for
from kdcache.pipeline.data import Manifest, ShardInfo, recorded_code, recorded_teacher, storage
from kdcache.pipeline.teach import (
    Teacher,
    load_options,
    load_teacher,
    read_shard_images,
    teacher_targets,
)
from kdcache.pipeline.views import MAX_PIXELS, set_pixel_limit
from kdcache.verify_replay import ReplayReport, replay_check, sample_done_rows

LOGIT_TOLERANCE = 2e-2  # fp16 storage plus batch-dependent float sums
# feature and attention values: largest difference, beyond two fp16 steps of the view's
# largest magnitude, as a share of the view's value range
FEATURE_TOLERANCE = {"fp16": 1e-2, "q8": 2 / 255, "q6": 2 / 255}  # batch sums; two q8 levels
FP16_SLACK = 2**-10  # two fp16 rounding steps, relative


@dataclass
class VerifyReport:
    """What verify found; ``ok`` is False on any mismatch."""

    cache: str
    regions_checked: int = 0
    views_recomputed: int = 0
    largest_logit_diff: float = 0.0
    largest_feature_diff: float | None = None  # share of the view's range; None: no features
    target_dtype: str = "fp16"
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
                    f"verify: feature and attention targets: largest difference "
                    f"{self.largest_feature_diff:.4g} of a view's value range (tolerance "
                    f"{FEATURE_TOLERANCE[self.target_dtype]:.4g}, {self.target_dtype})"
                ]
                if self.largest_feature_diff is not None
                else []
            ),
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
    for name, values in fresh.features.items():
        share = feature_difference(stored.features[name][:, 0], values[:, 0])
        found = float(share.max(initial=0))
        report.largest_feature_diff = max(report.largest_feature_diff or 0.0, found)
        for position in np.flatnonzero(share > FEATURE_TOLERANCE[report.target_dtype]):
            report.problems.append(
                f"{shard.file} row {rows[position]} view {view} (teacher {teacher}): target "
                f"{name} differs from the teacher's by {share[position]:.4g} of its value range"
            )


def feature_difference(stored: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Per row, the largest |stored - fresh| over the row's values, less two fp16 rounding
    steps of its largest magnitude, as a share of the range of its fresh values (NaN, i.e.
    unwritten, counts as infinite)."""
    axes = tuple(range(1, fresh.ndim))
    spread = fresh.max(axis=axes) - fresh.min(axis=axes)
    slack = FP16_SLACK * np.abs(fresh).max(axis=axes)
    diff = np.nan_to_num(np.abs(stored - fresh), nan=np.inf).max(axis=axes)
    return np.maximum(diff - slack, 0) / np.maximum(spread, 1e-6)


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
    fresh = teacher_targets(
        teacher,
        store.plan,
        images,
        params,
        topk=store.topk,
        positions=positions,
        uniforms=sample_uniforms(store.plan.seed, rows, [view], samples) if samples else None,
        features=store.feature_targets(teacher.name),
        projections={
            t["name"]: store.projection(teacher.name, t["name"])
            for t in store.feature_targets(teacher.name)
        },
    )
    # quantised as the cache stores it (q8, q6), to compare like with like
    return store.as_stored(teacher.name, fresh)


def verify_cache(
    location: str,
    data: str | None = None,
    *,
    samples: int = 64,
    seed: int = 0,
    teachers: dict[str, str] | None = None,
    replay: bool = False,
    replay_tolerance: float = 0.0,
    storage_options: dict | None = None,
    allow_code: tuple[str, ...] = (),
    allow_remote_shards: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> VerifyReport:
    """Check every done region's checksum (recomputing any failing region row by row), and
    recompute ``samples`` random (row, view) pairs per teacher; with ``replay``, also rebuild
    ``samples`` views in the trainer's loader and compare them with the teacher's inputs.
    ``storage_options`` (over ``$KDCACHE_STORAGE_OPTIONS``) reach URLs. A teacher factory or
    key map (``module:function``) the cache records is imported only if ``allow_code`` names it.
    Images of more than ``max_pixels`` are refused from their header.
    """
    set_pixel_limit(max_pixels)
    with storage.using(storage_options):
        return _verify(location, data, samples, seed, teachers, replay, replay_tolerance,
                       tuple(allow_code), allow_remote_shards)  # fmt: skip


def _verify(
    location: str,
    data: str | None,
    samples: int,
    seed: int,
    teachers: dict[str, str] | None,
    replay: bool,
    replay_tolerance: float,
    allow_code: tuple[str, ...],
    allow_remote_shards: bool,
) -> VerifyReport:
    store = CacheStore.open(location)
    manifest = manifest_for(store, data, allow_remote_shards)
    report = VerifyReport(cache=location, target_dtype=store.target_dtype)
    if replay:
        report.replay = replay_check(
            store, manifest, samples=samples, seed=seed, tolerance=replay_tolerance
        )
        report.problems += report.replay.problems
    rng = np.random.default_rng(seed)
    shards = manifest.shards_of(store.attrs["splits"])
    for name in store.teacher_names:
        moved_to = (teachers or {}).get(name)
        load = functools.partial(_checked_teacher, report, store, name, moved_to, allow_code)
        teacher = _LazyTeacher(name, load)
        if samples and teacher.get() is None:
            continue
        done = store.views_done(name)[:, : store.plan.views]
        picked = sample_done_rows(done, shards, samples, rng)
        for shard in shards:
            if done[shard.id].any():
                views = {v: picked.get((shard.id, v)) for v in np.flatnonzero(done[shard.id])}
                _verify_shard(report, store, manifest, teacher, shard, views)
    return report


class _LazyTeacher:
    """A teacher loaded (and its weights checked) only once a view must be recomputed: a
    checksum-only verify needs no weights."""

    def __init__(self, name: str, load):
        self.name, self._load, self._loaded = name, load, False
        self._teacher: Teacher | None = None

    def get(self) -> Teacher | None:
        if not self._loaded:
            self._teacher, self._loaded = self._load(), True
        return self._teacher


def _checked_teacher(
    report: VerifyReport, store: CacheStore, name: str, moved_to: str | None,
    allow_code: tuple[str, ...],
) -> Teacher | None:  # fmt: skip
    """The teacher that made ``name``'s targets, from where the cache says (a local file, never
    a URL: :func:`~pipeline.data.confine.recorded_teacher`) or ``moved_to``;
    None, with a problem recorded, if its weights are not the ones the cache was made with."""
    identity = store.teacher_identity(name)
    source = moved_to or recorded_teacher(store.location, name, identity["source"])
    options = load_options(identity)
    for recorded in ("factory", "key_map"):
        recorded_code(store.location, name, recorded, options[recorded], allow_code)
    teacher = load_teacher(source, **options)
    if teacher.weights_sha256 != identity["weights_sha256"]:
        report.problems.append(
            f"teacher {name}: weights at {teacher.source} have sha256 "
            f"{teacher.weights_sha256[:12]}, the cache was made with {identity['weights_sha256'][:12]}"
        )
        return None
    return teacher


def _verify_shard(
    report: VerifyReport,
    store: CacheStore,
    manifest: Manifest,
    teacher: "_LazyTeacher",
    shard: ShardInfo,
    views: dict[int, np.ndarray | None],
) -> None:
    """Check the checksum of each done view of a shard (a failing one is recomputed whole), and
    recompute its sampled positions (``views``: done view -> sampled positions or None)."""
    block = store.read_shard(teacher.name, shard)  # one read per shard for checksums and samples
    checksums = store.shard_checksums(teacher.name)[shard.id]
    rows = manifest.shard_rows(shard)
    images = None
    for view, sampled in sorted(views.items()):
        report.regions_checked += 1
        positions = []
        if region_checksum(block.view(view)) != checksums[view]:
            report.problems.append(
                f"{shard.file} view {view} (teacher {teacher.name}): checksum mismatch"
            )
            positions.append(np.arange(shard.num_rows))
        if sampled is not None:
            positions.append(sampled)
        for chosen in positions:
            loaded = teacher.get()  # None: its weights are refused (a problem recorded)
            if loaded is None:
                break
            if images is None:  # read once, only for a shard with views to recompute
                images = read_shard_images(manifest, shard, renderer=store.plan.renderer)
            stored = block.select(chosen, slice(view, view + 1))
            fresh = _recompute(loaded, store, manifest, shard, images, chosen, view)
            report.views_recomputed += len(chosen)
            _compare(report, shard, rows[chosen], view, stored, fresh, teacher.name)
