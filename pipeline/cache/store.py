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
the mean KL(fp16 targets || stored targets) of each region.
"""

import dataclasses
import datetime
import functools
import hashlib
import json
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec

from kdcache import __version__
from kdcache.errors import CacheCorrupt, CacheMismatch, ConfigError, TargetsNotFinite
from kdcache.pipeline.cache.feature_layout import (
    FEATURE_KEY,
    decode_features,
    encode_features,
    feature_specs,
    feature_view_bytes,
    matrix_sha256,
    projection_matrix,
    slug,
)
from kdcache.pipeline.cache.id_sets import check_codable
from kdcache.pipeline.cache.integrity import (
    IDENTITY_ATTR,
    edited_fields,
    identity_digests,
    non_finite_counts,
    region_problem,
)
from kdcache.pipeline.cache.layout import (
    CODECS,
    ArraySpec,
    object_bytes,
    params_spec,
    teacher_specs,
)
from kdcache.pipeline.cache.q6_layout import decode as decode_q6
from kdcache.pipeline.cache.q6_layout import encode as encode_q6
from kdcache.pipeline.cache.quantize import (
    QUANTISED,
    TARGET_DTYPES,
    dequantize,
    pack_ids,
    quantize,
    topk_kl,
    unpack_ids,
)
from kdcache.pipeline.cache.sampled_targets import SAMPLING_ATTRS
from kdcache.pipeline.data import Manifest, ShardInfo, storage, urls
from kdcache.pipeline.views import ViewPlan

FORMAT = "kdcache/2"
FORMATS = ("kdcache/1", FORMAT)  # readable
TARGET_ARRAYS = ("topk_logits", "topk_index", "logsumexp")
SAMPLE_ARRAYS = ("sample_index",)
LEDGER_ARRAYS = ("shard_done", "shard_checksum")
# a teacher's set-up recorded in the cache that a request must match even when it leaves it out
# (a request without feature targets computes the cache's own)
SET_UP = ("arch", "weights_sha256", "num_classes", "model_args", "preprocessing", "key_map",
          "class_map")  # fmt: skip
MAX_VIEWS = 4096  # views a cache's arrays may hold: bounds what a read of its ledger allocates
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)


@dataclass
class ShardTargets:
    """A shard's block for some views: params (n, v, P) and a teacher's targets for them
    (``sample_index`` (n, v, D) only in a cache with sampled targets; ``features``: per
    feature or attention target name its float32 (n, v, *shape) values, :mod:`feature_layout`)."""

    params: np.ndarray
    topk_logits: np.ndarray
    topk_index: np.ndarray
    logsumexp: np.ndarray
    sample_index: np.ndarray | None = None
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The block's arrays by name, without the absent ones (features as ``feature:NAME``)."""
        found = {k: v for k, v in self.__dict__.items() if v is not None and k != "features"}
        return found | {FEATURE_KEY + name: v for name, v in self.features.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ShardTargets":
        """The block of :meth:`arrays`' names and values."""
        n = len(FEATURE_KEY)
        features = {k[n:]: v for k, v in arrays.items() if k.startswith(FEATURE_KEY)}
        rest = {k: v for k, v in arrays.items() if not k.startswith(FEATURE_KEY)}
        return cls(**rest, features=features)

    def select(self, positions, views: slice) -> "ShardTargets":
        """The block of some rows (positions in the shard) and views."""
        return ShardTargets.from_arrays({k: v[positions, views] for k, v in self.arrays().items()})

    def view(self, index: int) -> "ShardTargets":
        """The block of one of its views (keeping a view axis of length 1)."""
        return self.select(slice(None), slice(index, index + 1))


def region_checksum(block: ShardTargets) -> int:
    """blake2b (8 bytes, little-endian uint64) over params, topk_logits, topk_index, logsumexp
    and, in a cache with sampled targets, sample_index, then feature targets by sorted name."""
    digest = hashlib.blake2b(digest_size=8)
    names = ("params", *TARGET_ARRAYS, *(SAMPLE_ARRAYS if block.sample_index is not None else ()))
    values = [getattr(block, name) for name in names]
    values += [block.features[name] for name in sorted(block.features)]
    for value in values:
        value = np.ascontiguousarray(value)
        digest.update(value.astype(value.dtype.newbyteorder("<")).tobytes())
    return int.from_bytes(digest.digest(), "little")


def reduce_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a cache keeps of a teacher's logits: (top-k logits descending, their class ids,
    logsumexp over all classes), computed in fp32 (the cache then stores the logits as fp16)."""
    logits = logits.float()
    values, index = logits.topk(k, dim=-1, largest=True, sorted=True)
    return values, index, torch.logsumexp(logits, dim=-1)


def index_dtype(num_classes: int) -> str:
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"


class CacheStore:
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
        self._checksums: dict[str, np.ndarray] = {}
        self._check_identity()
        self._check_shapes()

    @property
    def group(self) -> zarr.Group:
        """The Zarr group, reopened in a forked process (a DataLoader worker): an object
        store's client and event loop do not survive a fork."""
        if os.getpid() != self._pid:
            mode = "r" if self._group.read_only else "r+"
            self._group, self._pid = _open_group(self.location, mode, self._options), os.getpid()
            self._handles.clear()  # arrays opened through the parent's group
        return self._group

    @classmethod
    def open(
        cls, location: str, mode: str = "r", storage_options: dict | None = None
    ) -> "CacheStore":
        """Open an existing cache: ``mode`` ``r`` to read, ``r+`` to write; ``storage_options``
        go to fsspec for URLs (endpoint, credentials; default: :func:`storage.current`)."""
        try:
            group = _open_group(location, mode, storage_options)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{location}: no cache here") from error
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
            raise ValueError(f"--topk must lie in 1..{manifest.num_classes}, got {topk}")
        if samples < 0:
            raise ValueError(f"--samples must be 0 (none) or more, got {samples}")
        if target_dtype not in TARGET_DTYPES:
            raise ValueError(f"--target-dtype must be one of {TARGET_DTYPES}, got {target_dtype!r}")
        if target_dtype == "q6":
            check_codable(topk, manifest.num_classes)
        group = _open_group(location, "w-", None)
        layout = {"target_dtype": target_dtype, "view_block": plan.views}
        sizes = (manifest.num_rows, len(manifest.shards), manifest.shard_size)
        _create_spec(group, params_spec(len(plan.param_names)), sizes, plan.views, plan.views)
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

    def _check_shapes(self) -> None:
        """Refuse arrays whose declared shape or chunks differ from what the attrs (checked
        against the identity hash, and the dataset's against the manifest) give: rows,
        shards, P, K, D exactly, and a view count between the plan's and :data:`MAX_VIEWS`
        (arrays are widened one by one when views are added). Only metadata is read, so an
        edited ``zarr.json`` cannot make a read allocate what it declares."""
        dataset = self.attrs["dataset"]
        n, s, rows = dataset["num_rows"], dataset["num_shards"], self.shard_size
        specs = {"params": params_spec(len(self.plan.param_names))}
        for name in self.teacher_names:  # format 1's arrays are format 2's fp16 ones
            specs |= {f"teachers/{name}/{spec.name}": spec for spec in self._specs(name)}
        expected = {}
        for path, spec in specs.items():
            first, _, *rest = spec.shape(n, s, 0)
            expected[path] = ((first, *rest), spec.chunks(rows))
        for path, ((first, *rest), chunks) in expected.items():
            try:
                array = self.group[path]
            except KeyError:  # not made yet (a run stopped while adding a teacher)
                continue
            self._check_codecs(path, array, specs[path])
            shape = tuple(array.shape)
            views = shape[1] if len(shape) == len(chunks) else -1
            if (
                shape != (first, views, *rest)
                or not self.plan.views <= views <= MAX_VIEWS
                or tuple(array.chunks) != chunks
            ):
                wanted = [first, f"{self.plan.views}..{MAX_VIEWS} views", *rest]
                raise CacheCorrupt(
                    f"{self.location}/{path}/zarr.json: field shape {list(shape)} (chunks "
                    f"{list(array.chunks)}), expected {wanted} (chunks {list(chunks)}) for "
                    f"{n} rows in {s} shards; the array's description was edited"
                )

    def _check_codecs(self, path: str, array: zarr.Array, spec: ArraySpec) -> None:
        """Refuse an array whose data type, storage chunks or codec chain differ from the
        format's (an edited chain could decompress a small object into gigabytes)."""
        found = array.metadata.to_dict()
        expected = expected_metadata(spec, self.shard_size, self.view_block, self.format)
        for key, value in expected.items():
            if _plain(found.get(key)) != value:
                raise CacheCorrupt(
                    f"{self.location}/{path}/zarr.json: field {key} is {_plain(found.get(key))}, "
                    f"expected {value} (the format's {key}); the array's description was edited"
                )

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

    def mismatches(
        self,
        manifest: Manifest,
        plan: ViewPlan | None = None,
        topk: int | None = None,
        splits: list[str] | None = None,
        samples: int | None = None,
        target_dtype: str | None = None,
    ) -> list[str]:
        """Every field in which this cache differs from what it is being used with.

        Fewer views than the cache holds is no mismatch: views are a prefix-stable sequence.
        """
        found = []
        dataset = self.attrs["dataset"]
        for field, value in (("num_rows", manifest.num_rows), ("num_shards", len(manifest.shards))):
            if dataset[field] != value:
                found.append(f"dataset.{field}: {dataset[field]} in cache vs {value} in manifest")
        if dataset["fingerprint"] != manifest.fingerprint:
            found.append(
                f"dataset.fingerprint: cache {dataset['fingerprint'][:12]} vs "
                f"manifest {manifest.fingerprint[:12]} ({manifest.location})"
            )
        if plan is not None:
            if plan.views <= self.plan.views:
                plan = replace(plan, views=self.plan.views)
            found += [d.replace(" vs ", " in cache vs ", 1) for d in self.plan.differences(plan)]
            if plan.views > self.plan.views:  # a teach pass asking for them adds them
                found = [f"{d} (teaching the cache with plan.views {plan.views} adds views)"
                         if d.startswith("plan.views:") else d for d in found]  # fmt: skip
        if topk is not None and topk != self.topk:
            found.append(f"topk: {self.topk} in cache vs {topk}")
        if samples is not None and samples != self.samples:
            found.append(f"samples: {self.samples} in cache vs {samples}")
        if target_dtype is not None and target_dtype != self.target_dtype:
            found.append(f"target_dtype: {self.target_dtype} in cache vs {target_dtype}")
        if splits is not None and sorted(splits) != self.attrs["splits"]:
            found.append(f"splits: {self.attrs['splits']} in cache vs {sorted(splits)}")
        return found

    def check_matches(self, manifest: Manifest, **options) -> None:
        """Raise :class:`CacheMismatch` naming every differing field."""
        found = self.mismatches(manifest, **options)
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
                _create_spec(group, spec, (n, s, rows), v, self.view_block)
            _write_projections(group, targets)
            group.attrs.update(identity)
            self.write_identity()
            return
        _create(group, "topk_logits", (n, v, k), (rows, 1, k), "float16", np.nan)
        _create(group, "topk_index", (n, v, k), (rows, 1, k), classes, -1)
        _create(group, "logsumexp", (n, v), (rows, 1), "float32", np.nan)
        if self.samples:
            shape, chunks = (n, v, self.samples), (rows, 1, self.samples)
            _create(group, "sample_index", shape, chunks, classes, -1)
        _create(group, "shard_done", (s, v), (1, 1), "uint8", 0)
        _create(group, "shard_checksum", (s, v), (1, 1), "uint64", 0)
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

    # -- ledger and regions --------------------------------------------------------------------
    def _ledger(self, teacher: str, name: str, shard_id: int | None = None) -> np.ndarray:
        """A ledger array, whole or one shard's row; an object failing its crc32c is a
        :class:`CacheCorrupt` naming teacher and shard."""
        array = self._array(teacher, name)
        try:
            return array[:] if shard_id is None else array[shard_id]
        except Exception as error:  # codec and store errors: a damaged object
            shards = range(array.shape[0]) if shard_id is None else [shard_id]
            bad = next((s for s in shards if not _readable(array, s)), shard_id)
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard id {bad}, views "
                f"0..{array.shape[1] - 1}: its {name} ledger cannot be read "
                f"({type(error).__name__}: {error})"
            ) from error

    def views_done(self, teacher: str) -> np.ndarray:
        """Boolean (S, array views): view v of shard s written and checksummed."""
        return self._ledger(teacher, "shard_done").astype(bool)

    def shard_done(self, teacher: str) -> np.ndarray:
        """Boolean per shard: all of the plan's views written and checksummed."""
        return self.views_done(teacher)[:, : self.plan.views].all(axis=1)

    def pending_views(self, teacher: str, shard_id: int, views: int) -> list[int]:
        """Views among ``0..views-1`` of a shard not yet done (reads that shard's ledger row)."""
        done = self._ledger(teacher, "shard_done", shard_id)[:views]
        return [v for v in range(views) if not done[v]]

    def shard_checksums(self, teacher: str) -> np.ndarray:
        """(S, array views) checksums; 0 where not written."""
        return self._ledger(teacher, "shard_checksum")

    def _checksum_row(self, teacher: str, shard_id: int) -> np.ndarray:
        """A shard's stored checksums; a read-only store reads the whole ledger once (a
        trainer then fetches per shard only the chunks of the views it uses)."""
        if not self.group.read_only:  # a writer's ledger changes as it writes
            return self._ledger(teacher, "shard_checksum", shard_id)
        if teacher not in self._checksums:
            self._checksums[teacher] = self._ledger(teacher, "shard_checksum")
        return self._checksums[teacher][shard_id]

    def quantisation_kl(self, teacher: str) -> np.ndarray | None:
        """(S, array views) mean KL(fp16 targets || stored q8/q6 targets) per region, NaN
        where not written; None for fp16 targets (stored as computed)."""
        if self.target_dtype not in QUANTISED:
            return None
        return self._ledger(teacher, "quant_kl")

    def _rows(self, shard: ShardInfo) -> slice:
        start = shard.id * self.shard_size
        return slice(start, start + shard.num_rows)

    def _encode(self, teacher: str, block: ShardTargets) -> dict[str, np.ndarray]:
        """A block's teacher arrays as stored (q8, q6: quantised and packed; fp16 as they are;
        feature targets fp16, or q8 levels in a quantised layout)."""
        arrays = {k: v for k, v in block.arrays().items()
                  if k != "params" and not k.startswith(FEATURE_KEY)}  # fmt: skip
        targets = self.feature_targets(teacher)
        features = encode_features(block.features, targets, self.target_dtype)
        classes = self.attrs["dataset"]["num_classes"]
        if self.target_dtype == "q6":
            packed = encode_q6(block.topk_logits, block.topk_index, block.logsumexp, classes)
            samples = {k: arrays[k] for k in SAMPLE_ARRAYS if k in arrays}
            return {"topk_packed": packed, **samples, **features}
        if self.target_dtype != "q8":  # fp16: cast here, so the checksum is of what is read
            with np.errstate(over="ignore"):  # beyond fp16: inf, refused by the caller
                logits = block.topk_logits.astype(np.float16)
            return arrays | {"topk_logits": logits} | features
        levels, scale, lse = quantize(block.topk_logits, block.logsumexp)
        index = pack_ids(block.topk_index, classes)
        arrays.update(topk_logits=levels, logit_scale=scale, topk_index=index, logsumexp=lse)
        return arrays | features

    def _decode(
        self, teacher: str, params: np.ndarray, stored: dict[str, np.ndarray]
    ) -> ShardTargets:
        """Stored arrays back to targets (q8, q6: logits and logsumexp relative to the view's
        max; q6: sorted descending, equal logits the argmax first, then by class id)."""
        stored = dict(stored)
        features = decode_features(stored, self.feature_targets(teacher), self.target_dtype)
        if self.target_dtype not in QUANTISED:
            return ShardTargets(params=params, **stored, features=features)
        classes = self.attrs["dataset"]["num_classes"]
        if self.target_dtype == "q6":
            logits, index, lse = decode_q6(stored.pop("topk_packed"), self.topk, classes)
            index = index.astype(index_dtype(classes))
            return ShardTargets(params, logits, index, lse, **stored, features=features)
        logits, lse = dequantize(stored.pop("topk_logits"), stored.pop("logit_scale"),
                                 stored.pop("logsumexp"))  # fmt: skip
        index = unpack_ids(stored.pop("topk_index"), self.topk, classes)
        index = index.astype(index_dtype(classes))
        return ShardTargets(params, logits, index, lse, **stored, features=features)

    def as_stored(self, teacher: str, block: ShardTargets) -> ShardTargets:
        """What reading ``block`` back from this cache gives (q8: quantised and decoded)."""
        return self._decode(teacher, block.params, self._encode(teacher, block))

    def _stored_names(self, teacher: str | None = None) -> tuple[str, ...]:
        """The stored per-view arrays of a teacher (no teacher: those every teacher has)."""
        if self.format == FORMAT:
            return tuple(s.name for s in self._specs(teacher) if not s.ledger)
        return self._arrays()

    def write_shard(
        self, teacher: str, shard: ShardInfo, views: list[int], block: ShardTargets
    ) -> list[int]:
        """Write ``views`` of a shard (block axis 1 in that order), then checksums, then done flags.

        Each run of consecutive views is one write per array (one rewrite of its storage
        object in format 2). An earlier partial write of these regions (a crash) is
        overwritten, never trusted.
        """
        rows = self._rows(shard)
        self._refuse_non_finite(teacher, shard, views, block, "")
        stored = self._encode(teacher, block)
        decoded = self._decode(teacher, block.params, stored)
        self._refuse_non_finite(
            teacher, shard, views, decoded, f" once stored as {self.target_dtype}"
        )
        for first, last in _runs(views):  # positions in the block
            where = (rows, slice(views[first], views[last] + 1))
            self._array(None, "params")[where] = block.params[:, first : last + 1]
            for name, values in stored.items():
                self._array(teacher, name)[where] = values[:, first : last + 1]
        checksums = [region_checksum(decoded.view(index)) for index in range(len(views))]
        for first, last in _runs(views):
            where = (shard.id, slice(views[first], views[last] + 1))
            checksum = np.array(checksums[first : last + 1], np.uint64)
            self._array(teacher, "shard_checksum")[where] = checksum
            if self.target_dtype in QUANTISED:
                part = slice(first, last + 1)
                tail = self.topk < self.attrs["dataset"]["num_classes"]
                kl = topk_kl(block.topk_logits[:, part], block.logsumexp[:, part],
                             decoded.topk_logits[:, part], decoded.logsumexp[:, part], tail)  # fmt: skip
                self._array(teacher, "quant_kl")[where] = kl.mean(0).astype(np.float32)
        for first, last in _runs(views):
            self._array(teacher, "shard_done")[shard.id, views[first] : views[last] + 1] = 1
        return checksums

    def _refuse_non_finite(
        self, teacher: str, shard: ShardInfo, views: list[int], block: ShardTargets, how: str
    ) -> None:
        """Raise :class:`TargetsNotFinite` for the first view of ``block`` holding NaN or inf
        (checked before encoding, and on what a reader would decode): nothing is written."""
        counts = non_finite_counts(block)
        if counts.any():
            first = int(np.flatnonzero(counts)[0])
            raise TargetsNotFinite(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), view "
                f"{views[first]}: {int(counts[first])} target values are NaN or inf{how} "
                "(the teacher's logits overflow or diverge); nothing written for this shard"
            )

    def read_shard(self, teacher: str, shard: ShardInfo, views: int | None = None) -> ShardTargets:
        """Views ``0..views-1`` (default: the plan's) of a shard's block: one read per array."""
        rows, columns = self._rows(shard), slice(0, self.plan.views if views is None else views)
        return self._read(teacher, shard, (rows, columns))

    def _read(self, teacher: str, shard: ShardInfo, where: tuple[slice, slice]) -> ShardTargets:
        """The block at ``where`` (rows, views); a chunk that cannot be decoded or fails its
        crc32c is a :class:`CacheCorrupt` naming teacher, shard and the first bad view."""
        try:
            return self._decode(
                teacher,
                self._array(None, "params")[where],
                {name: self._array(teacher, name)[where] for name in self._stored_names(teacher)},
            )
        except Exception as error:  # codec and store errors: a damaged chunk
            views = range(where[1].start, where[1].stop)
            bad = [v for v in views if not self._view_readable(teacher, where[0], v)]
            named = f"view {bad[0]}" if bad else f"views {views.start}..{views.stop - 1}"
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), "
                f"{named}: a chunk cannot be read ({type(error).__name__}: {error})"
            ) from error

    def _view_readable(self, teacher: str, rows: slice, view: int) -> bool:
        names = [(None, "params"), *((teacher, n) for n in self._stored_names(teacher))]
        arrays = [self._array(*name) for name in names]
        return all(_readable(a, (rows, slice(view, view + 1))) for a in arrays)

    def read_views(self, teacher: str, shard: ShardInfo, views: list[int]) -> ShardTargets:
        """Only ``views`` of a shard (block axis 1 in that order), each view one read per
        array (in format 2 one inner chunk each), each checked as :meth:`read_verified`."""
        parts = [self.read_region(teacher, shard, view) for view in views]
        arrays = [part.arrays() for part in parts]
        return ShardTargets.from_arrays(
            {k: np.concatenate([a[k] for a in arrays], 1) for k in arrays[0]}
        )

    def region_problems(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> dict[int, str]:
        """Per view of ``views`` (cache view ids; ``block``'s view axis starts at view
        ``first``), what is wrong with that region: checksum mismatch or non-finite targets."""
        ledger = self._checksum_row(teacher, shard.id)
        found = {}
        for view in views:
            part = block.view(view - first)
            problem = region_problem(part, ledger[view], region_checksum)
            if problem is not None:
                found[view] = problem
        return found

    def read_verified(
        self, teacher: str, shard: ShardInfo, views: int | None = None
    ) -> ShardTargets:
        """:meth:`read_shard`, each view's region checked against its stored checksum and for
        finite targets; raises :class:`CacheCorrupt` naming teacher, shard and view."""
        block = self.read_shard(teacher, shard, views)
        views = list(range(block.params.shape[1]))
        self.check_regions(teacher, shard, block, views)
        return block

    def read_region(self, teacher: str, shard: ShardInfo, view: int) -> ShardTargets:
        """One view of a shard (a view axis of length 1), checked as :meth:`read_verified`."""
        block = self._read(teacher, shard, (self._rows(shard), slice(view, view + 1)))
        self.check_regions(teacher, shard, block, [view], view)
        return block

    def check_regions(
        self, teacher: str, shard: ShardInfo, block: ShardTargets, views: list[int], first: int = 0
    ) -> None:
        """Raise :class:`CacheCorrupt` for the first bad region among ``views`` (see
        :meth:`region_problems`), naming teacher, shard and view."""
        problems = self.region_problems(teacher, shard, block, views, first)
        if problems:
            view, problem = next(iter(problems.items()))
            more = f" (and {len(problems) - 1} more views)" if len(problems) > 1 else ""
            raise CacheCorrupt(
                f"{self.location}: teacher {teacher}, shard {shard.file} (id {shard.id}), view "
                f"{view}: {problem}{more}; refusing to use it (kdcache inspect/verify list every "
                "bad region; re-teach the shard into a fresh cache)"
            )


def _open_group(location: str, mode: str, storage_options: dict | None) -> zarr.Group:
    """The Zarr group at ``location``; a URL opened with ``storage_options`` (default: the
    current ones)."""
    options = storage.options_for(location) if storage_options is None else storage_options
    extra = {"storage_options": options} if options and urls.local_path(location) is None else {}
    return zarr.open_group(_zarr_location(location), mode=mode, **extra)


def _zarr_location(location: str) -> str:
    """Local locations as plain paths (zarr's fsspec store cannot create ``file://`` groups)."""
    return urls.local_path(location) or location


def _readable(array: zarr.Array, where) -> bool:
    try:
        array[where]
    except Exception:  # codec and store errors
        return False
    return True


def _runs(views: list[int]) -> list[tuple[int, int]]:
    """(first, last) positions in ``views`` of each run of consecutive view ids."""
    runs, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or views[i] != views[i - 1] + 1:
            runs.append((start, i - 1))
            start = i
    return runs


@functools.lru_cache(maxsize=256)
def expected_metadata(spec: ArraySpec, shard_size: int, view_block: int | None, fmt: str) -> dict:
    """The ``data_type``, ``chunk_grid`` and ``codecs`` an array of ``spec`` has in format
    ``fmt`` (from a reference array made in memory as :meth:`CacheStore.create` makes it)."""
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    if fmt == FORMAT:
        _create_spec(group, spec, (shard_size, 1, shard_size), view_block, view_block)
    else:
        _create(group, spec.name, spec.shape(shard_size, 1, 1), spec.chunks(shard_size),
                spec.dtype, spec.fill)  # fmt: skip
    found = group[spec.name].metadata.to_dict()
    return {key: _plain(found[key]) for key in ("codecs", "data_type", "chunk_grid")}


def _plain(value):
    """Metadata as plain JSON values (tuples as lists), for comparing."""
    return json.loads(json.dumps(value, default=str))


def _create_spec(group: zarr.Group, spec: ArraySpec, sizes, views: int, view_block: int) -> None:
    """A format-2 array: ``sizes`` (rows, shards, shard size), sharded per :mod:`layout`."""
    rows, shards, shard_size = sizes
    group.create_array(
        spec.name,
        shape=spec.shape(rows, shards, views),
        chunks=spec.chunks(shard_size),
        shards=spec.storage_shards(shard_size, view_block),
        dtype=spec.dtype,
        fill_value=spec.fill,
        compressors=CODECS,
    )


def _write_projections(group: zarr.Group, targets: list[dict]) -> None:
    """Each projected target's matrix at ``projections/<slug>`` (:mod:`feature_layout`)."""
    for target in targets:
        projection = target.get("projection")
        if projection:
            matrix = projection_matrix(projection["seed"], projection["in_dim"], projection["dim"])
            group.require_group("projections").create_array(
                slug(target["name"]), data=matrix, chunks=matrix.shape
            )


def _create(group: zarr.Group, name: str, shape, chunks, dtype: str, fill) -> None:
    group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=_COMPRESSORS
    )
