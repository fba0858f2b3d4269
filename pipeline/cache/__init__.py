"""The cache contract: the Zarr store of teacher targets (its ledger, target codecs and
integrity checks), the catalogue of caches, the writers' lock, the sampled-id draws a cache
records, its layout, quantised targets, feature targets and sizing."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CacheBusy": ".run_lock",
        "CachePlan": ".sizing",
        "CacheCorrupt": ".store",
        "CacheMismatch": ".store",
        "Ledger": ".ledger",
        "TargetCodec": ".codecs",
        "CacheStore": ".store",
        "Catalog": ".catalog",
        "FORMAT": ".zarr_arrays",
        "FORMATS": ".zarr_arrays",
        "format_size": ".sizing",
        "RunLock": ".run_lock",
        "ShardTargets": ".target_block",
        "catalog_root": ".catalog",
        "draw_classes": ".sampled_targets",
        "feature_view_bytes": ".feature_layout",
        "matrix_sha256": ".feature_layout",
        "projection_matrix": ".feature_layout",
        "projection_seed": ".feature_layout",
        "identity_key": ".catalog",
        "index_dtype": ".target_block",
        "lock_holder": ".run_lock",
        "manifest_for": ".cache_manifest",
        "reduce_logits": ".target_block",
        "region_checksum": ".target_block",
        "resolve_cache": ".catalog",
        "sample_uniforms": ".sampled_targets",
        "size_plan": ".sizing",
        "slug": ".feature_layout",
        "stored_features": ".feature_layout",
        "topk_kl": ".quantize",
    },
)
