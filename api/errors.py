"""The errors kdcache raises. Their messages speak of data and fields (file, shard, key,
teacher, view; expected vs found), never of command-line flags; the CLI prints them as one
line and exits 2 (``KDCACHE_DEBUG=1`` shows the traceback).

Raised inside a DataLoader worker, an error reaches the training process re-made by torch
with the worker's whole traceback as its message; :class:`KdcacheError` keeps only the
original message (plus which worker), so the CLI's one line stays one line."""

import re

_WORKER = re.compile(
    r"^Caught (?P<type>\w+) in DataLoader worker process (?P<worker>\d+)\.\n"
    r"Original Traceback \(most recent call last\):\n",
)


class KdcacheError(Exception):
    """Base of every error kdcache raises for bad input or a state it refuses.

    ``field``: the config field the error is about (``topk``, ``plan.views``,
    ``teacher.class_map``), for the command line to name its flag; the message itself speaks
    of fields, never of flags."""

    def __init__(self, *args, field: str | None = None):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0], type(self).__name__),)
        super().__init__(*args)
        self.field = field

    def __reduce__(self):  # keeps ``field`` across processes (Ray actors, DataLoader workers)
        return _rebuilt, (type(self), self.args, self.field)


def _rebuilt(kind: type, args: tuple, field: str | None) -> "KdcacheError":
    return kind(*args, field=field)


def _original_message(text: str, name: str) -> str:
    """``text`` itself, or, for torch's re-raise of a worker's error, the error's own message."""
    found = _WORKER.match(text)
    if found is None or found["type"] != name:
        return text
    tail = re.split(rf"\n(?:[\w.]+\.)?{name}: ", text)[-1]
    return f"{tail.strip()} (in DataLoader worker {found['worker']})"


class ConfigError(KdcacheError, ValueError):
    """Options that are out of range or do not fit together."""


class DataSplitError(ConfigError):
    """The data cannot be split over the ranks (or workers) as asked."""


class ManifestError(KdcacheError, ValueError):
    """A manifest is missing, malformed, or does not match its shards."""


class ShardError(KdcacheError, ValueError):
    """A shard's tar cannot be read or does not hold what the manifest says."""


class CacheMismatch(KdcacheError, ValueError):
    """A cache does not match the manifest, plan or options it is used with."""


class CacheBusy(KdcacheError, RuntimeError):
    """Another live run is writing this cache."""


class TeachFailed(KdcacheError, RuntimeError):
    """Some shards could not be computed (the others were written), or no worker started."""


class CacheCorrupt(KdcacheError, ValueError):
    """A cache region fails its stored checksum, holds non-finite targets, or its attrs no
    longer match the identity hash written with them."""


class OutputError(KdcacheError, OSError):
    """An output cannot be written: not writable, disk full, or another run is there."""


class RayUnavailable(KdcacheError, RuntimeError):
    """The Ray cluster cannot be reached, refuses this client, or has no room left for a
    teach worker."""


class RunStateError(KdcacheError, ValueError):
    """A run folder's saved state cannot be read safely or does not fit the run resuming it."""


class NotInCache(KdcacheError, IndexError):
    """A row, view or teacher a cache does not hold (or has not written yet)."""


class TargetsNotFinite(KdcacheError, ValueError):
    """A teacher's targets hold NaN or inf (or overflow the cache's storage type): refused
    before anything is written."""


class OutputExists(OutputError, FileExistsError):
    """An output is already there and the options do not say to replace it."""


class WeightsError(KdcacheError, ValueError):
    """A weights file or checkpoint does not hold what it should (format, keys, shapes)."""


class CacheNotFound(KdcacheError, FileNotFoundError):
    """No cache at a location, or none in the catalogue that fits."""
