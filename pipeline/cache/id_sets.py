"""A view's top-k class ids as a set: its rank in the combinatorial number system, in
ceil(log2 C(C, K)) bits instead of K * ceil(log2 C) (78 bits instead of 100 at C = 1000,
K = 10). Vectorised over views with numpy: ranks are little-endian base-2**32 limbs in int64.

The rank of ascending ids ``c_0 < c_1 < ... < c_{K-1}`` is ``sum_i comb(c_i, i + 1)``; ranks
run over 0 .. C(C, K) - 1, every set has one, and unranking takes for i = K-1 down to 0 the
largest ``c_i`` with ``comb(c_i, i + 1) <= rest`` (docs/format.md says the same).
"""

import math
from functools import lru_cache

import numpy as np

from kdcache.errors import ConfigError

LIMB = 32
MASK = (1 << LIMB) - 1
MAX_RANK_BITS = 256  # larger sets (K near C / 2 of many classes) need too large a table


def rank_bits(topk: int, num_classes: int) -> int:
    """Bits of a rank: ceil(log2 C(C, K)); 0 when K = C (one set)."""
    return (math.comb(num_classes, topk) - 1).bit_length()


def check_codable(topk: int, num_classes: int) -> None:
    """Refuse set sizes whose ranks exceed :data:`MAX_RANK_BITS` bits."""
    bits = rank_bits(topk, num_classes)
    if bits > MAX_RANK_BITS:
        raise ConfigError(
            f"target_dtype: q6 cannot hold top-{topk} of {num_classes} classes: a set rank "
            f"takes {bits} bits, at most {MAX_RANK_BITS} are supported (use q8 or fp16)",
            field="target_dtype",
        )


def _limbs(bits: int) -> int:
    return max(1, math.ceil((bits + 1) / LIMB))


@lru_cache(maxsize=8)
def _binomials(topk: int, num_classes: int) -> np.ndarray:
    """(C, K, L) int64 limbs of comb(c, j + 1) for c < C, j < K."""
    limbs = _limbs(rank_bits(topk, num_classes))
    values = np.array(
        [[math.comb(c, j + 1) for j in range(topk)] for c in range(num_classes)], dtype=object
    )
    table = np.stack([(values >> (LIMB * i)) & MASK for i in range(limbs)], -1)
    return table.astype(np.int64)


def rank_sets(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, K) ascending distinct class ids -> (n, L) int64 limbs of their ranks."""
    topk = ids.shape[-1]
    table = _binomials(topk, num_classes)
    total = table[ids, np.arange(topk)].sum(1)  # (n, L); each limb < K * 2**32
    for i in range(total.shape[1] - 1):
        total[:, i + 1] += total[:, i] >> LIMB
        total[:, i] &= MASK
    return total


def unrank_sets(ranks: np.ndarray, topk: int, num_classes: int) -> np.ndarray:
    """(n, L) int64 limbs of ranks -> (n, K) ascending class ids (int32): per position a
    float64 search of the binomials' column, then an exact check of its neighbours (adjacent
    binomials differ by a factor >= 1 + 1/C, far above float64's error)."""
    table, approx = _binomials(topk, num_classes), _approximate_binomials(topk, num_classes)
    rest = ranks.astype(np.int64).copy()
    ids = np.empty((rest.shape[0], topk), np.int32)
    for j in range(topk - 1, -1, -1):
        guess = np.searchsorted(approx[:, j], _approximate(rest), side="right") - 1
        guess = np.clip(guess, j, num_classes - 1)
        up = np.minimum(guess + 1, num_classes - 1)
        guess = np.where(_at_most(table[up, j], rest), up, guess)
        guess = np.where(_at_most(table[guess, j], rest), guess, guess - 1)
        ids[:, j] = guess
        rest = _subtract(rest, table[guess, j])
    return ids


@lru_cache(maxsize=8)
def _approximate_binomials(topk: int, num_classes: int) -> np.ndarray:
    """(C, K) float64 values of :func:`_binomials`."""
    return _approximate(_binomials(topk, num_classes))


def _approximate(limbs: np.ndarray) -> np.ndarray:
    """Limbs (..., L) as float64 values."""
    return (limbs * (2.0 ** (LIMB * np.arange(limbs.shape[-1])))).sum(-1)


def _at_most(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, limbs ``a`` <= limbs ``b`` (most significant limb last)."""
    result = np.ones(a.shape[0], bool)
    for i in range(a.shape[1]):  # least significant first: higher limbs decide
        result = (a[:, i] < b[:, i]) | ((a[:, i] == b[:, i]) & result)
    return result


def _subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Limbs ``a - b`` (``a >= b``), borrows propagated."""
    out = a - b
    for i in range(out.shape[1] - 1):
        borrow = out[:, i] < 0
        out[:, i] += borrow.astype(np.int64) << LIMB
        out[:, i + 1] -= borrow
    return out


def limbs_to_bits(ranks: np.ndarray, bits: int) -> np.ndarray:
    """(n, L) limbs -> (n, bits) uint8 0/1, most significant bit first."""
    shifts = np.arange(LIMB - 1, -1, -1, dtype=np.int64)
    planes = (ranks[:, ::-1, None] >> shifts) & 1  # most significant limb first
    return planes.reshape(ranks.shape[0], -1)[:, planes.shape[1] * LIMB - bits :].astype(np.uint8)


def bits_to_limbs(planes: np.ndarray, topk: int, num_classes: int) -> np.ndarray:
    """(n, bits) 0/1, most significant first -> (n, L) int64 limbs."""
    limbs = _limbs(rank_bits(topk, num_classes))
    n, bits = planes.shape
    padded = np.zeros((n, limbs * LIMB), np.int64)
    padded[:, limbs * LIMB - bits :] = planes
    weights = np.int64(1) << np.arange(LIMB - 1, -1, -1, dtype=np.int64)
    return (padded.reshape(n, limbs, LIMB) * weights).sum(-1)[:, ::-1].copy()
