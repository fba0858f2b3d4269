"""The Ray teacher job: resume after interruption, and bad shards reported by name."""

import shutil

import numpy as np
import pytest
import zarr

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import TeachFailed
from tests.conftest import PLAN, teach

ARRAYS = ["params"] + [
    f"teachers/regnet/{name}"
    for name in ("topk_logits", "topk_index", "logsumexp", "shard_done", "shard_checksum")
]


def _arrays(location):
    group = zarr.open_group(location, mode="r")
    return {name: group[name][:] for name in ARRAYS}


def test_interrupted_job_resumes_without_recomputing(
    tmp_path, data, teacher_path, cache, ray_local
):
    location = str(tmp_path / "cache.zarr")
    first = teach(data, teacher_path, location, only_shards=[0, 2])
    assert sorted(first.shards_done) == ["shards/train-000000.tar", "shards/train-000002.tar"]
    # a crash in the middle of shard 1: part of its region written, no done flag
    group = zarr.open_group(location, mode="r+")
    group["teachers/regnet/topk_logits"][100:140] = 7.0
    group["params"][100:140] = 0.5
    done_before = _arrays(location)

    second = teach(data, teacher_path, location)
    assert sorted(second.shards_skipped) == ["shards/train-000000.tar", "shards/train-000002.tar"]
    assert sorted(second.shards_done) == [f"shards/train-00000{i}.tar" for i in (1, 3, 4)]
    assert second.views == (100 + 100 + 50) * PLAN.views
    resumed, uninterrupted = _arrays(location), _arrays(cache)
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
    for name in ("teachers/regnet/topk_logits", "params"):  # done shards were not rewritten
        np.testing.assert_array_equal(resumed[name][:100], done_before[name][:100])

    third = teach(data, teacher_path, location)
    assert third.shards_done == [] and third.views == 0 and len(third.shards_skipped) == 5


def test_mismatched_options_leave_the_cache_untouched(
    tmp_path, data, teacher_path, cache, ray_local
):
    before = _arrays(cache)
    with pytest.raises(CacheMismatch, match="topk: 4 in cache vs 6"):
        teach(data, teacher_path, cache, topk=6)
    with pytest.raises(CacheMismatch, match="holds 3 views; asked for 2"):
        teach(data, teacher_path, cache, plan=type(PLAN)(seed=PLAN.seed, views=2))
    after = _arrays(cache)
    for name in ARRAYS:
        np.testing.assert_array_equal(before[name], after[name])


def test_corrupt_shard_is_reported_by_name_and_others_finish(
    tmp_path, data, teacher_path, ray_local
):
    copy = tmp_path / "data"
    shutil.copytree(data.location.rsplit("/", 1)[0], copy)
    tar = copy / "shards" / "train-000003.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    manifest = Manifest.read(str(copy))
    location = str(tmp_path / "cache.zarr")
    with pytest.raises(TeachFailed, match="train-000003.tar") as failure:
        teach(manifest, teacher_path, location)
    assert "4 shards computed, 0 skipped (already done), 1 failed" in str(failure.value)
    done = CacheStore.open(location).shard_done("regnet")  # per shard: all views done
    assert done.tolist() == [True, True, True, False, True, False, False]


def test_fsspec_urls_for_shards_manifest_and_cache(tmp_path, data, teacher_path, cache, ray_local):
    manifest = Manifest.read("file://" + data.location)
    assert manifest.shard_url(manifest.shards[0]).startswith("file://")
    location = "file://" + str(tmp_path / "cache.zarr")
    summary = teach(manifest, teacher_path, location, only_shards=[1])
    assert summary.shards_done == ["shards/train-000001.tar"]
    local = zarr.open_group(str(tmp_path / "cache.zarr"), mode="r")
    reference = zarr.open_group(cache, mode="r")
    for name in ARRAYS[:4]:
        np.testing.assert_array_equal(local[name][100:200], reference[name][100:200], err_msg=name)


def test_one_worker_gives_the_same_cache_as_two(tmp_path, data, teacher_path, cache, ray_local):
    assert ray_local.cluster_resources()["CPU"] >= 2  # the session cache was made by 2 actors
    location = str(tmp_path / "cache.zarr")
    teach(data, teacher_path, location, workers=1)
    one, two = _arrays(location), _arrays(cache)
    for name in ARRAYS:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
