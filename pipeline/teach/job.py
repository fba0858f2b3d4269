"""The teacher job: a Ray job with one unit of work per shard.

Top to bottom, :func:`run_teach`: check the request (shard ids, teacher names; teacher weights
recorded at absolute locations), reuse a complete catalogued cache the user can address as
asked, else take the cache's run lock, open or create the cache, start as many Ray actors as
the cluster can place (bounded by ``placement_timeout``), hand them the shards that are not
done one at a time (a lost worker's shard goes back in the queue and the worker is replaced
where the cluster has room; see :func:`_compute`), publish added views once every teacher has
them, and record the cache in the catalogue.

Each actor holds the teachers, reads its shard, builds every planned view, runs the teachers
and writes the shard's whole chunk-aligned region, then its checksum, then its done flag. A
rerun skips done shards and rewrites any other region, so an interrupted job resumes where it
stopped. This is the only module that imports Ray.
"""

import contextlib
import logging
import os
import resource
import socket
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace

import ray
import torch
from tqdm import tqdm

from kdcache.errors import ConfigError, RayUnavailable, TeachFailed
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
from kdcache.pipeline.data import Manifest, storage, urls
from kdcache.pipeline.teach.feature_taps import teacher_identity
from kdcache.pipeline.teach.host_memory import use_host_allocator
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
from kdcache.pipeline.views import check_renderer, set_pixel_limit


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
    workers_lost: int = 0  # workers lost mid-run (their shards were redone on others)

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
        if self.workers_lost:
            lines.append(f"teach: {self.workers_lost} workers lost; their shards were redone")
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
        use_host_allocator(config.host_allocator)
        storage.adopt(storage.resolve(config.storage_options))  # the driver's, over this node's
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
        self.features = {t.name: self.store.feature_targets(t.name) for t in self.teachers}
        self.projections = {
            t.name: {f["name"]: self.store.projection(t.name, f["name"]) for f in targets}
            for t, targets in zip(self.teachers, self.features.values(), strict=True)
        }
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
            decode_block(images, positions, url, keys, self.config.plan.renderer)
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
            features=self.features[teacher.name],
            projections=self.projections[teacher.name],
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
    """Run the teacher pass; raise :class:`TeachFailed` (after finishing the rest) if shards fail.

    ``config.storage_options`` (over ``$KDCACHE_STORAGE_OPTIONS``) reach every URL, in this
    process and in the Ray actors (in the config they are started with, merged over the
    actor's own environment; a ``runtime_env`` would be written in clear to Ray's logs)."""
    if config.dry_run:
        raise ConfigError(
            "teach: dry_run runs no teacher; size the plan with kdcache.pipeline.cache.size_plan "
            "(what kdcache teach --dry-run prints)"
        )
    with storage.using(config.storage_options):
        return _run_teach(config)


def _run_teach(config: TeachConfig) -> TeachSummary:
    began = time.perf_counter()
    if config.cache is None and not config.catalog:
        raise ConfigError("teach: no cache given, and no catalogue to pick one", field="cache")
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    existing = _existing(config.cache)
    config = _checked_request(config.resolved(existing), manifest)
    if existing is not None:  # before any teacher loads
        _check_store(config, manifest, existing)
    identities = [teacher_identity(source, manifest, config) for source in config.teachers]
    names = [identity["name"] for identity in identities]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"teachers need distinct names, got {names}; name them (NAME=PATH)",
            field="teacher.location",
        )
    catalog = Catalog(config.catalog) if config.catalog else None
    if catalog is not None:
        config, reusable = _from_catalog(config, catalog, manifest, identities)
        if reusable is not None:
            return TeachSummary(cache=reusable, reused=True, cache_bytes=urls.disk_bytes(reusable))
    if config.address not in (None, "auto") and "://" not in config.address:
        _check_reachable(config.address)  # before the cache is created: nothing left behind
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
    """``config`` with its ``only_shards`` checked against the manifest and splits, its plan's
    renderer available here, and local teacher weights at absolute paths (the cache records
    them for ``verify`` from anywhere)."""
    splits = set(config.splits)
    manifest.shards_of(config.splits)  # unknown split names: one line
    for shard_id in config.only_shards or []:
        if not 0 <= shard_id < len(manifest.shards):
            raise ConfigError(
                f"only_shards: no shard {shard_id} in {manifest.location} "
                f"(ids 0..{len(manifest.shards) - 1})",
                field="only_shards",
            )
        if manifest.shards[shard_id].split not in splits:
            raise ConfigError(
                f"only_shards: shard {shard_id} is a {manifest.shards[shard_id].split} shard; "
                f"this pass caches {', '.join(sorted(splits))}",
                field="only_shards",
            )
    for source in config.teachers:
        source.check_classes(manifest)
    check_renderer(config.plan)  # before Ray starts; each actor's renderer checks its own node
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
        "layout": {"target_dtype": config.target_dtype},
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


