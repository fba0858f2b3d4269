"""The cache store (formats ``kdcache/2``, written, and ``kdcache/1``, read and extended): a
Zarr v3 group of teacher targets per view.

Part of the contract between ``pipeline`` and ``trainer``. Layout (N rows, V views, K, S shards,
D sampled draws)::

    cache.zarr/          attrs: format, dataset, splits, plan, topk, samples, [sampling],
                                tool_version, created
      params             float32 (N, V, P)  view params (names and meanings in attrs.plan)
      teachers/<name>/   attrs: teacher identity (arch, weights sha256, preprocessing)
        topk_logits      float16 (N, V, K)  the K largest logits, descending
        topk_index       int16|int32 (N, V, K)  their class ids
        logsumexp        float32 (N, V)     log sum exp over all logits
        sample_index     int16|int32 (N, V, D)  only if attrs.samples = D > 0: D class ids drawn
                                            with replacement from the teacher's softmax, in draw
                                            order (how: attrs.sampling, pipeline.sampled_targets)
        shard_done       uint8 (S, V)       1 once view v of shard s is written and checksummed
        shard_checksum   uint64 (S, V)      blake2b-64 of that region (see ``region_checksum``)

Unwritten values read as NaN (floats) or -1 (class ids). A cache written before sampled
targets existed has no ``samples`` attr and no ``sample_index``: it reads as ``samples = 0``.
N is the manifest's row-id space (shard s owns rows s*shard_size ...). Chunks are one shard
long and one view wide, and the ledger has one chunk per (shard, view): every writer owns
whole chunks, and adding views (:meth:`CacheStore.grow_views`) never rewrites a chunk of an
existing view. ``attrs.plan.views``
counts the complete views; arrays may be wider while views are being added.

Format ``kdcache/2`` (``attrs.layout``) keeps these arrays and meanings but stores them in
Zarr shards, one object per (data shard, view block) per array, inner chunks one view wide
with a crc32c each (:mod:`layout`); with ``attrs.layout.target_dtype`` = ``q8`` a teacher's
targets are stored quantised (:mod:`quantize`; readers get them decoded), with ``q6`` packed
into one array ``topk_packed`` (:mod:`q6_layout`), and its ledger gains ``quant_kl`` (S, V):
the mean KL(fp32 targets || stored targets) of each region.

This module opens, creates and describes a cache (attrs, identity, teachers, views); blocks
are read and written by :mod:`block_io`, encoded by :mod:`codecs`, recorded in
:mod:`ledger` and checked by :mod:`integrity`; arrays are made by :mod:`zarr_arrays`.
"""

import datetime
import os

import numpy as np
import zarr

from kdcache import __version__
from kdcache.errors import CacheCorrupt, CacheMismatch, CacheNotFound, ConfigError
from kdcache.pipeline.cache.block_io import BlockIO
from kdcache.pipeline.cache.codecs import TargetCodec
from kdcache.pipeline.cache.feature_layout import (
    feature_specs,
    feature_view_bytes,
    matrix_sha256,
    slug,
)
from kdcache.pipeline.cache.id_sets import check_codable
from kdcache.pipeline.cache.integrity import (
    IDENTITY_ATTR,
    check_arrays,
    edited_fields,
    identity_digests,
    mismatches,
)
from kdcache.pipeline.cache.layout import ArraySpec, object_bytes, params_spec, teacher_specs
from kdcache.pipeline.cache.ledger import Ledger
from kdcache.pipeline.cache.quantize import TARGET_DTYPES
from kdcache.pipeline.cache.sampled_targets import SAMPLING_ATTRS
from kdcache.pipeline.cache.target_block import (
    SAMPLE_ARRAYS,
    TARGET_ARRAYS,
    ShardTargets,
    index_dtype,
    reduce_logits,
    region_checksum,
)
from kdcache.pipeline.cache.zarr_arrays import (
    FORMAT,
    FORMATS,
    create_format1,
    create_spec,
    open_group,
    write_projections,
)
from kdcache.pipeline.data import Manifest, urls
from kdcache.pipeline.views import ViewPlan

