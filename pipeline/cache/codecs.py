"""How a cache's target layout (``attrs.layout.target_dtype``) stores a block of targets and
reads it back: fp16 logits as they are, ``q8`` quantised (:mod:`quantize`), ``q6`` packed
(:mod:`q6_layout`); feature targets per :mod:`feature_layout`. Encoding starts from the
teacher's float32 logits."""

from dataclasses import dataclass

import numpy as np

from kdcache.pipeline.cache.feature_layout import FEATURE_KEY, decode_features, encode_features
from kdcache.pipeline.cache.q6_layout import decode as decode_q6
from kdcache.pipeline.cache.q6_layout import encode as encode_q6
from kdcache.pipeline.cache.quantize import QUANTISED, dequantize, pack_ids, quantize, unpack_ids
from kdcache.pipeline.cache.target_block import SAMPLE_ARRAYS, ShardTargets, index_dtype


@dataclass(frozen=True)
class TargetCodec:
    """The layout of one cache: its target dtype, K and number of classes."""

    target_dtype: str
    topk: int
    num_classes: int

    def encode(self, block: ShardTargets, features: list[dict]) -> dict[str, np.ndarray]:
        """A block's teacher arrays as stored (q8, q6: quantised and packed; fp16 as fp16;
        feature targets fp16, or q8 levels in a quantised layout). ``features``: the teacher's
        feature target records."""
        arrays = {k: v for k, v in block.arrays().items()
                  if k != "params" and not k.startswith(FEATURE_KEY)}  # fmt: skip
        encoded = encode_features(block.features, features, self.target_dtype)
        if self.target_dtype == "q6":
            packed = encode_q6(block.topk_logits, block.topk_index, block.logsumexp,
                               self.num_classes)  # fmt: skip
            samples = {k: arrays[k] for k in SAMPLE_ARRAYS if k in arrays}
            return {"topk_packed": packed, **samples, **encoded}
        if self.target_dtype != "q8":  # fp16: cast here, so the checksum is of what is read
            with np.errstate(over="ignore"):  # beyond fp16: inf, refused by the writer
                logits = block.topk_logits.astype(np.float16)
            return arrays | {"topk_logits": logits} | encoded
        levels, scale, lse = quantize(block.topk_logits, block.logsumexp)
        index = pack_ids(block.topk_index, self.num_classes)
        arrays.update(topk_logits=levels, logit_scale=scale, topk_index=index, logsumexp=lse)
        return arrays | encoded

    def decode(
        self, params: np.ndarray, stored: dict[str, np.ndarray], features: list[dict]
    ) -> ShardTargets:
        """Stored arrays back to targets (q8, q6: logits and logsumexp relative to the view's
        max; q6: sorted descending, equal logits the argmax first, then by class id)."""
        stored = dict(stored)
        decoded = decode_features(stored, features, self.target_dtype)
        if self.target_dtype not in QUANTISED:
            return ShardTargets(params=params, **stored, features=decoded)
        classes = self.num_classes
        if self.target_dtype == "q6":
            logits, index, lse = decode_q6(stored.pop("topk_packed"), self.topk, classes)
        else:
            logits, lse = dequantize(stored.pop("topk_logits"), stored.pop("logit_scale"),
                                     stored.pop("logsumexp"))  # fmt: skip
            index = unpack_ids(stored.pop("topk_index"), self.topk, classes)
        index = index.astype(index_dtype(classes))
        return ShardTargets(params, logits, index, lse, **stored, features=decoded)
