"""The teacher job: a Ray job with one unit of work per shard.

Top to bottom, :func:`run_teach`: check the request (shard ids, teacher names; teacher weights
recorded at absolute locations), reuse a complete catalogued cache the user can address as
asked, else take the cache's run lock, open or create the cache, start as many Ray actors as
the cluster can place (bounded by ``placement_timeout``), hand every shard that is not done
to them through :class:`ray.util.ActorPool`, publish added views once every teacher has them,
and record the cache in the catalogue.

Each actor holds the teachers, reads its shard, builds every planned view, runs the teachers
and writes the shard's whole chunk-aligned region, then its checksum, then its done flag. A
rerun skips done shards and rewrites any other region, so an interrupted job resumes where it
stopped. This is the only module that imports Ray.
"""

import logging
import os
import resource
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import ray
import torch
from ray.util import ActorPool
from tqdm import tqdm

from kdcache.errors import ConfigError, TeachFailed
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
from kdcache.pipeline.teach.shard_targets import (
    decode_block,
    joined,
    read_shard_images,
    release,
    row_blocks,
    teacher_targets,
)
from kdcache.pipeline.teach.teach_config import TeachConfig
from kdcache.pipeline.teach.teachers import Teacher
from kdcache.pipeline.views import set_pixel_limit


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
    workers: int = 0
    reused: bool = False
    peak_rss: int = 0  # the largest peak resident memory of a worker, bytes

    def lines(self) -> list[str]:
        if self.reused:
            return [f"teach: reused {self.cache} from the catalogue; nothing computed"]
        rate = self.views / self.seconds if self.seconds else 0.0
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.timings.items()))
        lines = [
            f"teach: {len(self.shards_done)} shards computed, {len(self.shards_skipped)} skipped "
            f"(already done), {len(self.shards_failed)} failed",
            f"teach: {self.views} views in {self.seconds:.1f}s ({rate:.0f} views/s; "
            f"{self.startup_seconds:.1f}s starting {self.workers} workers); "
            f"worker time: {parts or '-'}",
            f"teach: cache {self.cache} holds {self.cache_bytes / 2**20:.1f} MiB; "
            f"peak worker memory {self.peak_rss / 2**20:.0f} MiB",
        ]
        lines += [f"teach: FAILED {name}: {why}" for name, why in self.shards_failed.items()]
        return lines


def _one_line(error: BaseException) -> str:
    """The last line of an error (of its cause, for a Ray error wrapping one)."""
    cause = getattr(error, "cause", None) or error
    lines = str(cause).strip().splitlines()
    return lines[-1] if lines else type(cause).__name__


