"""The ``q6`` target layout of format ``kdcache/2``: a view's top-k targets in one packed
uint8 array ``topk_packed`` (N, V, B), 19 B at K = 10, C = 1000 (numpy only; docs/format.md
says the same). Per view, bit fields most significant bit first, concatenated and
zero-padded to whole bytes (``numpy.packbits`` order):

1. ``rank`` (ceil(log2 C(C, K)) bits): the K class ids as a set, ascending (:mod:`id_sets`);
2. ``top`` (bit length of K - 1): the position of the largest logit among the ascending ids;
3. ``levels`` (K - 1 fields of 6 bits): for the other ids, ascending, the level ``L`` whose
   ``units(L) * s`` is nearest ``l_0 - l``, ``l_0`` the view's largest logit;
   ``units(L) = L + max(0, L - 32)``: 0..94, steps of one unit near the max (where the
   probability is), of two beyond 32 units;
4. ``scale`` (8 bits, 4-bit exponent e, 4-bit mantissa m): ``s = (16 + m) * 2**(e - 16)``, the
   smallest such unit at least (l_0 - l_{K-1}) / 94;
5. ``tail`` (8 bits): the log-odds ``t = log(tail mass / top-k mass)`` as ``T_LOW + u * step``,
   ``step = (log((C - K) / K) - T_LOW) / 255`` (an upper bound: no tail logit exceeds the
   K-th); 0 and no tail when K = C.

Decoded: logits relative to the largest (``-units(level) * s``, exact in float32, the largest 0),
sorted descending with their ids (equal logits: the stored largest first, then by ascending
id, so the teacher's argmax stays first), and
``logsumexp = log(sum(exp(logits))) + log1p(exp(t))`` (float64, then float32), so the top-k
probabilities keep their ratios and the tail keeps its mass within the tail code's step.
"""

import math

import numpy as np

from kdcache.pipeline.cache.id_sets import (
    bits_to_limbs,
    check_codable,
    limbs_to_bits,
    rank_bits,
    rank_sets,
    unrank_sets,
)

LEVEL_BITS = 6
UNITS = np.arange(64) + np.maximum(0, np.arange(64) - 32)  # measured best of 4 spacings
MIDPOINTS = (UNITS[1:] + UNITS[:-1]) / 2  # a value rounds to the nearest level
CODE_BITS = 8
T_LOW = -12.0  # tail log-odds below this (tail mass < 6.1e-6) are stored as this


def field_bits(topk: int, num_classes: int) -> tuple[int, ...]:
    """Bits of the fields rank, top, levels (all K - 1), scale, tail."""
    top = (topk - 1).bit_length()
    return rank_bits(topk, num_classes), top, (topk - 1) * LEVEL_BITS, CODE_BITS, CODE_BITS


def packed_size(topk: int, num_classes: int) -> int:
    """Bytes of one view's ``topk_packed``."""
    check_codable(topk, num_classes)
    return math.ceil(sum(field_bits(topk, num_classes)) / 8)


def _tail_step(topk: int, num_classes: int) -> float:
    return (math.log((num_classes - topk) / topk) - T_LOW) / 255


def _to_bits(values: np.ndarray, width: int) -> np.ndarray:
    """(n, m) non-negative ints -> (n, m * width) 0/1 uint8, most significant bit first."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.int64)
    planes = (values.astype(np.int64)[..., None] >> shifts) & 1
    return planes.reshape(values.shape[0], -1).astype(np.uint8)


def _from_bits(planes: np.ndarray, width: int) -> np.ndarray:
    """(n, m * width) 0/1 -> (n, m) int64."""
    weights = np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64)
    return (planes.reshape(planes.shape[0], -1, width).astype(np.int64) * weights).sum(-1)


def scale_step(spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per view, the scale code and its unit ``s`` (float32): the smallest representable
    unit >= spread / 94 (the largest, 15.5, if none is)."""
    wanted = np.maximum(spread.astype(np.float64) / UNITS[-1], 0.0)
    exponent = np.clip(np.floor(np.log2(np.maximum(wanted, 2.0**-13))).astype(np.int64) + 12,
                       0, 15)  # fmt: skip
    mantissa = np.ceil(np.ldexp(wanted, -(exponent - 16)) - 16).astype(np.int64)
    carry = mantissa > 15  # rounding up crossed into the next exponent
    exponent, mantissa = exponent + carry, np.where(carry, 0, mantissa)
    top = exponent > 15
    exponent, mantissa = np.where(top, 15, exponent), np.clip(np.where(top, 15, mantissa), 0, 15)
    code = (exponent << 4) | mantissa
    return code, decode_scale(code)


