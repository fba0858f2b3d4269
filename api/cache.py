"""``kdcache.open_cache``: a cache opened read-only — what it holds, how complete it is, the
targets of any (row, view), and a check of its integrity."""

import functools

import numpy as np

from kdcache.errors import ConfigError, NotInCache
from kdcache.pipeline.cache import CacheStore
from kdcache.pipeline.views import ViewPlan

KEPT_REGIONS = 4  # checked regions a Cache keeps for repeated targets() calls


class Cache:
    """A kdcache cache, read-only. ``teachers`` are the names of its teachers; ``plan`` is the
    view plan its views were made with; ``topk`` logits (and ``samples`` drawn ids) per view."""

    def __init__(self, location: str, storage_options: dict | None = None, data: str | None = None):
        self._store = CacheStore.open(location, storage_options=storage_options)
        self.location, self._data = location, data
        self._views_done: dict[str, np.ndarray] = {}
        self._regions: dict[tuple[str, int, int], object] = {}

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
        """The manifest given as ``data``, else the one the cache names (inside its folder);
        checked against the cache's fingerprint."""
        from kdcache.pipeline.cache.cache_manifest import manifest_for

        return manifest_for(self._store, self._data)

    def targets(self, row: int, view: int, teacher: str | None = None) -> dict[str, np.ndarray]:
        """The stored targets of one (row, view): ``topk_logits``, ``topk_index``,
        ``logsumexp`` (``sample_index`` in sampled caches) and the view's ``params``. The
        (shard, view) region holding them is checked against its stored checksum first
        (:class:`kdcache.errors.CacheCorrupt` if it fails); a row, view or teacher the cache
        does not hold is a :class:`kdcache.errors.NotInCache`."""
        name = self._name(teacher)
        store, rows = self._store, self._store.attrs["dataset"]["num_rows"]
        if not 0 <= view < self.plan.views:
            raise NotInCache(f"{self.location}: view {view} not in 0..{self.plan.views - 1}")
        if not 0 <= row < rows:
            raise NotInCache(f"{self.location}: row {row} not in 0..{rows - 1}")
        shard_id, position = divmod(row, store.shard_size)
        if not self._done(name)[shard_id, view]:
            raise NotInCache(
                f"{self.location}: teacher {name} has not written row {row} view {view}"
            )
        shard = self._manifest.shards[shard_id]
        if position >= shard.num_rows:
            raise NotInCache(f"{self.location}: row {row} is not a row of {shard.file}")
        block = self._region(name, shard_id, view)
        return {k: v[position, 0] for k, v in block.arrays().items()}

    def _done(self, name: str) -> np.ndarray:
        """A teacher's done flags, read once (the cache is opened read-only)."""
        if name not in self._views_done:
            self._views_done[name] = self._store.views_done(name)
        return self._views_done[name]

    def _region(self, name: str, shard_id: int, view: int):
        """A checked (shard, view) region; the last few are kept, so reading the rows of one
        region costs one read and one checksum."""
        key = (name, shard_id, view)
        if key not in self._regions:
            shard = self._manifest.shards[shard_id]
            self._regions[key] = self._store.read_region(name, shard, view)
            while len(self._regions) > KEPT_REGIONS:
                self._regions.pop(next(iter(self._regions)))
        return self._regions[key]

    def verify(
        self, data: str | None = None, samples: int = 0, teachers: dict[str, str] | None = None
    ):
        """Check every written (shard, view) checksum and recompute ``samples`` random views
        with the teacher (``data``: the manifest, default the one given to :func:`open_cache`
        or the cache names; ``teachers``: name -> weights moved or kept outside the cache's
        folder); returns the report (``report.ok``, ``report.problems``)."""
        from kdcache.verify_cache import verify_cache

        return verify_cache(self.location, data or self._data, samples=samples, teachers=teachers)

    def _name(self, teacher: str | None) -> str:
        if teacher is None:
            if len(self.teachers) != 1:
                raise ConfigError(
                    f"{self.location}: holds teachers {self.teachers}; name one", field="teacher"
                )
            return self.teachers[0]
        if teacher not in self.teachers:
            raise NotInCache(f"{self.location}: no teacher {teacher!r} (holds {self.teachers})")
        return teacher

    def __repr__(self) -> str:
        return (
            f"Cache({self.location!r}, teachers={self.teachers}, views={self.plan.views}, "
            f"topk={self.topk}, format={self.format!r})"
        )


def open_cache(
    location: str, storage_options: dict | None = None, data: str | None = None
) -> Cache:
    """Open a cache read-only (a local path or an fsspec URL; ``storage_options`` for fsspec;
    ``data``: its manifest, needed when the one it records lies outside its folder)."""
    return Cache(location, storage_options, data)
