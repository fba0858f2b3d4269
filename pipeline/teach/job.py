"""The teacher job: a Ray job with one unit of work per shard.

The driver opens (or creates) the cache, registers the teachers, and hands every shard that
is not done to a pool of Ray actors. Each actor holds the teachers, reads its shard, builds
every planned view, runs the teachers and writes the shard's whole chunk-aligned region, then
its checksum, then its done flag. A rerun skips done shards and rewrites any other region,
so an interrupted job resumes where it stopped. This is the only module that imports Ray.
"""

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import ray
import torch
from tqdm import tqdm

from kdcache.errors import TeachFailed
from kdcache.pipeline.cache import (
    CacheBusy,
    CacheMismatch,
    CacheStore,
    Catalog,
    RunLock,
    identity_key,
    lock_holder,
    sample_uniforms,
)
from kdcache.pipeline.data import Manifest, urls
from kdcache.pipeline.teach.shard_targets import read_shard_images, teacher_targets
from kdcache.pipeline.teach.teachers import Teacher, load_teacher
from kdcache.pipeline.views import ViewPlan


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher's weights are and how to build it (``arch`` only for published weights)."""

    location: str
    name: str | None = None
    arch: str | None = None
    resolution: int | None = None

    def load(self, manifest: Manifest, device: str | torch.device = "cpu") -> Teacher:
        """The teacher, sized for the manifest's classes and channels."""
        return load_teacher(
            self.location,
            name=self.name,
            arch=self.arch,
            num_classes=manifest.num_classes,
            in_chans=manifest.channels,
            resolution=self.resolution,
            device=device,
        )


@dataclass
class TeachConfig:
    """Options of one teacher pass (see ``kdcache teach --help``)."""

    manifest: str
    cache: str | None
    teachers: list[TeacherSource]
    plan: ViewPlan = field(default_factory=ViewPlan)
    topk: int = 10
    samples: int = 0  # sampled class ids per view and teacher (0: none)
    splits: list[str] = field(default_factory=lambda: ["train"])
    batch_size: int = 256
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None
    precision: str = "auto"
    address: str | None = None
    only_shards: list[int] | None = None
    catalog: str | None = None
    lock_stale_after: float = 120.0
    progress: bool = True
    run_id: str | None = None  # set by run_teach: the run lock this run holds


@dataclass
class TeachSummary:
    """What a teacher pass did."""

    cache: str
    shards_done: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    views: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    cache_bytes: int = 0
    startup_seconds: float = 0.0
    reused: bool = False

    def lines(self) -> list[str]:
        if self.reused:
            return [f"teach: reused {self.cache} from the catalogue; nothing computed"]
        rate = self.views / self.seconds if self.seconds else 0.0
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.timings.items()))
        lines = [
            f"teach: {len(self.shards_done)} shards computed, {len(self.shards_skipped)} skipped "
            f"(already done), {len(self.shards_failed)} failed",
            f"teach: {self.views} views in {self.seconds:.1f}s ({rate:.0f} views/s; "
            f"{self.startup_seconds:.1f}s starting workers); worker time: {parts or '-'}",
            f"teach: cache {self.cache} holds {self.cache_bytes / 2**20:.1f} MiB",
        ]
        lines += [f"teach: FAILED {name}: {why}" for name, why in self.shards_failed.items()]
        return lines


