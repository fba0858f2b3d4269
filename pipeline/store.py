"""The cache store (format ``kdcache/1``): a Zarr v3 group of teacher targets per view.

Part of the contract between ``pipeline`` and ``trainer``. Layout::

    cache.zarr/                      attrs: format, dataset, splits, plan, topk, tool_version, created
      params          float32 (N, V, P)  view params (names in attrs.plan.param_names); NaN = unwritten
      teachers/<name>/                   attrs: teacher identity (arch, weights sha256, preprocessing)
        topk_logits     float16 (N, V, K)  the K largest logits, descending; NaN = unwritten
        topk_index      int16|int32 (N, V, K)  their class ids; -1 = unwritten
        logsumexp       float32 (N, V)     log sum exp over all logits
        shard_done      uint8 (S,)         1 once the shard's region is written and checksummed
        shard_checksum  uint64 (S,)        blake2b-64 of the shard's region (see ``region_checksum``)

N is the manifest's row-id space (shard s owns rows s*shard_size ...); chunks along rows are
one shard long, and the ledger arrays have one chunk per shard, so every writer owns whole
chunks and concurrent shard writers never share one.
"""

import datetime
import hashlib
from dataclasses import dataclass

import numpy as np
import zarr
from zarr.codecs import BloscCodec

import pipeline
from pipeline.manifest import Manifest, ShardInfo
from pipeline.plan import PARAM_NAMES, ViewPlan

FORMAT = "kdcache/1"
TARGET_ARRAYS = ("topk_logits", "topk_index", "logsumexp")
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)


@dataclass
class ShardTargets:
    """One shard's block: params (n, V, P) and a teacher's targets for the same rows."""

    params: np.ndarray
    topk_logits: np.ndarray
    topk_index: np.ndarray
    logsumexp: np.ndarray


def region_checksum(block: ShardTargets) -> int:
    """blake2b (8 bytes, little-endian uint64) over params, topk_logits, topk_index, logsumexp."""
    digest = hashlib.blake2b(digest_size=8)
    for name in ("params", *TARGET_ARRAYS):
        values = np.ascontiguousarray(getattr(block, name))
        digest.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return int.from_bytes(digest.digest(), "little")


def index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


class CacheMismatch(ValueError):
    """A cache does not match the manifest, plan or options it is used with."""


