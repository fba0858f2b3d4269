"""What a user asks to cache besides logits, as words (no torch, no numpy: ``--help`` stays
light): ``--features LAYER[:POOL]`` and ``--attention BLOCK[:SxS]``.

- ``LAYER``: ``pre_logits`` (what timm's ``FeatureDistillationTask`` consumes:
  ``forward_head(forward_features(x), pre_logits=True)``), an integer (timm's
  ``forward_intermediates`` index: the output of ``feature_info[i]['module']``), or a module
  name (``layer3``, ``blocks.2``; any ``nn.Module``, through a forward hook).
- ``POOL``: ``avg`` (global average; over patch tokens for a ViT's token output), ``sSxS``
  spatial average pooling to S x S (``s2x2``), ``cls`` (a ViT's class token), ``none`` (the
  output as it is; ``pre_logits``' only pool). Default ``none`` for ``pre_logits``, else ``avg``.
- ``BLOCK``: a ViT block index; the CLS-to-patch attention of its attention module, heads
  averaged, average-pooled to S x S (default: the patch grid itself, ``full``).
"""

import re
from dataclasses import dataclass

from kdcache.errors import ConfigError

FEATURE_POOLS = ("avg", "cls", "none")  # and sSxS
PRE_LOGITS = "pre_logits"
FULL = "full"  # attention at the patch grid's own size
FEATURES_HELP = (
    "also cache features of LAYER per view: pre_logits (timm's FeatureDistillationTask "
    "target), a forward_intermediates index or a module name; POOL avg, sSxS (e.g. s2x2), "
    "cls or none (repeatable)"
)
ATTENTION_HELP = (
    "also cache a ViT teacher's CLS-to-patch attention of block BLOCK, heads averaged, "
    "pooled to SxS (default: the patch grid) (repeatable)"
)
FEATURE_DIM_HELP = (
    "project every cached feature's channels to D with a fixed seeded random matrix "
    "(stored in the cache)"
)
_SPATIAL = re.compile(r"^s?(\d+)x(\d+)$")


@dataclass(frozen=True)
class FeatureRequest:
    """One extra target: ``kind`` ``feature`` or ``attention``, the layer (or block) and pool."""

    kind: str
    layer: str
    pool: str

    @property
    def name(self) -> str:
        """The target's name in a cache and a batch (``pre_logits``, ``layer3:s2x2``,
        ``attention:3:s4x4``)."""
        if self.kind == "attention":
            return f"attention:{self.layer}:{self.pool}"
        return PRE_LOGITS if self.layer == PRE_LOGITS else f"{self.layer}:{self.pool}"

    @property
    def spatial(self) -> int | None:
        """S of an ``sSxS`` pool, else None."""
        found = _SPATIAL.match(self.pool)
        return int(found[1]) if found else None


def parse_feature(text: str) -> FeatureRequest:
    """``LAYER[:POOL]`` -> a feature request (ConfigError naming the text if malformed)."""
    layer, _, pool = text.partition(":")
    if not layer:
        raise ConfigError(f"features {text!r}: no layer named (LAYER[:POOL])")
    pool = pool or ("none" if layer == PRE_LOGITS else "avg")
    if pool not in FEATURE_POOLS:
        pool = _spatial_pool(text, pool)
    if layer == PRE_LOGITS and pool != "none":
        raise ConfigError(f"features {text!r}: pre_logits is pooled by the model; no POOL")
    return FeatureRequest("feature", layer, pool)


def parse_attention(text: str) -> FeatureRequest:
    """``BLOCK[:SxS]`` -> an attention request."""
    block, _, pool = text.partition(":")
    if not block.lstrip("-").isdigit():
        raise ConfigError(f"attention {text!r}: BLOCK must be a ViT block index (BLOCK[:SxS])")
    return FeatureRequest("attention", str(int(block)), _spatial_pool(text, pool) if pool else FULL)


def _spatial_pool(text: str, pool: str) -> str:
    found = _SPATIAL.match(pool)
    if not found or found[1] != found[2] or int(found[1]) < 1:
        raise ConfigError(
            f"{text!r}: pool {pool!r} is none of {', '.join(FEATURE_POOLS)} or SxS (e.g. s2x2)"
        )
    return f"s{found[1]}x{found[1]}"


def requests(features: tuple[str, ...], attention: tuple[str, ...]) -> list[FeatureRequest]:
    """Every request, parsed, names distinct."""
    found = [parse_feature(t) for t in features] + [parse_attention(t) for t in attention]
    names = [r.name for r in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"features and attention: the same target asked twice in {names}")
    return found
