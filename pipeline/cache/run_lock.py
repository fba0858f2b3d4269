"""One writing run per cache: a lock file with a heartbeat.

``kdcache teach`` takes ``<cache>.run-lock.json`` (beside the store) before it writes anything and keeps it
fresh from a background thread. Another run refuses to start while the lock is held by a
live run; a lock whose heartbeat is older than ``stale_after`` seconds, or whose process is
gone (same host), is taken over. Each shard region has one writer inside a run (one Ray
actor call per shard), so with one run per cache no two writers ever share a chunk; and a
worker checks that its run still holds the lock right before it writes (a fence against
workers that outlive a killed driver).

The heartbeat checks the holder before each beat: a run whose lock was taken over (it was
paused, or its heartbeat stalled) finds another run's id there, stops beating and counts as
``lost`` for good, so it never writes the lock again and its writers refuse to write.
"""

import json
import os
import socket
import threading
import time
import uuid

from kdcache.errors import CacheBusy
from kdcache.pipeline.data import storage


def lock_location(cache: str) -> str:
    """Where ``cache``'s run lock lives: beside the store."""
    return cache.rstrip("/") + ".run-lock.json"


LOCK_FIELDS = {"run": (str,), "host": (str,), "pid": (int,), "heartbeat": (int, float)}


def _read_lock(location: str) -> dict | None:
    """The lock's fields, None if there is none (or a writer's rename is half done); a lock
    that is not a JSON object of :data:`LOCK_FIELDS` is refused (:class:`CacheBusy`)."""
    fs, path = storage.filesystem(location)
    try:
        with fs.open(path, "r") as f:
            held = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(held, dict):
        raise CacheBusy(
            f"{location}: holds {type(held).__name__}, expected a JSON object with fields "
            f"{', '.join(LOCK_FIELDS)}; remove it if no run is writing this cache"
        )
    for field, types in LOCK_FIELDS.items():
        value = held.get(field)
        if not isinstance(value, types) or isinstance(value, bool):
            raise CacheBusy(
                f"{location}: field {field} is {value!r}, expected a "
                f"{' or '.join(t.__name__ for t in types)}; remove it if no run is writing "
                "this cache"
            )
    return held


def lock_holder(cache: str) -> str | None:
    """The run id holding ``cache``'s lock, if any (writers check it just before writing,
    so a worker left over from a dead run never writes once another run took over)."""
    return (_read_lock(lock_location(cache)) or {}).get("run")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Context manager holding a cache's run lock (see the module docstring)."""

    def __init__(self, cache: str, stale_after: float = 120.0):
        self.location = lock_location(cache)
        self.cache = cache
        self.stale_after = stale_after
        self.owner = {"run": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None
        self.fs, self.path = storage.filesystem(self.location)

    def _read(self) -> dict | None:
        return _read_lock(self.location)

    def _holds(self) -> bool:
        """Whether the lock file names this run (a malformed one names no run)."""
        try:
            return (self._read() or {}).get("run") == self.owner["run"]
        except CacheBusy:
            return False

    def _write(self) -> None:
        temporary = f"{self.path}.{self.owner['run']}.tmp"
        with self.fs.open(temporary, "w") as f:
            json.dump({**self.owner, "heartbeat": time.time()}, f)
        self.fs.mv(temporary, self.path)

    def _holder_alive(self, held: dict) -> bool:
        if time.time() - held["heartbeat"] > self.stale_after:
            return False
        if held["host"] == self.owner["host"]:
            return _process_alive(held["pid"])
        return True

    def __enter__(self) -> "RunLock":
        held = self._read()
        if held is not None and held.get("run") != self.owner["run"] and self._holder_alive(held):
            age = time.time() - held["heartbeat"]
            raise CacheBusy(
                f"{self.cache} is being written by run {held['run'][:8]} "
                f"(host {held['host']}, pid {held['pid']}, heartbeat {age:.0f}s ago); "
                f"wait for it, or remove {self.location} if that run is dead"
            )
        self.fs.makedirs(self.fs._parent(self.path), exist_ok=True)
        self._write()
        time.sleep(0.05)  # two runs starting together: the last writer wins, the other backs off
        if not self._holds():
            raise CacheBusy(f"{self.cache}: another run took the lock first")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    @property
    def lost(self) -> bool:
        """True once another run took this lock over (checked by every heartbeat)."""
        return self._lost.is_set()

    def check(self) -> None:
        """Raise :class:`CacheBusy` unless this run still holds the lock (read from the store)."""
        if not self.lost and not self._holds():
            self._lost.set()
        if self.lost:
            raise CacheBusy(f"{self.cache}: this run lost its lock to another run; stopped")

    def _beat(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            if not self._holds():
                self._lost.set()  # taken over (or removed): never write it again
                return
            self._write()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holds():
            self.fs.rm(self.path)
