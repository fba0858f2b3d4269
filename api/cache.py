"""``kdcache.open_cache``: a cache opened read-only — what it holds, how complete it is, the
targets of any (row, view), and a check of its integrity."""

import functools

import numpy as np

from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.views import ViewPlan


class Cache:
    """A kdcache cache, read-only. ``teachers`` are the names of its teachers; ``plan`` is the
    view plan its views were made with; ``topk`` logits (and ``samples`` drawn ids) per view."""

    def __init__(self, location: str, storage_options: dict | None = None):
        self._store = CacheStore.open(location, storage_options=storage_options)
        self.location = location

    @property
    def format(self) -> str:
        return self._store.attrs["format"]

    @property
    def plan(self) -> ViewPlan:
        return self._store.plan

    @property
    def teachers(self) -> list[str]:
        return self._store.teacher_names

    @property
    def topk(self) -> int:
        return self._store.topk

    @property
    def samples(self) -> int:
        return self._store.samples

    @property
    def attrs(self) -> dict:
        """The cache's attributes (dataset fingerprint, plan, teachers' identities, ...)."""
        return dict(self._store.attrs)

    def teacher(self, name: str | None = None) -> dict:
        """A teacher's identity: architecture, weights sha256, preprocessing, classes."""
        return self._store.teacher_identity(self._name(name))

    def completeness(self) -> dict[str, float]:
        """Per teacher, the share of the cached splits' shards whose planned views are written."""
        ids = [
            s.id for split in self._store.attrs["splits"] for s in self._manifest.shards_of(split)
        ]
        return {name: float(self._store.shard_done(name)[ids].mean()) for name in self.teachers}

    def complete(self, teacher: str | None = None) -> bool:
        """Whether ``teacher`` (default: every teacher) has all of its splits' shards done."""
        shares = self.completeness()
        return all(shares[name] == 1 for name in ([self._name(teacher)] if teacher else shares))

    @functools.cached_property
    def _manifest(self):
        """The manifest the cache names (checked against its fingerprint)."""
        from kdcache.tools.cache import manifest_for

        return manifest_for(self._store, None)

    def targets(self, row: int, view: int, teacher: str | None = None) -> dict[str, np.ndarray]:
        """The stored targets of one (row, view): ``topk_logits``, ``topk_index``,
        ``logsumexp`` (``sample_index`` in sampled caches) and the view's ``params``. The
        (shard, view) region holding them is checked against its stored checksum first
        (:class:`kdcache.errors.CacheCorrupt` if it fails)."""
        name = self._name(teacher)
        if not 0 <= view < self.plan.views:
            raise IndexError(f"{self.location}: view {view} not in 0..{self.plan.views - 1}")
        if not self._store.views_done(name)[row // self._store.shard_size, view]:
            raise KeyError(f"{self.location}: teacher {name} has not written row {row} view {view}")
        shard = self._manifest.shards[row // self._store.shard_size]
        block = self._store.read_region(name, shard, view)
        position = row - shard.id * self._store.shard_size
        if not 0 <= position < shard.num_rows:
            raise IndexError(f"{self.location}: row {row} is not a row of {shard.file}")
        return {k: v[position, 0] for k, v in block.arrays().items()}

    def verify(self, data: str | None = None, samples: int = 0):
        """Check every written (shard, view) checksum and recompute ``samples`` random views
        with the teacher (``data``: the manifest, default the one the cache names); returns
        the report (``report.ok``, ``report.problems``)."""
        from kdcache.tools.cache.verify_cache import verify_cache

        return verify_cache(self.location, data, samples=samples)

    def _name(self, teacher: str | None) -> str:
        if teacher is None:
            if len(self.teachers) != 1:
                raise ValueError(f"{self.location}: holds teachers {self.teachers}; name one")
            return self.teachers[0]
        if teacher not in self.teachers:
            raise KeyError(f"{self.location}: no teacher {teacher!r} (holds {self.teachers})")
        return teacher

    def __repr__(self) -> str:
        return (
            f"Cache({self.location!r}, teachers={self.teachers}, views={self.plan.views}, "
            f"topk={self.topk}, format={self.format!r})"
        )


def open_cache(location: str, storage_options: dict | None = None) -> Cache:
    """Open a cache read-only (a local path or an fsspec URL; ``storage_options`` for fsspec)."""
    return Cache(location, storage_options)