class ShardWorker:
    """A Ray actor holding the teachers; computes and writes whole shards.

    Starting one is cheap (the driver then asks it to :meth:`load` the teachers), so the
    driver's bounded wait for workers measures placement, not model loading."""

    def __init__(self, config: TeachConfig, device: str, threads: int):
        torch.set_num_threads(max(1, threads))
        self.config = config
        self.device = torch.device(device)
        self.teachers: list[Teacher] | None = None

    def ready(self) -> bool:
        """Answers once the actor is placed and its process runs."""
        return True

    def load(self) -> bool:
        """Load the teachers (a restarted actor loads them on its first shard)."""
        if self.teachers is None:
            self._load()
        return True

    def _load(self) -> None:
        config = self.config
        set_pixel_limit(config.max_pixels)
        self.manifest = Manifest.read(
            config.manifest, allow_remote_shards=config.allow_remote_shards
        )
        self.store = CacheStore.open(config.cache, mode="r+")
        self.teachers = [t.load(self.manifest, self.device) for t in config.teachers]
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.device.type == "cuda" else "fp32"

    def process(self, shard_id: int) -> dict:
        """One shard's result, always naming the shard (a failure as a one-line ``error``)."""
        try:
            return {"shard": shard_id, **self._process(shard_id)}
        except Exception as error:  # a failing shard is reported; the others go on
            return {"shard": shard_id, "error": _one_line(error)}

    def _process(self, shard_id: int) -> dict:
        """Compute and write, for every teacher, the views of one shard it has not finished:
        row block by row block (:func:`row_blocks`, ``config.block_rows``), all pending views
        of every teacher for a block, then the next, each block's pixels freed after it, so
        what the actor holds is the shard's encoded bytes and one block's pixels."""
        timings: dict[str, float] = defaultdict(float)
        if self.teachers is None:
            began = time.perf_counter()
            self._load()
            timings["load"] += time.perf_counter() - began
        shard = self.manifest.shards[shard_id]
        views = self.config.plan.views
        pending = {t.name: self.store.pending_views(t.name, shard_id, views) for t in self.teachers}
        teachers = [t for t in self.teachers if pending[t.name]]
        if not teachers:
            return {"views": 0, "timings": timings, "skipped": True}
        began = time.perf_counter()
        images = read_shard_images(self.manifest, shard, decode=False)
        timings["decode"] += time.perf_counter() - began
        for teacher in teachers:  # views built on must be intact (an extension)
            self._check_done(teacher.name, shard, pending[teacher.name], views)
        params = {t.name: self.config.plan.shard_params(self.manifest, shard, views=pending[t.name])
                  for t in teachers}  # fmt: skip
        parts: dict[str, list] = {t.name: [] for t in teachers}
        url, keys = self.manifest.shard_url(shard), self.manifest.shard_keys(shard)
        for positions in row_blocks(len(images), self.config.block_rows, self.config.batch_size):
            began = time.perf_counter()
            decode_block(images, positions, url, keys)
            timings["decode"] += time.perf_counter() - began
            for teacher in teachers:
                parts[teacher.name].append(
                    self._targets(teacher, shard, images, params[teacher.name],
                                  pending[teacher.name], positions, timings)
                )  # fmt: skip
            release(images)
        for teacher in teachers:
            self._write(teacher, shard, pending[teacher.name], joined(parts[teacher.name]), timings)
        computed = sum(len(images) * len(pending[t.name]) for t in teachers)
        return {"views": computed, "timings": timings, "peak_rss": peak_rss()}

    def _check_done(self, name: str, shard, pending: list[int], views: int) -> None:
        """Refuse to add views to a shard whose done views fail their checksum (CacheCorrupt)."""
        done = [v for v in range(views) if v not in pending]
        if pending and done:
            block = self.store.read_shard(name, shard, max(done) + 1)
            self.store.check_regions(name, shard, block, done)

    def _targets(self, teacher: Teacher, shard, images, params, views, positions, timings):
        """One teacher's ``views`` of the shard rows at ``positions``."""
        samples, plan = self.store.samples, self.config.plan
        rows = self.manifest.shard_rows(shard)[positions]
        return teacher_targets(
            teacher,
            plan,
            images,
            params,
            topk=self.store.topk,
            positions=positions,
            uniforms=sample_uniforms(plan.seed, rows, views, samples) if samples else None,
            batch_size=self.config.batch_size,
            precision=self.precision,
            timings=timings,
        )

    def _write(self, teacher: Teacher, shard, views: list[int], block, timings) -> None:
        """One teacher's ``views`` of a shard, written if this run still holds the lock."""
        began = time.perf_counter()
        if lock_holder(self.config.cache) != self.config.run_id:
            raise CacheBusy(
                f"{self.config.cache}: this run lost its lock; not writing {shard.file}"
            )
        self.store.write_shard(teacher.name, shard, views, block)
        timings["write"] += time.perf_counter() - began


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the driver, top to bottom -----------------------------------------------------------------
def run_teach(config: TeachConfig) -> TeachSummary:
    """Run the teacher pass; raise :class:`TeachFailed` (after finishing the rest) if shards fail."""
    began = time.perf_counter()
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    config = _checked_request(config, manifest)
    identities = [source.load(manifest).identity() for source in config.teachers]
    names = [identity["name"] for identity in identities]
    if len(set(names)) != len(names):
        raise ValueError(f"teachers need distinct names, got {names}; use --teacher NAME=PATH")
    catalog = Catalog(config.catalog) if config.catalog else None
    if catalog is not None:
        config, reusable = _from_catalog(config, catalog, manifest, identities)
        if reusable is not None:
            return TeachSummary(cache=reusable, reused=True, cache_bytes=urls.disk_bytes(reusable))
    elif config.cache is None:
        raise ValueError("teach needs --cache, or a catalogue (--catalog or $KDCACHE_CATALOG)")
    with RunLock(config.cache, config.lock_stale_after) as lock:
        config = replace(config, run_id=lock.owner["run"])
        store = _prepare_store(config, manifest, identities)
        summary = _teach_shards(config, manifest, store, names, lock)
        summary.seconds = time.perf_counter() - began
        summary.cache_bytes = urls.disk_bytes(config.cache)
        if catalog is not None:
            lock.check()
            catalog.record(CacheStore.open(config.cache), manifest)
    if summary.shards_failed:
        raise TeachFailed("\n".join(summary.lines()))
    return summary


