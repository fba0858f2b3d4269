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
"""

import hashlib
import json

import numpy as np

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
