"""Finding the manifest a cache was built from (for inspect, verify and ``open_cache``)."""

from kdcache.errors import CacheMismatch, ConfigError
from kdcache.pipeline.cache.store import CacheStore
from kdcache.pipeline.data import Manifest, recorded_manifest


def manifest_for(
    store: CacheStore, data: str | None, allow_remote_shards: bool = False
) -> Manifest:
    """``data`` if given, else the manifest location recorded in the cache (a relative one is
    relative to the cache's folder, not the working directory; a URL only under the folder of
    a cache at a URL); fingerprint checked."""
    recorded = store.attrs["dataset"].get("manifest")
    if data is None and recorded is None:
        raise ConfigError(
            f"{store.location}: records no manifest location; give the manifest", field="data"
        )
    location = data or recorded_manifest(store.location, recorded)
    manifest = Manifest.read(location, allow_remote_shards=allow_remote_shards)
    store.check_matches(manifest)
    if manifest.fingerprint != store.attrs["dataset"]["fingerprint"]:
        raise CacheMismatch(f"{location}: not the dataset of {store.location}")
    return manifest