__all__ = ["FORMAT", "FORMATS", "CacheStore", "ShardTargets", "index_dtype", "reduce_logits",
           "region_checksum"]  # fmt: skip
MAX_VIEWS = 4096  # views a cache's arrays may hold: bounds what a read of its ledger allocates
# a teacher's set-up recorded in the cache that a request must match even when it leaves it out
# (a request without feature targets computes the cache's own)
SET_UP = ("arch", "weights_sha256", "num_classes", "model_args", "preprocessing", "key_map",
          "class_map")  # fmt: skip


class CacheStore(BlockIO):
    """A kdcache Zarr group opened for reading or writing."""

    def __init__(self, location: str, group: zarr.Group, storage_options: dict | None = None):
        self.location = location
        self._group, self._pid = group, os.getpid()
        self._options = storage_options
        self.attrs = group.attrs.asdict()
        self.format = self.attrs.get("format")
        if self.format not in FORMATS:
            raise CacheMismatch(
                f"{location}: format is {self.format!r}, expected one of {list(FORMATS)} "
                "(not a kdcache store, or its creation was interrupted)"
            )
        try:
            self.plan = ViewPlan.from_attrs(self.attrs["plan"])
        except ValueError as error:
            raise CacheMismatch(f"{location}: {error}") from None
        self.topk: int = self.attrs["topk"]
        self.samples: int = self.attrs.get("samples", 0)  # caches older than sampling: 0
        self.shard_size: int = self.attrs["dataset"]["shard_size"]
        layout = self.attrs.get("layout", {})  # format 1: none, fp16 targets
        self.target_dtype: str = layout.get("target_dtype", "fp16")
        self.view_block: int | None = layout.get("view_block")
        self._handles: dict[tuple[str | None, str], zarr.Array] = {}
        self._feature_targets: dict[str, list[dict]] = {}
        classes = self.attrs["dataset"]["num_classes"]
        self.codec = TargetCodec(self.target_dtype, self.topk, classes)
        self.ledger = Ledger(location, self._array, self._read_only, self.target_dtype)
        self._check_identity()
        self._check_arrays()

    @property
    def group(self) -> zarr.Group:
        """The Zarr group, reopened in a forked process (a DataLoader worker): an object
        store's client and event loop do not survive a fork."""
        if os.getpid() != self._pid:
            mode = "r" if self._group.read_only else "r+"
            self._group, self._pid = open_group(self.location, mode, self._options), os.getpid()
            self._handles.clear()  # arrays opened through the parent's group
        return self._group

    def _read_only(self) -> bool:
        return self.group.read_only

    @classmethod
    def open(
        cls, location: str, mode: str = "r", storage_options: dict | None = None
    ) -> "CacheStore":
        """Open an existing cache: ``mode`` ``r`` to read, ``r+`` to write; ``storage_options``
        go to fsspec for URLs (endpoint, credentials; default: :func:`storage.current`)."""
        try:
            group = open_group(location, mode, storage_options)
        except FileNotFoundError as error:
            raise CacheNotFound(f"{location}: no cache here") from error
        return cls(location, group, storage_options)

    @classmethod
    def create(
        cls,
        location: str,
        *,
        manifest: Manifest,
        plan: ViewPlan,
        topk: int,
        splits: list[str],
        samples: int = 0,
        target_dtype: str = "fp16",
    ) -> "CacheStore":
        """Create an empty cache for ``manifest`` and ``plan``; ``format`` is written last.

        ``samples`` > 0 adds sampled targets: that many class ids per view and teacher;
        ``target_dtype`` ``q8`` or ``q6`` stores the targets quantised (:mod:`quantize`,
        :mod:`q6_layout`)."""
        if not 1 <= topk <= manifest.num_classes:
            raise ConfigError(
                f"topk must lie in 1..{manifest.num_classes}, got {topk}", field="topk"
            )
        if samples < 0:
            raise ConfigError(f"samples must be 0 (none) or more, got {samples}", field="samples")
        if target_dtype not in TARGET_DTYPES:
            raise ConfigError(
                f"target_dtype must be one of {TARGET_DTYPES}, got {target_dtype!r}",
                field="target_dtype",
            )
        if target_dtype == "q6":
            check_codable(topk, manifest.num_classes)
        group = open_group(location, "w-", None)
        layout = {"target_dtype": target_dtype, "view_block": plan.views}
        sizes = (manifest.num_rows, len(manifest.shards), manifest.shard_size)
        create_spec(group, params_spec(len(plan.param_names)), sizes, plan.views, plan.views)
        group.require_group("teachers")
        attrs = {
                "dataset": {
                    "name": manifest.meta["dataset"],
                    "fingerprint": manifest.fingerprint,
                    "manifest": urls.relative_to(manifest.location, urls.parent(location)),
                    "num_rows": manifest.num_rows,
                    "num_shards": len(manifest.shards),
                    "shard_size": manifest.shard_size,
                    "num_classes": manifest.num_classes,
                },
                "splits": sorted(splits),
                "plan": plan.to_attrs(),
                "topk": topk,
                "samples": samples,
                **({"sampling": SAMPLING_ATTRS} if samples else {}),
                "layout": layout,
                "tool_version": __version__,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        attrs[IDENTITY_ATTR] = identity_digests({**attrs, "format": FORMAT}, {})
        group.attrs.update(attrs)
        group.attrs["format"] = FORMAT
        return cls(location, group)

    # -- identity checks -------------------------------------------------------------------
    def _identity_digests(self) -> dict[str, str]:
        teachers = {name: self.teacher_identity(name) for name in self.teacher_names}
        return identity_digests(self.attrs, teachers)

    def _check_identity(self) -> None:
        """Refuse attrs edited since written (see :mod:`integrity`); a cache older than the
        identity hash has none and is accepted (the next ``teach`` writes it)."""
        stored = self.attrs.get(IDENTITY_ATTR)
        if stored is None:
            return
        edited = [
            name
            for name in edited_fields(stored, self._identity_digests())
            # a teacher added by a run that stopped before hashing it, with nothing written
            if not (name not in stored and name.startswith("teachers/")
                    and not self.views_done(name.removeprefix("teachers/")).any())
        ]  # fmt: skip
        if edited:
            raise CacheCorrupt(
                f"{self.location}: attrs {', '.join(edited)} differ from the identity hash "
                f"written with them ({IDENTITY_ATTR}); the cache's description was edited after "
                "it was made and cannot be trusted (restore the attrs or re-teach)"
            )

    def _check_arrays(self) -> None:
        """Every array's shape, chunks and codecs as the attrs and the format say
        (:func:`~integrity.check_arrays`; format 1's arrays are format 2's fp16 ones)."""
        specs = {"params": params_spec(len(self.plan.param_names))}
        for name in self.teacher_names:
            specs |= {f"teachers/{name}/{spec.name}": spec for spec in self._specs(name)}
        check_arrays(self, specs, MAX_VIEWS)

    @property
    def identity_hashed(self) -> bool:
        """Whether the attrs carry the identity hash (caches made before it existed do not)."""
        return IDENTITY_ATTR in self.attrs

    def write_identity(self) -> None:
        """(Re)write the identity hash of the attrs as they are now (a writer, after checking
        them against its request)."""
        digests = self._identity_digests()
        self.group.attrs[IDENTITY_ATTR] = digests
        self.attrs[IDENTITY_ATTR] = digests

    def check_matches(self, manifest: Manifest, **options) -> None:
        """Raise :class:`CacheMismatch` naming every differing field
        (:func:`~integrity.mismatches`)."""
        found = mismatches(self, manifest, **options)
        if found:
            field = found[0].partition(":")[0]
            raise CacheMismatch(f"{self.location} does not match: " + "; ".join(found), field=field)

    # -- teachers ----------------------------------------------------------------------------
    @property
    def teacher_names(self) -> list[str]:
        return sorted(self.group["teachers"].group_keys())

    def teacher_identity(self, name: str) -> dict:
        return self._teacher(name).attrs.asdict()

    def _array(self, teacher: str | None, name: str) -> zarr.Array:
        """An array (``teacher`` None: ``params``), its metadata read once per store object:
        a reader's requests are then its chunks' alone."""
        key, root = (teacher, name), self.group  # in a forked worker: reopened, handles dropped
        if key not in self._handles:
            group = root if teacher is None else self._teacher(teacher)
            self._handles[key] = group[name]
        return self._handles[key]

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
            keys = [*identity, *(k for k in stored if k in SET_UP and k not in identity)]
            differing = [
                f"teacher.{key}: {stored.get(key)!r} in cache vs {identity.get(key)!r}"
                for key in keys
                if key != "source" and stored.get(key) != identity.get(key)
            ]
            if differing:
                field = differing[0].partition(":")[0]
                raise CacheMismatch(f"{self.location}: " + "; ".join(differing), field=field)
            return
        dataset = self.attrs["dataset"]
        n, k, s = dataset["num_rows"], self.topk, dataset["num_shards"]
        v, rows = self.array_views, self.shard_size
        group = self.group["teachers"].create_group(name)
        classes = index_dtype(dataset["num_classes"])
        targets = identity.get("features", [])
        if targets and self.format != FORMAT:
            raise CacheMismatch(f"{self.location}: feature targets need format {FORMAT}")
        if self.format == FORMAT:
            for spec in self._specs(name, targets):
                create_spec(group, spec, (n, s, rows), v, self.view_block)
            write_projections(group, targets)
            group.attrs.update(identity)
            self.write_identity()
            return
        create_format1(group, "topk_logits", (n, v, k), (rows, 1, k), "float16", np.nan)
        create_format1(group, "topk_index", (n, v, k), (rows, 1, k), classes, -1)
        create_format1(group, "logsumexp", (n, v), (rows, 1), "float32", np.nan)
        if self.samples:
            shape, chunks = (n, v, self.samples), (rows, 1, self.samples)
            create_format1(group, "sample_index", shape, chunks, classes, -1)
        create_format1(group, "shard_done", (s, v), (1, 1), "uint8", 0)
        create_format1(group, "shard_checksum", (s, v), (1, 1), "uint64", 0)
        group.attrs.update(identity)
        self.write_identity()

    def _specs(self, teacher: str | None, targets: list[dict] | None = None) -> list[ArraySpec]:
        """A teacher's format-2 arrays (:mod:`layout`), its feature targets' last
        (``targets``: from its identity, default the stored one; no teacher: none)."""
        dataset = self.attrs["dataset"]
        classes = dataset["num_classes"]
        specs = teacher_specs(
            self.target_dtype, self.topk, classes, self.samples, index_dtype(classes)
        )
        if targets is None:
            targets = self.feature_targets(teacher) if teacher is not None else []
        return specs + feature_specs(targets, self.target_dtype)

    def feature_targets(self, teacher: str) -> list[dict]:
        """A teacher's feature and attention targets (its identity's ``features``; none in a
        cache without them)."""
        if teacher not in self._feature_targets:
            self._feature_targets[teacher] = self.teacher_identity(teacher).get("features", [])
        return self._feature_targets[teacher]

    def view_bytes(self, teacher: str) -> dict[str, float]:
        """Stored bytes per row-view of a teacher's logit targets (``topk``: its top-k, q8
        scale, logsumexp and sampled arrays) and of each feature or attention target (format
        2: raw chunks with their crc32c and the storage objects' index, :mod:`layout`)."""
        views = self.view_block or self.plan.views
        logits = [s for s in teacher_specs(self.target_dtype, self.topk,
                                           self.attrs["dataset"]["num_classes"], self.samples,
                                           index_dtype(self.attrs["dataset"]["num_classes"]))
                  if not s.ledger]  # fmt: skip
        rows = self.shard_size * views
        found = {"topk": sum(object_bytes(s, self.shard_size, views, views) for s in logits) / rows}
        targets = self.feature_targets(teacher)
        return found | feature_view_bytes(targets, self.target_dtype, self.shard_size, views)

    def projection(self, teacher: str, name: str) -> np.ndarray | None:
        """The stored (C, D) projection matrix of a feature target, or None (none asked);
        refused if it differs from the sha256 its attrs record."""
        target = next(t for t in self.feature_targets(teacher) if t["name"] == name)
        if not target.get("projection"):
            return None
        matrix = self._teacher(teacher)["projections"][slug(name)][:]
        if matrix_sha256(matrix) != target["projection"]["sha256"]:
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, feature {name}: its projection matrix "
                "differs from the sha256 recorded in its attrs"
            )
        return matrix

    # -- views ---------------------------------------------------------------------------------
    @property
    def array_views(self) -> int:
        """Views the arrays have room for (more than ``plan.views`` while views are added)."""
        return self.group["params"].shape[1]

    def grow_views(self, views: int) -> None:
        """Widen every array to ``views`` views; existing chunks are not touched."""
        if views <= self.array_views:
            return
        if views > MAX_VIEWS:
            raise ConfigError(f"plan: {views} views asked; a cache holds at most {MAX_VIEWS}")
        self._handles.clear()
        arrays = [self.group["params"]]
        for name in self.teacher_names:
            group = self._teacher(name)
            arrays += [group[a] for a in sorted(group.array_keys())]
        for array in arrays:
            array.resize((array.shape[0], views, *array.shape[2:]))

    def publish_views(self, views: int, shard_ids: list[int]) -> None:
        """Declare views ``0..views-1`` complete (``attrs.plan.views``): every teacher must have
        them for every one of ``shard_ids`` (the cache's splits)."""
        for name in self.teacher_names:
            if not self.views_done(name)[shard_ids, :views].all():
                raise CacheMismatch(
                    f"{self.location}: teacher {name} lacks some of views 0..{views - 1}; "
                    "views are published once every teacher has them"
                )
        plan = {**self.attrs["plan"], "views": views}
        self.attrs["plan"] = plan
        self.plan = ViewPlan.from_attrs(plan)
        self.attrs[IDENTITY_ATTR] = self._identity_digests()
        self.group.attrs.update({"plan": plan, IDENTITY_ATTR: self.attrs[IDENTITY_ATTR]})

    def _arrays(self, *extra: str) -> tuple[str, ...]:
        """Names of each teacher's per-view target arrays (with sampled ones if any), then ``extra``."""
        return (*TARGET_ARRAYS, *(SAMPLE_ARRAYS if self.samples else ()), *extra)

    # -- the ledger (:mod:`ledger`) ------------------------------------------------------------
    def views_done(self, teacher: str) -> np.ndarray:
        """Boolean (S, array views): view v of shard s written and checksummed."""
        return self.ledger.views_done(teacher)

    def shard_done(self, teacher: str) -> np.ndarray:
        """Boolean per shard: all of the plan's views written and checksummed."""
        return self.views_done(teacher)[:, : self.plan.views].all(axis=1)

    def pending_views(self, teacher: str, shard_id: int, views: int) -> list[int]:
        """Views among ``0..views-1`` of a shard not yet done."""
        return self.ledger.pending_views(teacher, shard_id, views)

    def shard_checksums(self, teacher: str) -> np.ndarray:
        """(S, array views) checksums; 0 where not written."""
        return self.ledger.checksums(teacher)

    def quantisation_kl(self, teacher: str) -> np.ndarray | None:
        """Per region mean KL of the stored q8/q6 targets (None for fp16): :mod:`ledger`."""
        return self.ledger.quantisation_kl(teacher)
