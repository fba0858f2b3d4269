"""The teach worker: a Ray actor (made one by :mod:`pipeline.teach.ray_pool`; this module
imports no Ray) that holds the teachers and computes and writes whole shards.

For every teacher, the actor reads its shard, builds every planned view, runs the teachers and
writes the shard's whole chunk-aligned region, then its checksum, then its done flag."""

import resource
import time
from collections import defaultdict

import torch

from kdcache.pipeline.cache import CacheBusy, CacheStore, lock_holder, sample_uniforms
from kdcache.pipeline.data import Manifest, storage
from kdcache.pipeline.teach.host_memory import return_free_memory, use_host_allocator
from kdcache.pipeline.teach.shard_targets import (
    decode_block,
    decoded_bytes,
    joined,
    read_shard_images,
    release,
    row_blocks,
    teacher_targets,
)
from kdcache.pipeline.teach.teach_config import TeachConfig
from kdcache.pipeline.teach.teachers import Teacher
from kdcache.pipeline.views import set_pixel_limit


def one_line(error: BaseException) -> str:
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
            return {"shard": shard_id, "error": one_line(error)}

    def _process(self, shard_id: int) -> dict:
        """Compute and write, for every teacher, the views of one shard it has not finished:
        row block by row block (:func:`row_blocks`: ``config.block_rows`` rows within
        ``config.block_mib`` of decoded pixels), all pending views of every teacher for a
        block, then the next, each block's pixels freed after it, so what the actor holds is
        the shard's encoded bytes and one block's pixels."""
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
        blocks = row_blocks(len(images), self.config.block_rows, self.config.batch_size,
                            decoded_bytes(images), self.config.block_mib << 20)  # fmt: skip
        for positions in blocks:
            began = time.perf_counter()
            huge = decode_block(images, positions, url, keys, self.config.plan.renderer)
            timings["decode"] += time.perf_counter() - began
            for teacher in teachers:
                parts[teacher.name].append(
                    self._targets(teacher, shard, images, params[teacher.name],
                                  pending[teacher.name], positions, timings)
                )  # fmt: skip
            release(images)
            if huge:
                return_free_memory()  # a huge image's temporaries, not kept for the next block
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