def _existing(location: str | None) -> CacheStore | None:
    """The cache at ``location`` if there is one (read-only)."""
    if location is None:
        return None
    try:
        return CacheStore.open(location)
    except FileNotFoundError:
        return None


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
            target_dtype=config.target_dtype,
        )
    _check_store(config, manifest, store)
    _check_extension(config, store, [identity["name"] for identity in identities])
    store.grow_views(config.plan.views)
    for identity in identities:
        store.add_teacher(identity)
    store.write_identity()  # checked against the request above; a cache older than it gets one
    return store


def _check_store(config: TeachConfig, manifest: Manifest, store: CacheStore) -> None:
    """Refuse a cache that does not match the request (more views is an extension: the same
    plan, views appended; fewer is refused)."""
    fewer = replace(config.plan, views=min(config.plan.views, store.plan.views))
    store.check_matches(
        manifest,
        plan=fewer,
        topk=config.topk,
        splits=config.splits,
        samples=config.samples,
        target_dtype=config.target_dtype,
    )
    if config.plan.views < store.plan.views:
        raise CacheMismatch(
            f"{config.cache}: holds {store.plan.views} views; asked for {config.plan.views} "
            "(views are never removed; ask for at least the cache's)",
            field="plan.views",
        )


def _check_extension(config: TeachConfig, store: CacheStore, names: list[str]) -> None:
    """Added views are published only once every teacher has them: refuse, before computing
    anything, a pass adding views that leaves out some of the cache's teachers."""
    left_out = [name for name in store.teacher_names if name not in names]
    if config.plan.views > store.plan.views and left_out:
        raise CacheMismatch(
            f"{config.cache}: adding views {store.plan.views}..{config.plan.views - 1} needs "
            f"every teacher of the cache; give {', '.join(left_out)} too, "
            f"or keep plan.views {store.plan.views}",
            field="plan.views",
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
    """Connect to the cluster at ``address`` (``auto``: the one this node belongs to), or, with
    none, start a local Ray of this machine's CPUs that listens on the loopback interface only.
    A cluster is used only when asked for: ``RAY_ADDRESS`` and clusters started on this machine
    with ``ray start`` are ignored without an address.

    The local Ray's workers run at this process's priority: Ray's default puts them 15 nice
    levels below it, which on a busy machine hands their CPU to anything else running."""
    if ray.is_initialized():
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    options = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address is None:
        notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
        notices.addFilter(_not_the_default_token_notice)
        try:
            with _loopback_node():
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                         _system_config={"worker_niceness": 0}, **options)  # fmt: skip
        finally:
            notices.removeFilter(_not_the_default_token_notice)
        return
    loopback = contextlib.nullcontext()
    if address != "auto" and "://" not in address:
        _check_reachable(address)
        if address.rpartition(":")[0] in LOOPBACK_HOSTS:  # e.g. another kdcache's local Ray
            loopback = _loopback_node()
    try:
        with loopback:
            ray.init(address=address, **options)
    except ConnectionError as error:
        raise RayUnavailable(_refused(address, error)) from None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _not_the_default_token_notice(record: logging.LogRecord) -> bool:
    """False for Ray's warning that a new local Ray enables token authentication by default
    (as README says; it went to stderr on every local teach, ``--quiet`` too), so that the
    command's own lines are all it prints; Ray's other authentication warnings pass."""
    return not record.getMessage().startswith("Token authentication is enabled for this Ray")


