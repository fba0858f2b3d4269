"""The cache contract: the Zarr store of teacher targets, the catalogue of caches, the
writers' lock, the sampled-id draws a cache records, its layout, quantised targets, feature
targets and sizing."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CacheBusy": ".run_lock",
        "CachePlan": ".sizing",
        "CacheCorrupt": ".store",
        "CacheMismatch": ".store",
        "CacheStore": ".store",
        "Catalog": ".catalog",
        "FORMAT": ".store",
        "FORMATS": ".store",
        "format_size": ".sizing",
        "RunLock": ".run_lock",
        "ShardTargets": ".store",
        "catalog_root": ".catalog",
        "draw_classes": ".sampled_targets",
        "feature_view_bytes": ".feature_layout",
        "matrix_sha256": ".feature_layout",
        "projection_matrix": ".feature_layout",
        "projection_seed": ".feature_layout",
        "identity_key": ".catalog",
        "index_dtype": ".store",
        "lock_holder": ".run_lock",
        "manifest_for": ".cache_manifest",
        "reduce_logits": ".store",
        "region_checksum": ".store",
        "resolve_cache": ".catalog",
        "sample_uniforms": ".sampled_targets",
        "size_plan": ".sizing",
        "slug": ".feature_layout",
        "stored_features": ".feature_layout",
        "topk_kl": ".quantize",
    },
)