class ShardWorker:
    """A Ray actor holding the teachers; computes and writes whole shards."""

    def __init__(self, config: TeachConfig, device: str, threads: int):
        torch.set_num_threads(max(1, threads))
        self.config = config
        self.device = torch.device(device)
        self.manifest = Manifest.read(config.manifest)
        self.store = CacheStore.open(config.cache, mode="r+")
        self.teachers = [t.load(self.manifest, self.device) for t in config.teachers]
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.device.type == "cuda" else "fp32"

    def ready(self) -> bool:
        """Answers once the actor has loaded its teachers."""
        return True

    def process(self, shard_id: int) -> dict:
        """Compute and write, for every teacher, the views of one shard it has not finished."""
        shard = self.manifest.shards[shard_id]
        views = self.config.plan.views
        pending = {t.name: self.store.pending_views(t.name, shard_id, views) for t in self.teachers}
        timings: dict[str, float] = defaultdict(float)
        if not any(pending.values()):
            return {"views": 0, "timings": timings, "skipped": True}
        began = time.perf_counter()
        images = read_shard_images(self.manifest, shard)
        rows = self.manifest.shard_rows(shard)
        timings["decode"] += time.perf_counter() - began
        computed = 0
        plan, samples = self.config.plan, self.store.samples
        for teacher in self.teachers:
            wanted = pending[teacher.name]
            if not wanted:
                continue
            params = plan.shard_params(self.manifest, shard, views=wanted)
            block = teacher_targets(
                teacher,
                plan,
                images,
                params,
                topk=self.store.topk,
                uniforms=sample_uniforms(plan.seed, rows, wanted, samples) if samples else None,
                batch_size=self.config.batch_size,
                precision=self.precision,
                timings=timings,
            )
            began = time.perf_counter()
            if lock_holder(self.config.cache) != self.config.run_id:
                raise CacheBusy(
                    f"{self.config.cache}: this run lost its lock; not writing {shard.file}"
                )
            self.store.write_shard(teacher.name, shard, wanted, block)
            timings["write"] += time.perf_counter() - began
            computed += len(images) * len(wanted)
        return {"views": computed, "timings": timings}


def _prepare_store(config: TeachConfig, manifest: Manifest, identities: list[dict]) -> CacheStore:
    """Open or create the cache, check it matches (more views: an extension), register teachers."""
    try:
        store = CacheStore.open(config.cache, mode="r+")
    except FileNotFoundError:
        store = CacheStore.create(
            config.cache,
            manifest=manifest,
            plan=config.plan,
            topk=config.topk,
            splits=config.splits,
            samples=config.samples,
        )
    # more views than the cache has is an extension: the same plan, views appended
    fewer = replace(config.plan, views=min(config.plan.views, store.plan.views))
    store.check_matches(
        manifest, plan=fewer, topk=config.topk, splits=config.splits, samples=config.samples
    )
    if config.plan.views < store.plan.views:
        raise CacheMismatch(
            f"{config.cache}: holds {store.plan.views} views; asked for {config.plan.views} "
            "(views are never removed; ask for at least the cache's)"
        )
    store.grow_views(config.plan.views)
    for identity in identities:
        store.add_teacher(identity)
    return store


def _requested_attrs(config: TeachConfig, manifest: Manifest) -> dict:
    """The cache attrs that a run with ``config`` has or would create."""
    return {
        "dataset": {"fingerprint": manifest.fingerprint},
        "plan": config.plan.to_attrs(),
        "topk": config.topk,
        "samples": config.samples,
        "splits": config.splits,
    }


def _reusable_cache(catalog: Catalog, keys: list[str], views: int) -> str | None:
    """One existing cache that holds every requested teacher, complete, with enough views."""
    rows = [catalog.lookup(key) for key in keys]
    if any(row is None or not row["complete"] or row["views"] < views for row in rows):
        return None
    locations = {row["cache"] for row in rows}
    if len(locations) != 1 or not urls.exists(next(iter(locations))):
        return None
    return locations.pop()