def _checked_request(config: TeachConfig, manifest: Manifest) -> TeachConfig:
    """``config`` with its ``only_shards`` checked against the manifest and splits, and local
    teacher weights at absolute paths (the cache records them for ``verify`` from anywhere)."""
    if not config.teachers:
        raise ConfigError("teach: no teachers given (TeachConfig.teachers, --teacher)")
    if config.cpus_per_worker <= 0 or (config.gpus_per_worker or 0) < 0:
        raise ValueError("--cpus-per-worker must be above 0 and --gpus-per-worker not below 0")
    splits = set(config.splits)
    manifest.shards_of(config.splits)  # unknown split names: one line
    for shard_id in config.only_shards or []:
        if not 0 <= shard_id < len(manifest.shards):
            raise ValueError(
                f"--only-shards: no shard {shard_id} in {manifest.location} "
                f"(ids 0..{len(manifest.shards) - 1})"
            )
        if manifest.shards[shard_id].split not in splits:
            raise ValueError(
                f"--only-shards: shard {shard_id} is a {manifest.shards[shard_id].split} shard; "
                f"this pass caches {', '.join(sorted(splits))}"
            )
    teachers = [replace(t, location=urls.resolved(t.location)) for t in config.teachers]
    return replace(config, teachers=teachers)


def _requested_attrs(config: TeachConfig, manifest: Manifest) -> dict:
    """The cache attrs that a run with ``config`` has or would create."""
    return {
        "dataset": {"fingerprint": manifest.fingerprint},
        "plan": config.plan.to_attrs(),
        "topk": config.topk,
        "samples": config.samples,
        "splits": config.splits,
    }


def _from_catalog(
    config: TeachConfig, catalog: Catalog, manifest: Manifest, identities: list[dict]
) -> tuple[TeachConfig, str | None]:
    """``config`` with a cache location, and a catalogued cache to reuse instead (or None).

    Reused is only what the user can then address as asked: a complete cache with enough
    views, holding every teacher under its requested name, at ``--cache`` if one was given.
    Without ``--cache`` the catalogue's cache of these teachers is resumed (or grown), else a
    new one is started under the catalogue root; a catalogued cache to be written outside the
    root (an edited row) is refused, naming the entry's file."""
    attrs = _requested_attrs(config, manifest)
    teachers = [(identity_key(attrs, identity), identity["name"]) for identity in identities]
    held = {
        location: rows
        for location, rows in catalog.caches_holding(teachers).items()
        if (config.cache is None or location == urls.resolved(config.cache))
        and (config.cache is not None or catalog.confined_cache(rows[0], writes=False))
        and urls.exists(location)
    }
    for location, rows in held.items():
        if all(row["complete"] and row["views"] >= config.plan.views for row in rows):
            return config, location
    if config.cache is None:
        resumed = next(iter(held.values()), None)
        location = catalog.confined_cache(resumed[0], writes=True) if resumed else None
        config = replace(config, cache=location or catalog.default_cache_location(teachers))
    return config, None


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
    _check_extension(config, store, [identity["name"] for identity in identities])
    store.grow_views(config.plan.views)
    for identity in identities:
        store.add_teacher(identity)
    store.write_identity()  # checked against the request above; a cache older than it gets one
    return store


def _check_extension(config: TeachConfig, store: CacheStore, names: list[str]) -> None:
    """Added views are published only once every teacher has them: refuse, before computing
    anything, a pass adding views that leaves out some of the cache's teachers."""
    left_out = [name for name in store.teacher_names if name not in names]
    if config.plan.views > store.plan.views and left_out:
        raise CacheMismatch(
            f"{config.cache}: adding views {store.plan.views}..{config.plan.views - 1} needs "
            f"every teacher of the cache; pass --teacher for {', '.join(left_out)} too, "
            f"or keep --views {store.plan.views}"
        )


def _teach_shards(
    config: TeachConfig, manifest: Manifest, store: CacheStore, names: list[str], lock: RunLock
) -> TeachSummary:
    """Compute every shard some of ``names`` lacks views of; publish added views when every
    teacher of the cache has them."""
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
        _run_shards(config, todo, summary, lock)
    if not summary.shards_failed and config.plan.views > store.plan.views:
        split_shards = [shard.id for shard in manifest.shards_of(config.splits)]
        held = store.teacher_names
        if all(store.views_done(n)[split_shards, : config.plan.views].all() for n in held):
            lock.check()
            store.publish_views(config.plan.views, split_shards)
    return summary


# -- Ray: workers and the shard pool -----------------------------------------------------------
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


def _run_shards(config: TeachConfig, todo: list, summary: TeachSummary, lock: RunLock) -> None:
    """Start the workers, compute ``todo`` on them, and stop them."""
    start_ray(config.address)
    began = time.perf_counter()
    workers = _start_workers(config, len(todo))
    try:
        _load_teachers(workers)
        summary.startup_seconds = time.perf_counter() - began
        summary.workers = len(workers)
        _compute(config, ActorPool(workers), todo, summary, lock)
    finally:
        for worker in workers:
            ray.kill(worker)


