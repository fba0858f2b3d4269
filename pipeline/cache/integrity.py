"""What a cache reader checks before trusting what it reads (formats ``kdcache/1`` and ``/2``;
format 2 also has a crc32c per inner chunk, checked by zarr on every read).

- **Regions**: every (shard, view) region a reader uses must hash to the checksum stored in
  the ledger when it was written (``region_checksum``), and its targets must be finite. A
  deleted chunk reads as its fill value (NaN, -1) and so fails the checksum too.
- **Identity**: the attrs that say what the cache *is* (format, dataset, splits, plan, K,
  samples, sampling, the format-2 layout, each teacher's identity) are covered by
  ``attrs.identity_sha256``, one sha256 per field, written with them and checked on every
  open, so an edited ``topk`` or
  ``plan.seed`` is refused naming the field. Not covered: the manifest's location (caches
  and data move), ``tool_version`` and ``created``. A cache made before this hash existed has
  none: it is read as before, and the next ``teach`` that opens it (after checking it matches
  the request) writes the hash.
- **Arrays**: every array's shape, chunks, data type and codec chain as the attrs and the
  format say (:func:`check_arrays`), read from metadata alone.
- **Use**: the fields in which a cache differs from the manifest and options it is used with
  (:func:`mismatches`).
"""

import hashlib
import json
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import zarr

from kdcache.errors import CacheCorrupt
from kdcache.pipeline.cache.layout import ArraySpec
from kdcache.pipeline.cache.zarr_arrays import expected_metadata, plain_metadata

if TYPE_CHECKING:
    from kdcache.pipeline.data import Manifest
    from kdcache.pipeline.views import ViewPlan

IDENTITY_ATTR = "identity_sha256"
IDENTITY_FIELDS = ("format", "dataset", "splits", "plan", "topk", "samples", "sampling", "layout")
IF_PRESENT = ("layout",)  # format-1 caches have none; their hashes stay as written
UNCOVERED_DATASET_KEYS = ("manifest",)


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def identity_digests(attrs: dict, teachers: dict[str, dict]) -> dict[str, str]:
    """sha256 per identity-bearing field of the group ``attrs`` and per teacher identity
    (``teachers``: name -> sub-group attrs; its ``source``, a location, is not identity)."""
    digests = {}
    for name in IDENTITY_FIELDS:
        if name in IF_PRESENT and name not in attrs:
            continue
        value = attrs.get(name)
        if name == "dataset" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in UNCOVERED_DATASET_KEYS}
        digests[name] = _sha256(value)
    for name, identity in teachers.items():
        digests[f"teachers/{name}"] = _sha256({k: v for k, v in identity.items() if k != "source"})
    return digests


def edited_fields(stored: dict[str, str], found: dict[str, str]) -> list[str]:
    """The fields whose digest differs between the stored hash and the attrs as found."""
    return sorted(
        name for name in stored.keys() | found.keys() if stored.get(name) != found.get(name)
    )


def region_problem(block, checksum: int, region_checksum) -> str | None:
    """What is wrong with one view's region (``block`` with a view axis of length 1), or None:
    a checksum that does not match the stored one (saying which arrays hold no data: deleted
    or never written chunks), or non-finite targets."""
    found = region_checksum(block)
    if found != int(checksum):
        if int(checksum) == 0:
            return "marked done but no checksum was recorded"
        empty = [name for name, values in block.arrays().items() if _unwritten(values)]
        what = (
            f"holds no data in {', '.join(empty)} (chunks missing or never written)"
            if empty
            else "was altered after it was written"
        )
        return f"checksum mismatch (stored {int(checksum):016x}, data {found:016x}): {what}"
    bad = non_finite_counts(block)[0]
    if bad:
        return f"{bad} non-finite target values (NaN or inf)"
    return None


def non_finite_counts(block) -> np.ndarray:
    """Per view of ``block``, how many of its target values (top-k logits, logsumexp,
    feature targets) are NaN or inf."""
    values = [block.topk_logits, block.logsumexp[..., None], *block.features.values()]
    views = block.logsumexp.shape[1]
    return sum((~np.isfinite(v)).reshape(v.shape[0], views, -1).sum((0, 2)) for v in values).astype(
        np.int64
    )


def _unwritten(values: np.ndarray) -> bool:
    """All fill values: NaN for floats, -1 for class ids."""
    if np.issubdtype(values.dtype, np.floating):
        return bool(np.isnan(values).all())
    return bool((values == -1).all())