def start_ray(address: str | None) -> None:
    """Connect to ``address``, or start a local Ray with this machine's CPUs."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        options.update(num_cpus=os.cpu_count(), include_dashboard=False)
    ray.init(address=address, **options)


def stop_ray() -> None:
    """Disconnect from Ray (and stop a local Ray this process started), freeing its CPUs."""
    ray.shutdown()


def run_teach(config: TeachConfig) -> TeachSummary:
    """Run the teacher pass; raise :class:`TeachFailed` (after finishing the rest) if shards fail."""
    began = time.perf_counter()
    manifest = Manifest.read(config.manifest)
    identities = [source.load(manifest).identity() for source in config.teachers]
    names = [identity["name"] for identity in identities]
    if len(set(names)) != len(names):
        raise ValueError(f"teachers need distinct names, got {names}; use --teacher NAME=PATH")
    catalog = Catalog(config.catalog) if config.catalog else None
    if catalog is not None:
        keys = [identity_key(_requested_attrs(config, manifest), i) for i in identities]
        reusable = _reusable_cache(catalog, keys, config.plan.views)
        if reusable is not None:
            return TeachSummary(cache=reusable, reused=True, cache_bytes=urls.disk_bytes(reusable))
        if config.cache is None:  # resume the catalogue's cache of this identity, or start one
            known = catalog.lookup(keys[0])
            location = known["cache"] if known else catalog.default_cache_location(keys[0])
            config = replace(config, cache=location)
    elif config.cache is None:
        raise ValueError("teach needs --cache, or a catalogue (--catalog or $KDCACHE_CATALOG)")
    with RunLock(config.cache, config.lock_stale_after) as lock:
        config = replace(config, run_id=lock.owner["run"])
        store = _prepare_store(config, manifest, identities)
        summary = _teach_shards(config, manifest, store, names)
        summary.seconds = time.perf_counter() - began
        summary.cache_bytes = urls.disk_bytes(config.cache)
        if catalog is not None:
            catalog.record(CacheStore.open(config.cache), manifest)
    if summary.shards_failed:
        raise TeachFailed("\n".join(summary.lines()))
    return summary


def _teach_shards(
    config: TeachConfig, manifest: Manifest, store: CacheStore, names: list[str]
) -> TeachSummary:
    """Compute every shard some teacher lacks views of; publish added views when complete."""
    shards = manifest.shards_of(config.splits)
    if config.only_shards is not None:
        shards = [s for s in shards if s.id in set(config.only_shards)]
    done = [store.views_done(name)[:, : config.plan.views].all(axis=1) for name in names]
    summary = TeachSummary(cache=config.cache)
    todo = []
    for shard in shards:
        if all(flags[shard.id] for flags in done):
            summary.shards_skipped.append(shard.file)
        else:
            todo.append(shard)
    if todo:
        _run_shards(config, manifest, todo, summary)
    if not summary.shards_failed and config.plan.views > store.plan.views:
        split_shards = [shard.id for shard in manifest.shards_of(config.splits)]
        if all(store.views_done(n)[split_shards, : config.plan.views].all() for n in names):
            store.publish_views(config.plan.views, split_shards)
    return summary


def _run_shards(config: TeachConfig, manifest: Manifest, todo: list, summary: TeachSummary) -> None:
    start_ray(config.address)
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    cpus = ray.cluster_resources().get("CPU", 1)
    workers = config.workers or max(1, int(cpus // config.cpus_per_worker))
    workers = min(workers, len(todo))
    actor = ray.remote(ShardWorker).options(
        num_cpus=config.cpus_per_worker, num_gpus=gpus, max_restarts=2, max_task_retries=2
    )
    device = "cuda" if gpus > 0 else "cpu"
    began = time.perf_counter()
    pool = [actor.remote(config, device, int(config.cpus_per_worker)) for _ in range(workers)]
    ray.get([worker.ready.remote() for worker in pool])
    summary.startup_seconds = time.perf_counter() - began
    queue = list(todo)
    running = {}
    for worker in pool:
        if queue:
            shard = queue.pop(0)
            running[worker.process.remote(shard.id)] = (worker, shard)
    timings: dict[str, float] = defaultdict(float)
    bar = tqdm(
        total=len(todo), desc="teach", unit="shard", disable=None if config.progress else True
    )
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        worker, shard = running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as error:  # a failing shard is reported; the others go on
            cause = getattr(error, "cause", None) or error
            summary.shards_failed[shard.file] = str(cause).strip().splitlines()[-1]
        else:
            if result.get("skipped"):
                summary.shards_skipped.append(shard.file)
            else:
                summary.shards_done.append(shard.file)
            summary.views += result["views"]
            for key, value in result["timings"].items():
                timings[key] += value
        bar.update()
        bar.set_postfix(views_per_s=f"{summary.views / max(bar.format_dict['elapsed'], 1e-9):.0f}")
        if queue:
            next_shard = queue.pop(0)
            running[worker.process.remote(next_shard.id)] = (worker, next_shard)
    bar.close()
    summary.timings = dict(timings)
    for worker in pool:
        ray.kill(worker)
