"""The Ray pool of the teach job: as many worker actors as the cluster can place (bounded by
``placement_timeout``), the shards handed to them one at a time, a lost worker's shard put back
in the queue and the worker replaced where the cluster has room."""

import time
from collections import defaultdict, deque
from dataclasses import replace

import ray

from kdcache.errors import ConfigError, RayUnavailable, TeachFailed
from kdcache.pipeline.cache import RunLock
from kdcache.pipeline.data import storage
from kdcache.pipeline.teach.ray_connect import start_ray
from kdcache.pipeline.teach.shard_progress import ShardProgress
from kdcache.pipeline.teach.teach_config import TeachConfig
from kdcache.pipeline.teach.teach_summary import TeachSummary, record
from kdcache.pipeline.teach.worker import ShardWorker, one_line


def run_shards(config: TeachConfig, todo: list, summary: TeachSummary, lock: RunLock) -> None:
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
            lost.append(one_line(error))
        except ray.exceptions.RayError as error:
            raise TeachFailed(f"a worker could not load the teachers: {one_line(error)}") from None
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
        raise ConfigError(
            f"no Ray node can hold a worker of {asked} (nodes: {_live_nodes()}); "
            "lower cpus_per_worker or gpus_per_worker",
            field="cpus_per_worker",
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
            f"{asked}; the cluster has {free} free); free the cluster, lower workers / "
            "cpus_per_worker / gpus_per_worker, or raise placement_timeout"
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
            errors.append(one_line(error))
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
            self.lost.append(one_line(error))

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
    progress = ShardProgress(len(todo), config.progress)
    try:
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
                result = _result(ref, worker, shard, crew, losses, queue, summary)
                if result is not None:
                    record(summary, timings, shard, result)
                    progress.shard_done(shard, result.get("views", 0))
            crew.expire()
            lock.check()
    finally:
        progress.close()
    summary.workers_lost = len(crew.lost)
    summary.timings = dict(timings)


def _result(ref, worker, shard, crew: _Crew, losses: dict, queue: deque, summary: TeachSummary):
    """A finished call's result (its worker idle again), or None if the worker was lost: its
    shard goes back to the queue, or fails after :data:`LOSSES` losses."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayActorError as error:
        losses[shard.id] += 1
        crew.lose(worker, one_line(error))
        if losses[shard.id] < LOSSES:
            queue.appendleft(shard)
        else:
            summary.shards_failed[shard.file] = f"its worker died: {crew.lost[-1]}"
        return None
    crew.idle.append(worker)
    return result
