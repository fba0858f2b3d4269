"""The ``q8`` target layout of format ``kdcache/2``: what is stored of a view's top-k targets,
and how a reader gets them back (numpy only; docs/format.md says the same).

- ``topk_logits`` uint8 (K): ``q_k = round((l_0 - l_k) / scale)``, clipped to 0..255, where
  ``l_0`` is the view's largest logit and ``scale`` = (l_0 - l_{K-1}) / 255 (1 if that is 0);
- ``logit_scale`` float16: that scale (nats per step);
- ``logsumexp`` float16: logsumexp minus ``l_0``;
- ``topk_index`` uint8 (ceil(K * b / 8)): the K class ids as b = ceil(log2 C)-bit unsigned
  integers, most significant bit first, concatenated (``numpy.packbits`` order).

Decoded, the logits are relative to the view's largest one (top-1 = 0) and so is the
logsumexp: every probability, at every temperature, is that of the absolute logits.
"""

import math

import numpy as np

TARGET_DTYPES = ("fp16", "q8", "q6")
QUANTISED = ("q8", "q6")  # stored lossy: their ledger has quant_kl
LEVELS = 255


def id_bits(num_classes: int) -> int:
    """Bits per class id: ceil(log2 C), at least 1."""
    return max(1, math.ceil(math.log2(max(num_classes, 2))))


def packed_bytes(topk: int, num_classes: int) -> int:
    """Bytes of one view's packed class ids."""
    return math.ceil(topk * id_bits(num_classes) / 8)


def pack_ids(index: np.ndarray, num_classes: int) -> np.ndarray:
    """(..., K) class ids -> (..., packed_bytes) uint8."""
    bits = id_bits(num_classes)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    planes = (index.astype(np.int64)[..., None] >> shifts) & 1  # (..., K, bits), MSB first
    flat = planes.reshape(*index.shape[:-1], index.shape[-1] * bits).astype(np.uint8)
    return np.packbits(flat, axis=-1)


def unpack_ids(packed: np.ndarray, topk: int, num_classes: int) -> np.ndarray:
    """(..., packed_bytes) uint8 -> (..., K) int32 class ids."""
    bits = id_bits(num_classes)
    flat = np.unpackbits(packed, axis=-1, count=topk * bits).astype(np.int32)
    planes = flat.reshape(*packed.shape[:-1], topk, bits)
    return (planes << np.arange(bits - 1, -1, -1, dtype=np.int32)).sum(-1, dtype=np.int32)


def quantize(
    logits: np.ndarray, logsumexp: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., K) descending logits and (...) logsumexp -> (uint8 levels, float16 scale,
    float16 logsumexp relative to the largest logit)."""
    logits = logits.astype(np.float32)
    top = logits[..., 0]
    spread = top - logits[..., -1]
    scale = np.where(spread > 0, spread / LEVELS, 1.0).astype(np.float16)
    step = scale.astype(np.float32)[..., None]
    levels = np.clip(np.rint((top[..., None] - logits) / step), 0, LEVELS).astype(np.uint8)
    return levels, scale, (logsumexp.astype(np.float32) - top).astype(np.float16)


def dequantize(
    levels: np.ndarray, scale: np.ndarray, logsumexp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The stored q8 arrays -> (float32 logits relative to the largest, float32 logsumexp)."""
    logits = -levels.astype(np.float32) * scale.astype(np.float32)[..., None]
    return logits, logsumexp.astype(np.float32)


def topk_kl(
    logits: np.ndarray,
    logsumexp: np.ndarray,
    other: np.ndarray,
    other_lse: np.ndarray,
    tail: bool = True,
) -> np.ndarray:
    """KL(p || q) in nats per view between two top-k targets on the same class ids, each
    with its tail mass (1 - top-k mass) as one more outcome; without ``tail`` (K = C: every
    class is in the top-k) the softmax of the logits alone. A top-k mass above 1 (fp16
    rounding of a confident view's logits against its float32 logsumexp) counts as 1."""
    if not tail:
        logsumexp, other_lse = _logsumexp(logits), _logsumexp(other)
    logsumexp = np.maximum(logsumexp, _logsumexp(logits))
    other_lse = np.maximum(other_lse, _logsumexp(other))
    log_p = logits.astype(np.float64) - logsumexp.astype(np.float64)[..., None]
    log_q = other.astype(np.float64) - other_lse.astype(np.float64)[..., None]
    p, q = np.exp(log_p), np.exp(log_q)
    tail_p = np.clip(1 - p.sum(-1), 1e-12, 1)
    tail_q = np.clip(1 - q.sum(-1), 1e-12, 1)
    return (p * (log_p - log_q)).sum(-1) + tail_p * (np.log(tail_p) - np.log(tail_q))


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    values = logits.astype(np.float64)
    top = values.max(-1)
    return top + np.log(np.exp(values - top[..., None]).sum(-1))
