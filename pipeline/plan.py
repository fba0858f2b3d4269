"""The augmentation plan: view v of row n is a pure function of (plan seed, n, v).

Part of the contract between ``pipeline`` and ``trainer``. Random numbers come from a
counter-based hash (SplitMix64 chained over seed, row, view and draw number), so any view of
any row can be computed alone, in any order, on any machine, by a few lines of numpy.

Params layout ``kdcache-params/1`` (one float32 row per view, names in the cache attrs):

====  ============  =====================================================
col   name          meaning
====  ============  =====================================================
0     crop_top      top edge of the crop, fraction of the source height
1     crop_left     left edge of the crop, fraction of the source width
2     crop_height   crop height, fraction of the source height
3     crop_width    crop width, fraction of the source width
4     flip          1 if the crop is mirrored left-right, else 0
====  ============  =====================================================

The crop is torchvision's RandomResizedCrop (10 tries of area scale and log-uniform aspect
ratio, then the centre fallback) carried out in fractions, so one box serves every resolution.
"""

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.manifest import Manifest, ShardInfo

PARAMS_LAYOUT = "kdcache-params/1"
PARAM_NAMES = ("crop_top", "crop_left", "crop_height", "crop_width", "flip")
OPERATIONS = ("random_resized_crop", "hflip")
_CROP_TRIES = 10
_FLIP_DRAW = 4 * _CROP_TRIES

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform(seed: int, rows: np.ndarray, views: np.ndarray, draw: int) -> np.ndarray:
    """Uniform [0, 1) numbers, one per (row, view) pair, pure in (seed, row, view, draw)."""
    with np.errstate(over="ignore"):
        state = _splitmix64(np.full(np.broadcast(rows, views).shape, seed, dtype=np.uint64))
        for part in (rows, views, np.full_like(rows, draw)):
            state = _splitmix64(state ^ np.asarray(part).astype(np.uint64))
    return (state >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class ViewPlan:
    """How the V views of every sample are drawn; stored in the cache's attrs."""

    seed: int = 0
    views: int = 4
    crop_scale: tuple[float, float] = (0.25, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5

    def __post_init__(self):
        if self.views < 1:
            raise ValueError(f"plan: views must be at least 1, got {self.views}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"plan: crop_scale must satisfy 0 < low <= high <= 1, got {low, high}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(
                f"plan: crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}"
            )
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"plan: flip_prob must lie in [0, 1], got {self.flip_prob}")

    def to_attrs(self) -> dict:
        """JSON form for the cache attrs, with the layout and operation names."""
        return {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
            "operations": list(OPERATIONS),
            "params_layout": PARAMS_LAYOUT,
            "param_names": list(PARAM_NAMES),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> "ViewPlan":
        """Inverse of :meth:`to_attrs`; refuses a params layout this code cannot replay."""
        if attrs.get("params_layout") != PARAMS_LAYOUT:
            raise ValueError(
                f"plan: params_layout is {attrs.get('params_layout')!r}, "
                f"this kdcache replays {PARAMS_LAYOUT!r}"
            )
        values = {f.name: attrs[f.name] for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def differences(self, other: "ViewPlan") -> list[str]:
        """``plan.<field>: <self> vs <other>`` for every field that differs."""
        return [
            f"plan.{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    def params(self, rows: np.ndarray, aspect: np.ndarray, views=None) -> np.ndarray:
        """Params of ``views`` (default all) for each of ``rows``: float32 (len(rows), V, 5).

        ``aspect`` is each row's source height / width.
        """
        rows = np.asarray(rows, dtype=np.int64)[:, None]
        views = np.arange(self.views) if views is None else np.asarray(views)
        views = views.astype(np.int64)[None, :]
        aspect = np.asarray(aspect, dtype=np.float64)[:, None]
        shape = np.broadcast(rows, views).shape
        height, width = np.full(shape, np.nan), np.full(shape, np.nan)
        top, left = np.zeros(shape), np.zeros(shape)
        log_low, log_high = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for attempt in range(_CROP_TRIES):
            draws = [uniform(self.seed, rows, views, 4 * attempt + i) for i in range(4)]
            area = self.crop_scale[0] + draws[0] * (self.crop_scale[1] - self.crop_scale[0])
            ratio = np.exp(log_low + draws[1] * (log_high - log_low))
            w = np.sqrt(area * ratio * aspect)
            h = np.sqrt(area / (ratio * aspect))
            take = np.isnan(height) & (w <= 1) & (h <= 1)
            height[take], width[take] = h[take], w[take]
            top[take] = (draws[2] * (1 - h))[take]
            left[take] = (draws[3] * (1 - w))[take]
        fallback = np.isnan(height)
        if fallback.any():
            source_ratio = np.broadcast_to(1 / aspect, shape)
            w = np.where(source_ratio > self.crop_ratio[1], self.crop_ratio[1] * aspect, 1.0)
            h = np.where(source_ratio < self.crop_ratio[0], 1 / (self.crop_ratio[0] * aspect), 1.0)
            w, h = np.broadcast_to(w, shape), np.broadcast_to(h, shape)
            height[fallback], width[fallback] = h[fallback], w[fallback]
            top[fallback], left[fallback] = ((1 - h) / 2)[fallback], ((1 - w) / 2)[fallback]
        flip = uniform(self.seed, rows, views, _FLIP_DRAW) < self.flip_prob
        return np.stack([top, left, height, width, flip], axis=-1).astype(np.float32)

    def shard_params(self, manifest: "Manifest", shard: "ShardInfo") -> np.ndarray:
        """Params of every view of every row of a shard: float32 (n, V, 5)."""
        rows = manifest.shard_rows(shard)
        return self.params(rows, manifest.aspect[rows])
