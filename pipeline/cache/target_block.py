"""A shard's block of cached targets as numpy arrays (:class:`ShardTargets`), the checksum of
a (shard, view) region of it, and what a cache keeps of a teacher's logits."""

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from kdcache.pipeline.cache.feature_layout import FEATURE_KEY

TARGET_ARRAYS = ("topk_logits", "topk_index", "logsumexp")
SAMPLE_ARRAYS = ("sample_index",)


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
    """The stored dtype of class ids: int16 while they fit, else int32."""
    return "int16" if num_classes <= np.iinfo(np.int16).max else "int32"