@contextlib.contextmanager
def _loopback_node():
    """Make the node Ray starts here take 127.0.0.1 as its address, so that its GCS, raylet,
    object manager, agents and workers bind to the loopback interface alone (Ray binds every
    interface for any other node address; its ``_node_ip_address`` maps 127.0.0.1 back to the
    machine's address unless multi-node clusters are switched off, which is what this does; a
    driver joining a loopback cluster needs the same, or it dials the machine's address)."""
    constants = ray._private.ray_constants
    enabled = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = enabled


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``address``, when nothing accepts connections there (Ray itself keeps
    retrying an unreachable cluster for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayUnavailable(
            f"no Ray cluster answers at {address} ({error.strerror or error}); start its head "
            "with `ray start --head` and give the address it prints, or none for a local Ray"
        ) from None


def _refused(address: str, error: ConnectionError) -> str:
    """Why connecting to ``address`` failed, in one line naming what to set."""
    cause = f"{error} {error.__cause__ or ''}"
    if "Could not find any running Ray" in cause:
        return (
            "Ray address auto: no Ray cluster runs on this node (start one with "
            "`ray start --head`, or give the head's HOST:PORT)"
        )
    if "Unauthenticated" in cause or "AuthToken" in cause:
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return (
                f"the Ray cluster at {address} requires token authentication: set "
                "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, a file named by "
                "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) in this environment"
            )
        return (
            f"the Ray cluster at {address} refused this client's token: RAY_AUTH_TOKEN, "
            "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token must hold the cluster's token"
        )
    return f"could not connect to the Ray cluster at {address}: {_one_line(error)}"


def stop_ray() -> None:
    """Disconnect from Ray (and stop a local Ray this process started), freeing its CPUs."""
    ray.shutdown()


def _run_shards(config: TeachConfig, todo: list, summary: TeachSummary, lock: RunLock) -> None:
    """Start the workers, compute ``todo`` on them, and stop them."""
    start_ray(config.address)
    began = time.perf_counter()
    workers = _start_workers(config, len(todo))
    try:
        loaded = _load_teachers(workers)
        summary.startup_seconds = time.perf_counter() - began
        summary.workers = len(loaded)
        _compute(config, _Crew(config, loaded, workers), todo, summary, lock)
    finally:
        for worker in workers:
            ray.kill(worker)


def _load_teachers(workers: list) -> list:
    """The workers that loaded the teachers (no timeout: a large teacher may take long; a
    worker lost meanwhile is left out, and none left is :class:`RayUnavailable`)."""
    loads = {worker.load.remote(): worker for worker in workers}
    loaded, lost = [], []
    for ref, worker in loads.items():
        try:
            ray.get(ref)
            loaded.append(worker)
        except ray.exceptions.RayActorError as error:
            lost.append(_one_line(error))
        except ray.exceptions.RayError as error:
            raise TeachFailed(f"a worker could not load the teachers: {_one_line(error)}") from None
    if not loaded:
        raise RayUnavailable(f"every teach worker was lost while loading: {lost[0]}")
    return loaded


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


def _new_worker(config: TeachConfig):
    """One worker actor, asked for but not yet placed. Ray neither restarts it nor retries its
    calls: the driver puts a lost worker's shard back in the queue and starts a replacement
    where the cluster has room (:class:`_Crew`), so no call ever waits on an unplaceable actor."""
    cpus, gpus = _worker_resources(config)
    actor = ray.remote(ShardWorker).options(
        num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0
    )
    config = replace(config, storage_options=storage.current())  # not runtime_env: Ray logs it
    return actor.remote(config, "cuda" if gpus > 0 else "cpu", int(cpus))


def _start_workers(config: TeachConfig, shards: int) -> list:
    """As many workers as asked (default: as many as fit), capped by what the cluster can place
    and by ``shards``; those not placed within ``config.placement_timeout`` are dropped, and
    none placed is a one-line error."""
    cpus, gpus = _worker_resources(config)
    placeable = _placeable(cpus, gpus)
    asked = f"{cpus:g} CPUs and {gpus:g} GPUs"
    if placeable == 0:
        raise ValueError(
            f"no Ray node can hold a worker of {asked} (nodes: {_live_nodes()}); "
            "lower --cpus-per-worker or --gpus-per-worker"
        )
    count = min(config.workers or placeable, placeable, shards)
    workers = [_new_worker(config) for _ in range(count)]
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


def _live_nodes() -> str:
    """The live nodes' resources, one ``CPUs and GPUs`` entry per node."""
    return "; ".join(_resources(n["Resources"]) for n in ray.nodes() if n.get("Alive")) or "none"


TICK = 1.0  # the longest the driver waits on Ray before looking at the run again
LOSSES = 3  # a shard whose worker is lost this many times fails, naming the last loss


class _Crew:
    """The live workers and the replacements being placed. A lost worker is replaced while
    the live nodes can hold more workers than are running or starting; a replacement not
    placed within ``placement_timeout`` is given up."""

    def __init__(self, config: TeachConfig, live: list, every: list):
        self.config = config
        self.idle = list(live)
        self.busy = 0
        self.starting: dict = {}  # a replacement's ready() call -> (actor, deadline)
        self.every = every  # every actor asked for, killed when the run ends
        self.lost: list[str] = []

    def lose(self, worker, why: str) -> None:
        """``worker`` is gone (its node died, or its process): replace it if there is room."""
        ray.kill(worker)
        self.lost.append(why)
        running = self.busy + len(self.idle) + len(self.starting)
        if _placeable(*_worker_resources(self.config)) > running:
            actor = _new_worker(self.config)
            self.every.append(actor)
            deadline = time.monotonic() + self.config.placement_timeout
            self.starting[actor.ready.remote()] = (actor, deadline)

    def started(self, ref) -> None:
        """A replacement answered (placed and running) or failed to start."""
        actor, _ = self.starting.pop(ref)
        try:
            ray.get(ref)
            self.idle.append(actor)
        except ray.exceptions.RayError as error:
            self.lost.append(_one_line(error))

    def expire(self) -> None:
        """Give up replacements still unplaced at their deadline."""
        now = time.monotonic()
        for ref, (actor, deadline) in list(self.starting.items()):
            if now > deadline:
                del self.starting[ref]
                ray.kill(actor)

    def stranded(self, queued: int, total: int) -> RayUnavailable:
        """The error of a run left with shards to do, no worker, and no room for one."""
        cpus, gpus = _worker_resources(self.config)
        return RayUnavailable(
            f"the Ray cluster lost every teach worker and has no room for another: each needs "
            f"{cpus:g} CPUs and {gpus:g} GPUs, the live nodes have {_live_nodes()} "
            f"({_resources(ray.available_resources())} free); {len(self.lost)} workers lost, "
            f"{queued} of {total} shards not done; the done shards are kept: rerun when the "
            "cluster has room"
        )


def _compute(
    config: TeachConfig, crew: _Crew, todo: list, summary: TeachSummary, lock: RunLock
) -> None:
    """Hand the shards to the workers one at a time and gather the results as they come,
    never waiting on Ray longer than :data:`TICK`. A failed shard is reported and the others go
    on; a lost worker's shard goes back to the queue (failed after :data:`LOSSES` losses) and
    the worker is replaced where there is room; shards left with no worker and no room for one
    stop the run (:meth:`_Crew.stranded`); a lost run lock stops the run."""
    queue = deque(todo)
    running: dict = {}  # a process() call -> (worker, shard)
    losses: dict[int, int] = defaultdict(int)
    timings: dict[str, float] = defaultdict(float)
    disable = None if config.progress else True
    with tqdm(total=len(todo), desc="teach", unit="shard", disable=disable) as bar:
        while queue or running:
            while queue and crew.idle:
                worker, shard = crew.idle.pop(), queue.popleft()
                running[worker.process.remote(shard.id)] = (worker, shard)
            crew.busy = len(running)
            if not running and not crew.starting:
                raise crew.stranded(len(queue), len(todo))
            ready, _ = ray.wait([*running, *crew.starting], num_returns=1, timeout=TICK)
            for ref in ready:
                if ref in crew.starting:
                    crew.started(ref)
                    continue
                worker, shard = running.pop(ref)
                crew.busy = len(running)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as error:
                    losses[shard.id] += 1
                    crew.lose(worker, _one_line(error))
                    if losses[shard.id] < LOSSES:
                        queue.appendleft(shard)
                    else:
                        summary.shards_failed[shard.file] = f"its worker died: {crew.lost[-1]}"
                    continue
                crew.idle.append(worker)
                _record(summary, timings, shard, result)
                bar.update()
                rate = summary.views / max(bar.format_dict["elapsed"], 1e-9)
                bar.set_postfix(views_per_s=f"{rate:.0f}")
            crew.expire()
            lock.check()
    summary.workers_lost = len(crew.lost)
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