def decode_scale(code: np.ndarray) -> np.ndarray:
    """Scale codes -> steps ``(16 + m) * 2**(e - 16)`` (float32, exact)."""
    code = code.astype(np.int64)
    return np.ldexp(16.0 + (code & 15), (code >> 4) - 16).astype(np.float32)


def encode(logits: np.ndarray, index: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """(..., K) descending logits, their ids, (...) logsumexp -> (..., B) uint8."""
    lead, topk = logits.shape[:-1], logits.shape[-1]
    logits = logits.reshape(-1, topk).astype(np.float32)
    index = index.reshape(-1, topk).astype(np.int64)
    lse = lse.reshape(-1).astype(np.float64)
    n = logits.shape[0]
    order = np.argsort(index, axis=1, kind="stable")
    ids = np.take_along_axis(index, order, 1)
    relative = logits[:, :1] - np.take_along_axis(logits, order, 1)  # >= 0, ascending ids
    top = np.argmax(order == 0, axis=1)  # where the largest logit went
    code, step = scale_step(logits[:, 0] - logits[:, -1])
    levels = np.searchsorted(MIDPOINTS, relative / step[:, None]).astype(np.int64)
    others = levels[np.arange(topk)[None, :] != top[:, None]].reshape(n, topk - 1)
    rank_w, top_w, _, _, _ = field_bits(topk, num_classes)
    parts = [
        limbs_to_bits(rank_sets(ids, num_classes), rank_w),
        _to_bits(top[:, None], top_w),
        _to_bits(others, LEVEL_BITS),
        _to_bits(code[:, None], CODE_BITS),
        _to_bits(_tail_code(relative, lse - logits[:, 0], topk, num_classes)[:, None], CODE_BITS),
    ]
    packed = np.packbits(np.concatenate(parts, 1), axis=1)
    return packed.reshape(*lead, packed.shape[-1])


def _tail_code(relative: np.ndarray, lse_over_top: np.ndarray, topk: int, classes: int):
    """Per view the tail code (see the module): log-odds of the tail against the top-k."""
    if topk == classes:
        return np.zeros(relative.shape[0], np.int64)
    head = np.log(np.exp(-relative.astype(np.float64)).sum(1))  # log top-k mass * e^-l_0
    odds = np.expm1(np.maximum(lse_over_top - head, 0.0))
    with np.errstate(divide="ignore"):
        log_odds = np.log(odds)
    log_odds = np.nan_to_num(log_odds, neginf=T_LOW)
    return np.clip(np.rint((log_odds - T_LOW) / _tail_step(topk, classes)), 0, 255).astype(np.int64)


def decode(
    packed: np.ndarray, topk: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., B) uint8 -> (float32 logits relative to the largest, descending; int32 ids;
    float32 logsumexp relative to the largest logit)."""
    lead = packed.shape[:-1]
    planes = np.unpackbits(packed.reshape(-1, packed.shape[-1]), axis=1)
    widths = field_bits(topk, num_classes)
    edges = np.cumsum((0, *widths))
    field = [planes[:, a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
    n = planes.shape[0]
    ids = unrank_sets(bits_to_limbs(field[0], topk, num_classes), topk, num_classes)
    top = _from_bits(field[1], widths[1])[:, 0] if widths[1] else np.zeros(n, np.int64)
    step = decode_scale(_from_bits(field[3], CODE_BITS)[:, 0])
    levels = np.zeros((n, topk), np.int64)
    others = np.arange(topk)[None, :] != top[:, None]
    levels[others] = _from_bits(field[2], LEVEL_BITS).reshape(-1) if topk > 1 else []
    relative = -UNITS[levels].astype(np.float32) * step[:, None]
    head = np.log(np.exp(relative.astype(np.float64)).sum(1))
    if topk < num_classes:
        tail = T_LOW + _from_bits(field[4], CODE_BITS)[:, 0] * _tail_step(topk, num_classes)
        head = head + np.log1p(np.exp(tail))
    position = np.broadcast_to(np.arange(topk), (n, topk))
    order = np.lexsort((position, position != top[:, None], -relative), axis=1)
    logits = np.take_along_axis(relative, order, 1)
    ids = np.take_along_axis(ids, order, 1)
    return (logits.reshape(*lead, topk), ids.reshape(*lead, topk).astype(np.int32),
            head.astype(np.float32).reshape(lead))  # fmt: skip
