"""Feature and attention targets in a ``kdcache/2`` cache: their arrays, their q8 form and the
fixed random projection (numpy only; docs/format.md says the same).

A teacher's identity lists its extra targets (``features``: one dict per target with ``name``,
``kind``, ``layer``, ``pool``, ``shape`` (per view, after pooling and projection), ``dtype``
and ``projection``). Each target is one array per teacher, ``feat.<slug>`` (N, V, *shape),
sharded and crc32c-checked like the logit arrays:

- ``fp16``: float16 values;
- ``q8`` (and ``q6``, whose features are stored as q8's): uint8 levels
  ``q = round((x - lo) / scale)`` with ``lo`` the view's smallest value and
  ``scale = (hi - lo) / 255`` (1 if 0), and ``feat.<slug>.range`` float16 (N, V, 2) holding
  (lo, scale) as float16, the values the levels were made with: ``x' = lo + q * scale``.

A projection (``--feature-dim D``) maps the target's channel axis (axis 0 of its pooled shape)
with a (C, D) float32 matrix of N(0, 1/D) entries drawn by numpy's PCG64 from ``seed``; the
matrix is stored at ``teachers/<name>/projections/<slug>`` and its sha256 recorded.
"""

import hashlib
import math
import re
import zlib

import numpy as np

from kdcache.pipeline.cache.layout import ArraySpec, object_bytes
from kdcache.pipeline.cache.quantize import QUANTISED

FEATURE_KEY = "feature:"  # a feature target's key in ShardTargets.arrays()
LEVELS = 255


def slug(name: str) -> str:
    """A target name as an array name's part (``attention:3:s4x4`` -> ``attention_3_s4x4``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def array_name(name: str) -> str:
    return f"feat.{slug(name)}"


def range_name(name: str) -> str:
    return f"{array_name(name)}.range"


def feature_specs(targets: list[dict], target_dtype: str) -> list[ArraySpec]:
    """The arrays of a teacher's extra targets in the ``fp16`` or ``q8`` layout."""
    specs = []
    for target in targets:
        shape = tuple(target["shape"])
        if target_dtype in QUANTISED:
            specs.append(ArraySpec(array_name(target["name"]), "uint8", 0, shape))
            specs.append(ArraySpec(range_name(target["name"]), "float16", np.nan, (2,)))
        else:
            specs.append(ArraySpec(array_name(target["name"]), "float16", np.nan, shape))
    return specs


def quantize_features(values: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., *shape) values, ``dims`` trailing axes per view -> (uint8 levels, float16 (..., 2)
    (lo, scale))."""
    values = values.astype(np.float32)
    axes = tuple(range(values.ndim - dims, values.ndim))
    lo = values.min(axis=axes).astype(np.float16)
    spread = values.max(axis=axes) - lo.astype(np.float32)
    scale = (spread / LEVELS).astype(np.float16)
    scale = np.where(scale > 0, scale, np.float16(1))  # constant views, fp16 underflow
    step = scale.astype(np.float32)
    expand = (...,) + (None,) * dims
    levels = np.rint((values - lo.astype(np.float32)[expand]) / step[expand])
    return np.clip(levels, 0, LEVELS).astype(np.uint8), np.stack([lo, scale], axis=-1)


def dequantize_features(levels: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """Stored q8 levels and (lo, scale) -> float32 values."""
    expand = (...,) + (None,) * (levels.ndim - ranges.ndim + 1)
    lo, scale = ranges[..., 0].astype(np.float32), ranges[..., 1].astype(np.float32)
    return lo[expand] + levels.astype(np.float32) * scale[expand]


def encode_features(
    features: dict[str, np.ndarray], targets: list[dict], target_dtype: str
) -> dict[str, np.ndarray]:
    """A block's feature targets (name -> (n, v, *shape)) as stored, by array name."""
    stored = {}
    for target in targets:
        values = features[target["name"]]
        if target_dtype in QUANTISED:
            levels, ranges = quantize_features(values, len(target["shape"]))
            stored[array_name(target["name"])] = levels
            stored[range_name(target["name"])] = ranges
        else:
            stored[array_name(target["name"])] = values.astype(np.float16)
    return stored


def decode_features(
    stored: dict[str, np.ndarray], targets: list[dict], target_dtype: str
) -> dict[str, np.ndarray]:
    """Stored arrays (popped from ``stored``) -> name -> float32 (n, v, *shape)."""
    features = {}
    for target in targets:
        values = stored.pop(array_name(target["name"]))
        if target_dtype in QUANTISED:
            values = dequantize_features(values, stored.pop(range_name(target["name"])))
        features[target["name"]] = values.astype(np.float32)
    return features


def stored_features(values: np.ndarray, target: dict, target_dtype: str) -> np.ndarray:
    """What reading ``values`` (n, ..., *shape) back from a cache gives (fp16 or q8 rounding)."""
    if target_dtype in QUANTISED:
        return dequantize_features(*quantize_features(values, len(target["shape"])))
    return values.astype(np.float16).astype(np.float32)


def projection_seed(name: str) -> int:
    """The fixed seed of a target's projection (crc32 of its name)."""
    return zlib.crc32(name.encode())


def projection_matrix(seed: int, in_dim: int, dim: int) -> np.ndarray:
    """(in_dim, dim) float32, entries N(0, 1/dim) from numpy PCG64 seeded with ``seed``."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.standard_normal((in_dim, dim)) / math.sqrt(dim)).astype(np.float32)


def matrix_sha256(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).hexdigest()


def feature_view_bytes(targets: list[dict], target_dtype: str, shard_size: int, views: int) -> dict:
    """Stored bytes per row-view of each extra target (values, q8 range, crc32c and index)."""
    found = {}
    for target in targets:
        specs = feature_specs([target], target_dtype)
        total = sum(object_bytes(s, shard_size, views, views) for s in specs)
        found[target["name"]] = total / (shard_size * views)
    return found
