"""The Ray teacher job: resume after interruption, and bad shards reported by name."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import zarr

from kdcache.pipeline.cache import CacheMismatch, CacheStore
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import TeachFailed
from kdcache.verify_cache import verify_cache
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


def test_workers_that_cannot_be_placed_fail_within_a_bounded_time(
    tmp_path, data, teacher_path, ray_local
):
    location = str(tmp_path / "cache.zarr")
    # no node of the (2-CPU) local Ray fits a 4-CPU worker: one line, exit 2, no waiting
    command = [sys.executable, "-m", "kdcache.tools.cli.main", "teach", "--data", data.location,
               "--cache", str(tmp_path / "cli.zarr"), "--teacher", teacher_path,
               "--cpus-per-worker", "4", "--quiet"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "4 CPUs" in result.stderr
    with pytest.raises(ValueError, match="1 GPUs"):  # a GPU worker on a cluster without GPUs
        teach(data, teacher_path, location, gpus_per_worker=1)
    # the CPUs exist but another job holds them: refused once --placement-timeout is over
    from ray.util.placement_group import placement_group, remove_placement_group

    blocker = placement_group([{"CPU": 2}])
    ray_local.get(blocker.ready())
    began = time.monotonic()
    try:
        with pytest.raises(TeachFailed, match="no worker was placed within 3s"):
            teach(data, teacher_path, location, placement_timeout=3)
    finally:
        remove_placement_group(blocker)
    assert time.monotonic() - began < 30
    deadline = time.monotonic() + 20  # no worker left waiting to take the CPUs once freed
    while ray_local.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    assert ray_local.available_resources().get("CPU", 0) == 2


def test_only_shards_outside_the_manifest_or_the_splits_are_refused(
    tmp_path, data, teacher_path, ray_local
):
    location = tmp_path / "cache.zarr"
    with pytest.raises(ValueError, match="only_shards: no shard 9 ") as refusal:
        teach(data, teacher_path, str(location), only_shards=[0, 9])
    assert "\n" not in str(refusal.value)
    with pytest.raises(ValueError, match="only_shards: shard 5 is a test shard"):
        teach(data, teacher_path, str(location), only_shards=[5])
    assert not location.exists()


def test_teacher_path_is_stored_resolved_so_verify_works_elsewhere(
    tmp_path, data, teacher_path, ray_local, monkeypatch
):
    location = str(tmp_path / "cache.zarr")
    shutil.copy(teacher_path, tmp_path / "teacher.pth")  # inside the cache's folder
    monkeypatch.chdir(tmp_path)
    teach(data, "teacher.pth", location, only_shards=[0])
    assert CacheStore.open(location).teacher_identity("regnet")["source"] == str(
        tmp_path / "teacher.pth"
    )
    monkeypatch.chdir(os.path.dirname(teacher_path))
    report = verify_cache(location, data.location, samples=4)
    assert report.ok and report.views_recomputed == 4, report.problems


def _kill_a_worker_once_it_has_written(location: str, killed: list) -> None:
    """SIGKILL this session's ShardWorker process once a region is done (a lost worker)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        try:
            done = zarr.open_group(location, mode="r")["teachers/regnet/shard_done"][:].sum()
        except Exception:  # not created yet
            done = 0
        workers = []
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):  # Ray's processes come and go
                if "ShardWorker" in " ".join(process.cmdline()):
                    workers.append(process)
        if done and workers:
            workers[0].send_signal(signal.SIGKILL)
            killed.append(workers[0].pid)
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_its_shard_retried(
    tmp_path, data, teacher_path, cache, ray_local
):
    location = str(tmp_path / "cache.zarr")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_once_it_has_written, args=(location, killed))
    killer.start()
    summary = teach(data, teacher_path, location, workers=1)
    killer.join()
    assert killed, "the worker finished before it could be killed"
    assert not summary.shards_failed and len(summary.shards_done) == 5
    resumed, uninterrupted = _arrays(location), _arrays(cache)
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
