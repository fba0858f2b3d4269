"""The teacher job's driver, top to bottom (:func:`run_teach`): resolve the config against
the cache it names and check it (options, class maps, cache and plan compatibility, data
identity) before any teacher loads or Ray starts; reuse a complete catalogued cache the user
can address as asked, else take the cache's run lock, open or create the cache, have the Ray
pool (:mod:`pipeline.teach.ray_pool`) compute the shards that are not done, publish added
views once every teacher has them, and record the cache in the catalogue.

A rerun skips done shards and rewrites any other region, so an interrupted job resumes where
it stopped. The workers are :mod:`pipeline.teach.worker`; Ray is imported only by the pool and
its connection (:mod:`pipeline.teach.ray_connect`), once there is work for them.
"""

import time
from dataclasses import replace

from kdcache.errors import ConfigError, TeachFailed
from kdcache.pipeline.cache import CacheMismatch, CacheStore, Catalog, RunLock, identity_key
from kdcache.pipeline.data import Manifest, storage, urls
from kdcache.pipeline.teach.teach_config import TeachConfig
from kdcache.pipeline.teach.teach_summary import TeachSummary

__all__ = ["TeachFailed", "TeachSummary", "run_teach"]


def run_teach(config: TeachConfig) -> TeachSummary:
    """Run the teacher pass; raise :class:`TeachFailed` (after finishing the rest) if shards fail.

    ``config.storage_options`` (over ``$KDCACHE_STORAGE_OPTIONS``) reach every URL, in this
    process and in the Ray actors (in the config they are started with, merged over the
    actor's own environment; a ``runtime_env`` would be written in clear to Ray's logs)."""
    if config.dry_run:
        raise ConfigError(
            "teach: dry_run runs no teacher; size the plan with kdcache.pipeline.cache.size_plan",
            field="dry_run",
        )
    with storage.using(config.storage_options):
        return _run_teach(config)


def _run_teach(config: TeachConfig) -> TeachSummary:
    began = time.perf_counter()
    if config.cache is None and not config.catalog:
        raise ConfigError("teach: no cache given, and no catalogue to pick one", field="cache")
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    existing = _existing(config.cache)
    config = _checked_request(config.resolved(existing, manifest.num_classes), manifest)
    if existing is not None:  # before any teacher loads
        _check_store(config, manifest, existing)
    from kdcache.pipeline.views import check_renderer  # torchvision: once the rest is checked

    check_renderer(config.plan)  # before Ray starts; each actor's renderer checks its own node
    from kdcache.pipeline.teach.feature_taps import teacher_identity  # torch, timm: once checked

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
        from kdcache.pipeline.teach.ray_connect import check_reachable

        check_reachable(config.address)  # before the cache is created: nothing left behind
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
    """``config`` with its ``only_shards`` checked against the manifest and splits, its class
    maps against the data's classes, and local teacher weights at absolute paths (the cache
    records them for ``verify`` from anywhere)."""
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
    views, holding every teacher under its requested name, at ``cache`` if one was given.
    Without ``cache`` the catalogue's cache of these teachers is resumed (or grown), else a
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
        from kdcache.pipeline.teach.ray_pool import run_shards  # Ray: only once there is work

        run_shards(config, todo, summary, lock)
    if not summary.shards_failed and config.plan.views > store.plan.views:
        split_shards = [shard.id for shard in manifest.shards_of(config.splits)]
        held = store.teacher_names
        if all(store.views_done(n)[split_shards, : config.plan.views].all() for n in held):
            lock.check()
            store.publish_views(config.plan.views, split_shards)
    return summary
