"""Finding the manifest a cache was built from (for inspect and verify)."""

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.data import Manifest, recorded_manifest


def manifest_for(
    store: CacheStore, data: str | None, allow_remote_shards: bool = False
) -> Manifest:
    """``data`` if given, else the manifest location recorded in the cache (a relative one is
    relative to the cache's folder, not the working directory; a URL only under the folder of
    a cache at a URL); fingerprint checked."""
    recorded = store.attrs["dataset"].get("manifest")
    if data is None and recorded is None:
        raise ValueError(f"{store.location}: records no manifest location; pass --data")
    location = data or recorded_manifest(store.location, recorded)
    manifest = Manifest.read(location, allow_remote_shards=allow_remote_shards)
    store.check_matches(manifest)
    if manifest.fingerprint != store.attrs["dataset"]["fingerprint"]:
        raise CacheMismatch(f"{location}: not the dataset of {store.location}")
    return manifest