class CacheStore:
    """A kdcache Zarr group opened for reading or writing."""

    def __init__(self, location: str, group: zarr.Group):
        self.location = location
        self.group = group
        self.attrs = group.attrs.asdict()
        if self.attrs.get("format") != FORMAT:
            raise CacheMismatch(
                f"{location}: format is {self.attrs.get('format')!r}, expected {FORMAT!r} "
                "(not a kdcache store, or its creation was interrupted)"
            )
        self.plan = ViewPlan.from_attrs(self.attrs["plan"])
        self.topk: int = self.attrs["topk"]
        self.shard_size: int = self.attrs["dataset"]["shard_size"]

    @classmethod
    def open(cls, location: str, mode: str = "r") -> "CacheStore":
        """Open an existing cache: ``mode`` ``r`` to read, ``r+`` to write."""
        try:
            group = zarr.open_group(location, mode=mode)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{location}: no cache here") from error
        return cls(location, group)

    @classmethod
    def create(
        cls,
        location: str,
        *,
        manifest: Manifest,
        plan: ViewPlan,
        topk: int,
        splits: list[str],
    ) -> "CacheStore":
        """Create an empty cache for ``manifest`` and ``plan``; ``format`` is written last."""
        if not 1 <= topk <= manifest.num_classes:
            raise ValueError(f"--topk must lie in 1..{manifest.num_classes}, got {topk}")
        group = zarr.open_group(location, mode="w-")
        n, v = manifest.num_rows, plan.views
        group.create_array(
            "params",
            shape=(n, v, len(PARAM_NAMES)),
            chunks=(manifest.shard_size, v, len(PARAM_NAMES)),
            dtype="float32",
            fill_value=np.nan,
            compressors=_COMPRESSORS,
        )
        group.require_group("teachers")
        group.attrs.update(
            {
                "dataset": {
                    "name": manifest.meta["dataset"],
                    "fingerprint": manifest.fingerprint,
                    "num_rows": n,
                    "num_shards": len(manifest.shards),
                    "shard_size": manifest.shard_size,
                    "num_classes": manifest.num_classes,
                },
                "splits": sorted(splits),
                "plan": plan.to_attrs(),
                "topk": topk,
                "tool_version": pipeline.__version__,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
        )
        group.attrs["format"] = FORMAT
        return cls(location, group)

    # -- identity checks -------------------------------------------------------------------
    def mismatches(
        self,
        manifest: Manifest,
        plan: ViewPlan | None = None,
        topk: int | None = None,
        splits: list[str] | None = None,
    ) -> list[str]:
        """Every field in which this cache differs from what it is being used with."""
        found = []
        dataset = self.attrs["dataset"]
        if dataset["fingerprint"] != manifest.fingerprint:
            found.append(
                f"dataset.fingerprint: cache {dataset['fingerprint'][:12]} vs "
                f"manifest {manifest.fingerprint[:12]} ({manifest.location})"
            )
        elif dataset["shard_size"] != manifest.shard_size:
            found.append(
                f"dataset.shard_size: cache {dataset['shard_size']} vs {manifest.shard_size}"
            )
        if plan is not None:
            found += [d.replace(" vs ", " in cache vs ", 1) for d in self.plan.differences(plan)]
        if topk is not None and topk != self.topk:
            found.append(f"topk: {self.topk} in cache vs {topk}")
        if splits is not None and sorted(splits) != self.attrs["splits"]:
            found.append(f"splits: {self.attrs['splits']} in cache vs {sorted(splits)}")
        return found

    def check_matches(self, manifest: Manifest, **options) -> None:
        """Raise :class:`CacheMismatch` naming every differing field."""
        found = self.mismatches(manifest, **options)
        if found:
            raise CacheMismatch(f"{self.location} does not match: " + "; ".join(found))

    # -- teachers ----------------------------------------------------------------------------
    @property
    def teacher_names(self) -> list[str]:
        return sorted(self.group["teachers"].group_keys())

    def teacher_identity(self, name: str) -> dict:
        return self._teacher(name).attrs.asdict()

    def _teacher(self, name: str) -> zarr.Group:
        if name not in self.teacher_names:
            raise CacheMismatch(
                f"{self.location}: no teacher {name!r}; it has {self.teacher_names}"
            )
        return self.group["teachers"][name]

    def add_teacher(self, identity: dict) -> None:
        """Create a teacher's arrays, or check that an existing teacher of that name is the same."""
        name = identity["name"]
        if name in self.teacher_names:
            stored = self.teacher_identity(name)
            differing = [
                f"teacher.{key}: {stored.get(key)!r} in cache vs {identity[key]!r}"
                for key in identity
                if key != "source" and stored.get(key) != identity[key]
            ]
            if differing:
                raise CacheMismatch(f"{self.location}: " + "; ".join(differing))
            return
        dataset = self.attrs["dataset"]
        n, v, k, s = dataset["num_rows"], self.plan.views, self.topk, dataset["num_shards"]
        group = self.group["teachers"].create_group(name)
        rows = self.shard_size
        specs = {
            "topk_logits": ((n, v, k), (rows, v, k), "float16", np.nan),
            "topk_index": ((n, v, k), (rows, v, k), index_dtype(dataset["num_classes"]), -1),
            "logsumexp": ((n, v), (rows, v), "float32", np.nan),
            "shard_done": ((s,), (1,), "uint8", 0),
            "shard_checksum": ((s,), (1,), "uint64", 0),
        }
        for array, (shape, chunks, dtype, fill) in specs.items():
            group.create_array(
                array,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=fill,
                compressors=_COMPRESSORS,
            )
        group.attrs.update(identity)

    # -- ledger and regions --------------------------------------------------------------------
    def shard_done(self, teacher: str) -> np.ndarray:
        """Boolean per shard: region fully written and checksummed."""
        return self._teacher(teacher)["shard_done"][:].astype(bool)

    def is_done(self, teacher: str, shard_id: int) -> bool:
        """Whether one shard is done (reads only that shard's ledger chunk)."""
        return bool(self._teacher(teacher)["shard_done"][shard_id])

    def shard_checksums(self, teacher: str) -> np.ndarray:
        return self._teacher(teacher)["shard_checksum"][:]

    def _rows(self, shard: ShardInfo) -> slice:
        start = shard.id * self.shard_size
        return slice(start, start + shard.num_rows)

    def write_shard(self, teacher: str, shard: ShardInfo, block: ShardTargets) -> int:
        """Write a shard's whole region, then its checksum, then mark it done; return the checksum.

        Any earlier partial write of the region (a crash) is overwritten, never trusted.
        """
        group = self._teacher(teacher)
        rows = self._rows(shard)
        self.group["params"][rows] = block.params
        for name in TARGET_ARRAYS:
            group[name][rows] = getattr(block, name)
        checksum = region_checksum(block)
        group["shard_checksum"][shard.id] = np.uint64(checksum)
        group["shard_done"][shard.id] = 1
        return checksum

    def read_shard(self, teacher: str, shard: ShardInfo) -> ShardTargets:
        """A shard's whole block: one read per array."""
        group = self._teacher(teacher)
        rows = self._rows(shard)
        return ShardTargets(
            params=self.group["params"][rows],
            **{name: group[name][rows] for name in TARGET_ARRAYS},
        )

    def read_params(self, shard: ShardInfo) -> np.ndarray:
        """A shard's stored view params (n, V, P)."""
        return self.group["params"][self._rows(shard)]
