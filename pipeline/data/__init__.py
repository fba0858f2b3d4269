"""Sources, shards and manifests: what kdcache reads images from, and where they are."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "FASHION_MNIST_DIR": ".sources",
        "IndexConfig": ".index_config",
        "index_webdataset": ".wds_index",
        "index_parquet": ".parquet_index",
        "index_shards": ".indexer",
        "Manifest": ".manifest",
        "catalogued_cache": ".confine",
        "recorded_teacher": ".confine",
        "recorded_code": ".confine",
        "recorded_manifest": ".confine",
        "checked_samples": ".shard_check",
        "ShardError": ".tar_reader",
        "ShardConfig": ".shard_config",
        "StorageConfig": ".storage",
        "CacheReadConfig": ".storage",
        "StorageOptions": ".storage",
        "ShardInfo": ".manifest",
        "fashion_mnist": ".sources",
        "open_source": ".sources",
        "read_idx": ".idx",
        "sample_image": ".tar_reader",
        "tar_samples": ".tar_reader",
        "write_shards": ".shard_writer",
    },
)
