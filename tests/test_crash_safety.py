"""SIGKILL the teacher job at several points, rerun it, and get the uninterrupted cache;
two runs on one cache are kept apart by the run lock."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import zarr

from kdcache.pipeline.cache import CacheBusy, RunLock, lock_holder
from tests.conftest import PLAN, TOPK, teach

ARRAYS = ["params"] + [
    f"teachers/regnet/{name}"
    for name in ("topk_logits", "topk_index", "logsumexp", "shard_done", "shard_checksum")
]


def _teach_process(data, teacher_path, cache) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "kdcache.tools.cli.main", "teach", "--data", data.location, "--cache", cache,
        "--teacher", f"regnet={teacher_path}", "--views", str(PLAN.views),
        "--plan-seed", str(PLAN.seed), "--topk", str(TOPK), "--batch-size", "128",
        "--workers", "1", "--quiet",
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _job_tree(process: subprocess.Popen) -> list[psutil.Process]:
    """The job and every process it started (its local Ray too); none once it has ended."""
    try:
        job = psutil.Process(process.pid)
        return [job, *job.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_all(victims: list[psutil.Process], signum: int) -> None:
    for victim in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signum)


def _regions_done(cache: str) -> int:
    try:
        return int(zarr.open_group(cache, mode="r")["teachers/regnet/shard_done"][:].sum())
    except Exception:  # not created yet
        return 0


def _killed_after(data, teacher_path, location: str, kill_after: int) -> np.ndarray:
    """Start a teach job, SIGKILL it (as a lost node) once ``kill_after`` regions are done: the
    done flags. From one shard before the kill point the job is frozen (SIGSTOP) while the flags
    are read, so the reading's own time cannot let it run past the point; a job that finished
    anyway returns all flags set."""
    process = _teach_process(data, teacher_path, location)
    deadline = time.monotonic() + 120
    while True:
        near = _regions_done(location) >= max(1, kill_after - PLAN.views)
        victims = _job_tree(process) if near else []
        _signal_all(victims, signal.SIGSTOP)
        if _regions_done(location) >= kill_after or process.poll() is not None:
            break
        _signal_all(victims, signal.SIGCONT)
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.005 if near else 0.02)
    assert process.poll() in (None, 0), process.stderr.read().decode()
    victims += _job_tree(process) if process.poll() is None else []  # or what is left of it
    _signal_all(victims, signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    return zarr.open_group(location, mode="r")["teachers/regnet/shard_done"][:5].astype(bool)


# regions done when killed: after the first shard (the kill lands in a full shard early in the
# job, most of it redone) and after the fourth (it lands in the last, short shard: the
# store's partial edge chunk); a kill between two middle shards behaves as the first
@pytest.mark.parametrize("kill_after", [1, 12])
def test_sigkill_then_rerun_gives_the_uninterrupted_cache(
    tmp_path, data, teacher_path, cache, ray_local, kill_after
):
    for attempt in range(3):  # on a fast machine the job may finish before the kill lands
        location = str(tmp_path / f"cache-{attempt}.zarr")
        done = _killed_after(data, teacher_path, location, kill_after)
        if done.sum() < 5 * PLAN.views:
            break
    assert kill_after <= done.sum() < 5 * PLAN.views, "killed too late to test a resume"

    summary = teach(data, teacher_path, location)
    rows = np.array([s.num_rows for s in data.shards_of("train")])
    assert summary.views == int((~done * rows[:, None]).sum())  # done regions are not redone
    resumed = zarr.open_group(location, mode="r")
    uninterrupted = zarr.open_group(cache, mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(resumed[name][:], uninterrupted[name][:], err_msg=name)
    again = teach(data, teacher_path, location)
    assert again.views == 0 and again.shards_done == []


def test_a_live_run_keeps_others_out_and_a_dead_one_does_not(tmp_path):
    cache = str(tmp_path / "cache.zarr")
    with RunLock(cache, stale_after=60), pytest.raises(CacheBusy, match="is being written by run"):
        RunLock(cache, stale_after=60).__enter__()
    assert not os.path.exists(cache + ".run-lock.json")  # released on exit
    # a lock left by a process that is gone (same host) is taken over at once
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    with open(cache + ".run-lock.json", "w") as f:
        json.dump({"run": "x" * 32, "host": os.uname().nodename, "pid": int(dead.stdout),
                   "heartbeat": time.time()}, f)  # fmt: skip
    with RunLock(cache, stale_after=60):
        pass
    # a lock from another host is honoured until its heartbeat is stale
    with open(cache + ".run-lock.json", "w") as f:
        json.dump({"run": "y" * 32, "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 5}, f)
    with pytest.raises(CacheBusy, match="host elsewhere"):
        RunLock(cache, stale_after=60).__enter__()
    with RunLock(cache, stale_after=2):
        pass


_HOLD_LOCK = """
import sys, time
from kdcache.pipeline.cache import RunLock
with RunLock(sys.argv[1], stale_after=1.0) as lock:
    print(lock.owner["run"], flush=True)
    end = time.time() + 20
    while not getattr(lock, "lost", False) and time.time() < end:  # it learns it lost the lock
        time.sleep(0.05)
    print(lock.lost, flush=True)
"""


def test_a_paused_run_whose_lock_was_taken_over_stops_and_never_writes_it_again(tmp_path):
    cache = str(tmp_path / "cache.zarr")
    paused = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, cache], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = paused.stdout.readline().strip()
        assert lock_holder(cache) == first, paused.stderr.read()
        paused.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # its heartbeat goes stale
        with RunLock(cache, stale_after=1.0) as lock:  # another run takes the lock over
            paused.send_signal(signal.SIGCONT)
            holders = set()
            for _ in range(20):  # several heartbeats of both runs
                holders.add(lock_holder(cache))
                time.sleep(0.1)
            assert holders == {lock.owner["run"]}
            assert paused.stdout.readline().strip() == "True", paused.stderr.read()
            assert paused.wait(timeout=10) == 0
            assert lock_holder(cache) == lock.owner["run"]  # the paused run left it alone
            assert not lock.lost
            lock.check()
        assert lock_holder(cache) is None
        with RunLock(cache, stale_after=1.0) as taken:
            with open(cache + ".run-lock.json", "w") as f:  # another run's lock now
                json.dump({"run": "z" * 32, "host": "elsewhere", "pid": 1, "heartbeat": 0}, f)
            with pytest.raises(CacheBusy, match="lost its lock"):
                taken.check()
    finally:
        paused.send_signal(signal.SIGCONT)
        paused.kill()
        paused.wait()
