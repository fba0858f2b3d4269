"""The errors kdcache raises. Their messages speak of data and fields (file, shard, key,
teacher, view; expected vs found), never of command-line flags; the CLI prints them as one
line and exits 2 (``KDCACHE_DEBUG=1`` shows the traceback)."""


class KdcacheError(Exception):
    """Base of every error kdcache raises for bad input or a state it refuses."""


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
