"""Finding the manifest a cache was built from (for inspect and verify)."""

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.data import Manifest


def manifest_for(store: CacheStore, data: str | None) -> Manifest:
    """``data`` if given, else the manifest location recorded in the cache; fingerprint checked."""
    location = data or store.attrs["dataset"].get("manifest")
    if location is None:
        raise ValueError(f"{store.location}: records no manifest location; pass --data")
    manifest = Manifest.read(location)
    store.check_matches(manifest)
    if manifest.fingerprint != store.attrs["dataset"]["fingerprint"]:
        raise CacheMismatch(f"{location}: not the dataset of {store.location}")
    return manifest
