"""teach on a real 2-node Ray cluster on this machine (a head without CPUs, two worker nodes
of one CPU, token authentication): ``--address auto`` finds it and the cache equals a local
run; a worker node killed mid-job is survived with spare capacity and fails within a bounded
time without it, and a rerun completes; an unreachable cluster or a missing token is one line."""

import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from tests.conftest import PLAN, TOPK
from tests.ray_nodes import LocalCluster

pytestmark = pytest.mark.slow

ARRAYS = ["params"] + [
    f"teachers/regnet/{name}"
    for name in ("topk_logits", "topk_index", "logsumexp", "shard_done", "shard_checksum")
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster(str(tmp_path_factory.mktemp("ray-cluster")), head_cpus=0)
    try:
        nodes.add_worker()
        nodes.add_worker()
        yield nodes
    finally:
        nodes.close()


def _teach(data, teacher_path, cache, env, *options) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "kdcache.tools.cli.main", "teach", "--data", data.location,
        "--cache", str(cache), "--teacher", f"regnet={teacher_path}", "--views", str(PLAN.views),
        "--plan-seed", str(PLAN.seed), "--topk", str(TOPK), "--batch-size", "128", "--quiet",
        *options,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finished(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _assert_same_cache(location, uninterrupted) -> None:
    got, want = zarr.open_group(str(location), mode="r"), zarr.open_group(uninterrupted, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name][:], want[name][:], err_msg=name)


def _done(cache) -> np.ndarray:
    """The (shard id, view) done flags on disk (every split's shards; teach does the train
    shards); empty before the cache exists."""
    try:
        return zarr.open_group(str(cache), mode="r")["teachers/regnet/shard_done"][:].astype(bool)
    except Exception:  # not created yet
        return np.zeros((0, PLAN.views), dtype=bool)


def _regions_done(cache) -> int:
    return int(_done(cache).sum())


def _when_started(process: subprocess.Popen, cache) -> bool:
    """Wait until the job has written a region; False if it ended first."""
    deadline = time.monotonic() + 180
    while _regions_done(cache) < 1:
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)
    return process.poll() is None and _regions_done(cache) < 5 * PLAN.views


def test_teach_on_two_nodes_found_with_address_auto_equals_a_local_run(
    cluster, tmp_path, data, teacher_path, cache
):
    code, out, err = _finished(_teach(data, teacher_path, tmp_path / "c.zarr", cluster.env,
                                      "--address", "auto"))  # fmt: skip
    assert code == 0, err[-3000:]
    assert "starting 2 workers" in out  # one actor on each worker node
    _assert_same_cache(tmp_path / "c.zarr", cache)


def test_a_worker_node_lost_with_spare_capacity_is_survived_with_the_same_cache(
    cluster, tmp_path, data, teacher_path, cache
):
    for attempt in range(3):  # on a fast machine the job may finish before the kill lands
        location = tmp_path / f"c{attempt}.zarr"
        job = _teach(data, teacher_path, location, cluster.env, "--address", cluster.address,
                     "--workers", "1")  # fmt: skip
        if _when_started(job, location):
            node = cluster.holding("ray::ShardWorker")
            if node is not None and job.poll() is None:
                cluster.kill(node)
                cluster.add_worker()  # the spare node stays spare: the job moved to the other
                break
        assert _finished(job)[0] == 0
    else:
        pytest.fail("the job finished before a node could be killed, three times")
    code, out, err = _finished(job)
    assert code == 0, err[-3000:]
    assert "1 workers lost; their shards were redone" in out
    _assert_same_cache(location, cache)


def test_worker_nodes_lost_without_capacity_fail_in_bounded_time_and_a_rerun_completes(
    cluster, tmp_path, data, teacher_path, cache
):
    train = len(data.shards_of("train"))
    for attempt in range(3):  # the job may finish its last shards before the kills land
        location = tmp_path / f"c{attempt}.zarr"
        job = _teach(data, teacher_path, location, cluster.env, "--address", cluster.address)
        if not _when_started(job, location):
            assert _finished(job)[0] == 0
            continue
        for node in list(cluster.workers):
            cluster.kill(node)
        killed = time.monotonic()
        try:
            code, _, err = _finished(job, timeout=120)
        finally:
            cluster.add_worker()
            cluster.add_worker()
        left = train - int(_done(location).all(axis=1).sum())  # train shards not done on disk
        if code == 0:  # only with every shard done: the kills came too late
            assert left == 0, err[-3000:]
            continue
        assert time.monotonic() - killed < 120
        last = err.strip().splitlines()[-1]
        assert code == 2, err[-3000:]
        assert last.startswith("kdcache teach: error: the Ray cluster lost every teach worker and "
                               "has no room for another: each needs 1 CPUs and 0 GPUs"), last  # fmt: skip
        assert "shards not done" in last
        if left:  # else the last writes landed and only their replies were lost: retried
            break
    else:
        pytest.fail("the job finished its shards before the nodes could be killed, three times")

    code, out, err = _finished(_teach(data, teacher_path, location, cluster.env,
                                      "--address", cluster.address))  # fmt: skip
    assert code == 0, err[-3000:]
    assert f"teach: {left} shards computed, {train - left} skipped (already done), 0 failed" in out
    _assert_same_cache(location, cache)


def test_an_unreachable_cluster_and_a_missing_token_are_one_line_errors(
    cluster, tmp_path, data, teacher_path
):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    tokenless = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    tokenless["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    # Ray's driver retries a refused GCS connection NUM_REDIS_GET_RETRIES times, 1 s apart (20
    # by default): the refusal and its message are the same after fewer
    tokenless["RAY_NUM_REDIS_GET_RETRIES"] = "2"
    began = time.monotonic()  # the two commands run side by side
    unreachable = _teach(data, teacher_path, tmp_path / "a.zarr", cluster.env,
                         "--address", f"127.0.0.1:{port}")  # fmt: skip
    refused = _teach(data, teacher_path, tmp_path / "b.zarr", tokenless,
                     "--address", cluster.address)  # fmt: skip
    code, _, err = _finished(unreachable, timeout=60)
    assert code == 2 and time.monotonic() - began < 60
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"kdcache teach: error: no Ray cluster answers at 127.0.0.1:{port}")
    ), err[-2000:]
    assert not (tmp_path / "a.zarr").exists()  # refused before anything is written

    code, _, err = _finished(refused, timeout=120)
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        f"kdcache teach: error: the Ray cluster at {cluster.address} requires token "
        "authentication: set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, a file "
        "named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token) in this environment"
    )