def _load_teachers(workers: list) -> None:
    """Every placed worker loads the teachers (no timeout: a large teacher may take long)."""
    try:
        ray.get([worker.load.remote() for worker in workers])
    except ray.exceptions.RayError as error:
        raise TeachFailed(f"a worker could not load the teachers: {_one_line(error)}") from None


def _worker_resources(config: TeachConfig) -> tuple[float, float]:
    """(CPUs, GPUs) each worker asks for; GPUs default to 1 on a cluster that has any."""
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return config.cpus_per_worker, gpus


def _placeable(cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` and ``gpus`` the live nodes can hold at once."""
    total = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            wanted = [(key, need) for key, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
            total += min(int(have.get(key, 0) / need + 1e-9) for key, need in wanted)
    return total


def _start_workers(config: TeachConfig, shards: int) -> list:
    """As many workers as asked (default: as many as fit), capped by what the cluster can place
    and by ``shards``; those not placed within ``config.placement_timeout`` are dropped, and
    none placed is a one-line error."""
    cpus, gpus = _worker_resources(config)
    placeable = _placeable(cpus, gpus)
    asked = f"{cpus:g} CPUs and {gpus:g} GPUs"
    if placeable == 0:
        nodes = "; ".join(_resources(n["Resources"]) for n in ray.nodes() if n.get("Alive"))
        raise ValueError(
            f"no Ray node can hold a worker of {asked} (nodes: {nodes}); "
            "lower --cpus-per-worker or --gpus-per-worker"
        )
    count = min(config.workers or placeable, placeable, shards)
    actor = ray.remote(ShardWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=2, max_task_retries=2
    )
    device = "cuda" if gpus > 0 else "cpu"
    workers = [actor.remote(config, device, int(cpus)) for _ in range(count)]
    started, errors = _placed(workers, config.placement_timeout)
    if errors and not started:
        raise TeachFailed(f"no worker started: {errors[0]}")
    if not started:
        free = _resources(ray.available_resources())
        raise TeachFailed(
            f"no worker was placed within {config.placement_timeout:g}s ({count} asked, each "
            f"{asked}; the cluster has {free} free); free the cluster, lower --workers / "
            "--cpus-per-worker / --gpus-per-worker, or raise --placement-timeout"
        )
    return started


def _placed(workers: list, timeout: float) -> tuple[list, list[str]]:
    """The workers that answer within ``timeout`` seconds, and why others failed to start;
    the rest (still waiting for resources) are killed."""
    pings = {worker.ready.remote(): worker for worker in workers}
    answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=timeout)
    started, errors = [], []
    for ping, worker in pings.items():
        if ping not in answered:
            ray.kill(worker)
            continue
        try:
            ray.get(ping)
            started.append(worker)
        except ray.exceptions.RayError as error:
            errors.append(_one_line(error))
    return started, errors


def _resources(have: dict) -> str:
    return f"{have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs"


def _compute(
    config: TeachConfig, pool: ActorPool, todo: list, summary: TeachSummary, lock: RunLock
) -> None:
    """Hand every shard to the pool and gather the results as they come. A failed shard is
    reported and the others go on; a shard whose worker died for good (after Ray's restarts
    and retries) is reported with the death; a lost run lock stops the run."""
    pending = {shard.id: shard for shard in todo}
    for shard in todo:
        pool.submit(lambda worker, shard_id: worker.process.remote(shard_id), shard.id)
    timings: dict[str, float] = defaultdict(float)
    deaths: list[str] = []
    disable = None if config.progress else True
    with tqdm(total=len(todo), desc="teach", unit="shard", disable=disable) as bar:
        while pool.has_next():
            try:
                result = pool.get_next_unordered()
            except ray.exceptions.RayError as error:
                deaths.append(_one_line(error))
                continue
            _record(summary, timings, pending.pop(result["shard"]), result)
            bar.update()
            rate = summary.views / max(bar.format_dict["elapsed"], 1e-9)
            bar.set_postfix(views_per_s=f"{rate:.0f}")
            lock.check()
    for shard in pending.values():  # never answered: no live worker was left for it
        summary.shards_failed[shard.file] = f"its worker died: {deaths[0] if deaths else '?'}"
    summary.timings = dict(timings)


def _record(summary: TeachSummary, timings: dict, shard, result: dict) -> None:
    """One shard's result into the summary."""
    if "error" in result:
        summary.shards_failed[shard.file] = result["error"]
        return
    (summary.shards_skipped if result.get("skipped") else summary.shards_done).append(shard.file)
    summary.views += result["views"]
    summary.peak_rss = max(summary.peak_rss, result.get("peak_rss", 0))
    for key, value in result["timings"].items():
        timings[key] += value
