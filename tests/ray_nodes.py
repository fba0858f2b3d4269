"""A real multi-node Ray cluster on this machine, started as README "Running on a cluster"
says: ``ray start --head`` and ``ray start --address HEAD`` per worker node, with token
authentication. Each node is its own ``ray start --block`` process tree, so a test can kill a
worker node whole (SIGKILL: raylet, agents and its actors at once) as a lost machine."""

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

import psutil

TOKEN = "kdcache-test-token-" + "0123456789abcdef" * 3  # the cluster's auth token
# the head notices a dead node in ~3 s instead of Ray's default ~15 s
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class LocalCluster:
    """A head of ``head_cpus`` CPUs; :meth:`add_worker` adds worker nodes. ``env`` is what a
    client of this cluster runs with (its Ray temp folder, ``RAY_AUTH_MODE=token`` and the
    token), so ``--address auto`` in it finds this cluster and no other."""

    def __init__(self, root: str, head_cpus: int = 0):
        self.root = root
        self.env = {
            **{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"},
            # short: Ray's socket paths under it must stay within 107 bytes
            "RAY_TMPDIR": tempfile.mkdtemp(prefix="kdc-ray-"),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": TOKEN,
            **FAST_HEALTH_CHECKS,
        }
        self.workers: list[psutil.Popen] = []
        self.head = self._start("head", "--head", "--port=0", f"--num-cpus={head_cpus}",
                                "--include-dashboard=false")  # fmt: skip
        with open(os.path.join(self.env["RAY_TMPDIR"], "ray", "ray_current_cluster")) as f:
            self.address = f.read().strip()

    def _start(self, name: str, *args: str) -> psutil.Popen:
        """``ray start ARGS --block``, returning once the node runs (its log says so)."""
        log = os.path.join(self.root, f"{name}-{time.monotonic_ns()}.log")
        command = ["ray", "start", *args, "--disable-usage-stats", "--block"]
        with open(log, "w") as out:
            node = psutil.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in pathlib.Path(log).read_text():
            assert node.poll() is None, pathlib.Path(log).read_text()[-3000:]
            assert time.monotonic() < deadline, f"{name} node did not start: {log}"
            time.sleep(0.2)
        return node

    def add_worker(self, cpus: int = 1) -> psutil.Popen:
        node = self._start("worker", f"--address={self.address}", f"--num-cpus={cpus}")
        self.workers.append(node)
        return node

    def holding(self, name: str) -> psutil.Popen | None:
        """The worker node whose process tree runs a process whose name starts with ``name``
        (an actor: ``ray::ShardWorker``, ``ray::ShardWorker.process`` while it computes)."""
        for node in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                if any(p.name().startswith(name) for p in node.children(recursive=True)):
                    return node
        return None

    def kill(self, node: psutil.Popen) -> None:
        """SIGKILL a node's whole process tree, as a machine that is lost."""
        victims = [node, *node.children(recursive=True)]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)
        if node in self.workers:
            self.workers.remove(node)

    def close(self) -> None:
        for node in [*self.workers, self.head]:
            self.kill(node)
        shutil.rmtree(self.env["RAY_TMPDIR"], ignore_errors=True)
