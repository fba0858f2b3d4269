"""kdcache pipeline: shards and manifest, the view plan, teachers, the Ray teacher job and the cache store."""

__version__ = "0.1.0"
