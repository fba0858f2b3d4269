"""``kdcache index``: existing WebDataset tars or Parquet files, by their suffix or as told."""

from collections.abc import Sequence

from kdcache.pipeline.data.manifest import Manifest
from kdcache.pipeline.data.parquet_index import index_parquet
from kdcache.pipeline.data.wds_index import index_webdataset


def index_shards(files: str | Sequence[str], out: str, **options) -> Manifest:
    """:func:`index_parquet` when ``format`` is ``parquet`` (or ``auto`` and every pattern
    ends in ``.parquet``), else :func:`index_webdataset`."""
    patterns = [files] if isinstance(files, str) else list(files)
    kind = options.get("format", "auto")
    if kind == "auto":
        kind = "parquet" if all(p.endswith(".parquet") for p in patterns) else "webdataset"
    if kind == "parquet":
        return index_parquet(patterns, out, **options)
    return index_webdataset(patterns, out, **options)
