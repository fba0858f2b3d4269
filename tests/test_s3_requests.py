"""What ``kdcache inspect`` costs in S3 requests, counted at s3fs's calls into botocore against
a real S3 server (moto's): at most two requests per array per view block of every shard it
reads (a whole object is one GET, not a HEAD for its size and then the GET)."""

import collections

import pytest
import s3fs

from kdcache.pipeline.data import storage
from kdcache.tools.bench.inspect_scale import synthetic_manifest
from kdcache.tools.bench.target_reads import synthetic_cache
from kdcache.tools.cache.inspect_cache import inspect_cache

pytestmark = pytest.mark.slow
SHARD_SIZE = 100


def _requests(monkeypatch, s3_server, tmp_path, shards: int) -> tuple[int, int]:
    """(requests of one inspect of a ``shards``-shard cache on S3, objects of one shard)."""
    data = str(tmp_path / f"data-{shards}")
    manifest = synthetic_manifest(data, shards * SHARD_SIZE, SHARD_SIZE)
    cache = f"s3://kdcache/requests-{shards}.zarr"
    with storage.using(s3_server):
        synthetic_cache(cache, manifest, 4, 5, "fp16")
    fs = s3fs.S3FileSystem(**s3_server)
    last = str(shards - 1)
    objects = [k for k in fs.find(cache) if k.endswith(f"/c/{last}") or f"/c/{last}/" in k]
    calls = collections.Counter()
    real = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls[method] += 1
        return await real(self, method, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
        report = inspect_cache(cache, data=data, storage_options=s3_server)
    assert report["teachers"]["t"]["shards_done"] == shards
    return sum(calls.values()), len(objects)


def test_inspect_reads_each_array_of_a_view_block_in_at_most_two_requests(
    monkeypatch, s3_server, tmp_path
):
    few, objects = _requests(monkeypatch, s3_server, tmp_path, 3)
    many, _ = _requests(monkeypatch, s3_server, tmp_path, 7)
    per_shard = (many - few) / 4  # the fixed cost (metadata, ledger, listings) cancels out
    assert objects >= 5, objects  # params, top-k logits and ids, logsumexp, ledger rows
    assert per_shard <= 2 * objects, (per_shard, objects)