def check_arrays(store, specs: dict[str, ArraySpec], max_views: int) -> None:
    """Refuse ``store``'s arrays (``specs``: path -> spec) whose codecs differ from the
    format's, or whose declared shape or chunks differ from what the attrs (checked against
    the identity hash, and the dataset's against the manifest) give: rows, shards, P, K, D
    exactly, and a view count between the plan's and ``max_views`` (arrays are widened one by
    one when views are added). Only metadata is read, so an edited ``zarr.json`` cannot make
    a read allocate what it declares."""
    dataset = store.attrs["dataset"]
    n, s, rows = dataset["num_rows"], dataset["num_shards"], store.shard_size
    expected = {}
    for path, spec in specs.items():
        first, _, *rest = spec.shape(n, s, 0)
        expected[path] = ((first, *rest), spec.chunks(rows))
    for path, ((first, *rest), chunks) in expected.items():
        try:
            array = store.group[path]
        except KeyError:  # not made yet (a run stopped while adding a teacher)
            continue
        _check_codecs(store, path, array, specs[path])
        shape = tuple(array.shape)
        views = shape[1] if len(shape) == len(chunks) else -1
        if (
            shape != (first, views, *rest)
            or not store.plan.views <= views <= max_views
            or tuple(array.chunks) != chunks
        ):
            wanted = [first, f"{store.plan.views}..{max_views} views", *rest]
            raise CacheCorrupt(
                f"{store.location}/{path}/zarr.json: field shape {list(shape)} (chunks "
                f"{list(array.chunks)}), expected {wanted} (chunks {list(chunks)}) for "
                f"{n} rows in {s} shards; the array's description was edited"
            )


def _check_codecs(store, path: str, array: zarr.Array, spec: ArraySpec) -> None:
    """Refuse an array whose data type, storage chunks or codec chain differ from the
    format's (an edited chain could decompress a small object into gigabytes)."""
    found = array.metadata.to_dict()
    expected = expected_metadata(spec, store.shard_size, store.view_block, store.format)
    for key, value in expected.items():
        if plain_metadata(found.get(key)) != value:
            found_value = plain_metadata(found.get(key))
            raise CacheCorrupt(
                f"{store.location}/{path}/zarr.json: field {key} is {found_value}, expected "
                f"{value} (the format's {key}); the array's description was edited"
            )


def mismatches(
    store,
    manifest: "Manifest",
    plan: "ViewPlan | None" = None,
    topk: int | None = None,
    splits: list[str] | None = None,
    samples: int | None = None,
    target_dtype: str | None = None,
) -> list[str]:
    """Every field in which the cache ``store`` differs from what it is being used with.

    Fewer views than the cache holds is no mismatch: views are a prefix-stable sequence.
    """
    found = []
    dataset = store.attrs["dataset"]
    for field, value in (("num_rows", manifest.num_rows), ("num_shards", len(manifest.shards))):
        if dataset[field] != value:
            found.append(f"dataset.{field}: {dataset[field]} in cache vs {value} in manifest")
    if dataset["fingerprint"] != manifest.fingerprint:
        found.append(
            f"dataset.fingerprint: cache {dataset['fingerprint'][:12]} vs "
            f"manifest {manifest.fingerprint[:12]} ({manifest.location})"
        )
    if plan is not None:
        if plan.views <= store.plan.views:
            plan = replace(plan, views=store.plan.views)
        found += [d.replace(" vs ", " in cache vs ", 1) for d in store.plan.differences(plan)]
        if plan.views > store.plan.views:  # a teach pass asking for them adds them
            found = [f"{d} (teaching the cache with plan.views {plan.views} adds views)"
                     if d.startswith("plan.views:") else d for d in found]  # fmt: skip
    if topk is not None and topk != store.topk:
        found.append(f"topk: {store.topk} in cache vs {topk}")
    if samples is not None and samples != store.samples:
        found.append(f"samples: {store.samples} in cache vs {samples}")
    if target_dtype is not None and target_dtype != store.target_dtype:
        found.append(f"target_dtype: {store.target_dtype} in cache vs {target_dtype}")
    if splits is not None and sorted(splits) != store.attrs["splits"]:
        found.append(f"splits: {store.attrs['splits']} in cache vs {sorted(splits)}")
    return found
