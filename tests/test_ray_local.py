"""A local teach keeps its Ray to itself: every port it listens on is on the loopback
interface, and a cluster address is used only when the user gives one; its workers run at
the command's own priority; with ``--quiet`` it prints nothing on stderr (Ray's notice that
the new local Ray uses token authentication is kept off it)."""

import contextlib
import ipaddress
import os
import subprocess
import sys
import time

import psutil

from tests.conftest import PLAN, TOPK


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _listening(root: psutil.Process, nice: dict[str, set[int]]) -> dict[tuple[str, int], str]:
    """The (address, port) every process of ``root``'s tree listens on, with its name; the
    nice levels of its Ray workers (``ray::...``) are added to ``nice``."""
    names = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            names[process.pid] = process.name()
            if names[process.pid].startswith("ray::"):
                nice.setdefault(names[process.pid], set()).add(process.nice())
        except psutil.NoSuchProcess:
            continue
    return {
        (c.laddr.ip, c.laddr.port): names[c.pid]
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in names
    }


def test_a_local_teach_listens_on_loopback_only_and_ignores_ray_address(
    tmp_path, data, teacher_path
):
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # a cluster the user did not ask for
    command = [
        sys.executable, "-m", "kdcache.tools.cli.main", "teach", "--data", data.location,
        "--cache", str(tmp_path / "cache.zarr"), "--teacher", f"regnet={teacher_path}",
        "--views", str(PLAN.views), "--plan-seed", str(PLAN.seed), "--topk", str(TOPK),
        "--workers", "1", "--quiet",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root, seen, nice = psutil.Process(process.pid), {}, {}
    deadline = time.monotonic() + 180
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.NoSuchProcess):
            seen.update(_listening(root, nice))
        time.sleep(0.2)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]
    assert err == b"", err.decode()[-2000:]  # --quiet: not even Ray's notice of token auth
    assert b"1 shards computed" not in out and b"5 shards computed" in out
    names = set(seen.values())
    assert {"gcs_server", "raylet"} <= names, seen  # Ray's servers were seen listening
    assert any(name.startswith("ray::") for name in names), seen  # and a worker's
    exposed = {address: name for address, name in seen.items() if not _loopback(address[0])}
    assert exposed == {}, f"listening beyond the loopback interface: {exposed}"
    # the actor's name, whole from its command line or cut to the kernel's 15 characters
    assert any(name.startswith("ray::ShardWorke") for name in nice), nice
    assert set().union(*nice.values()) == {os.nice(0)}, nice  # Ray's default: 15 levels below
