"""Mixup and CutMix planned per view, with the partner in the same shard (replayed by
``pixel_ops``).

Semantics follow timm's ``Mixup`` in element mode: with both enabled, CutMix is chosen with
probability ``mix_switch_prob``; lambda is drawn from Beta(alpha, alpha) of the chosen mode;
a view is mixed at all with probability ``mix_prob``. The CutMix box is timm's ``rand_bbox``
done in fractions of the view (side ``sqrt(1 - lambda)``, centre uniform, clipped to the view),
and lambda is corrected to one minus the box area (timm's ``correct_lam``).

The partner. timm pairs a batch with its reverse, which no cache can replay (the batch is the
trainer's). kdcache draws the partner per (seed, row, view) among the *other rows of the same
shard*: the teacher job decodes whole shards, and the trainer's loader reads a shard's tar as
one unit (DataLoader workers and ranks split by whole shards), keeping the shard's encoded
samples until it has rendered all of them, so both sides hold the partner without any random
access. The partner contributes its own view ``v`` (its crop, flip, RandAugment, jitter and
erasing, not its own mixing), as a batch-mixing pipeline would.

Columns: ``mix_mode`` (0 none, 1 Mixup, 2 CutMix), ``mix_partner`` (the partner's position in
the shard: row id minus the shard's first row id), ``mix_lam`` (weight of the sample's own
image), ``mix_top``, ``mix_left``, ``mix_height``, ``mix_width`` (CutMix box, fractions of
the view, pasted from the partner; zero otherwise).
"""

import numpy as np

from kdcache.pipeline.views.augment import fraction_box
from kdcache.pipeline.views.draws import beta, uniform

MIX_COLUMNS = (
    "mix_mode",
    "mix_partner",
    "mix_lam",
    "mix_top",
    "mix_left",
    "mix_height",
    "mix_width",
)
MIXUP, CUTMIX = 1, 2
_MIX_DRAW = 300  # 300..304, then Beta draws from 310


def mix_params(
    plan, rows: np.ndarray, views: np.ndarray, positions: np.ndarray, shard_rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Mixing columns; ``positions`` is each row's position in its shard of ``shard_rows`` rows."""
    seed = plan.seed
    shape = np.broadcast(rows, views).shape
    use_cutmix = np.full(shape, plan.cutmix_alpha > 0)
    if plan.mixup_alpha > 0 and plan.cutmix_alpha > 0:
        use_cutmix = uniform(seed, rows, views, _MIX_DRAW + 1) < plan.mix_switch_prob
    lam = np.ones(shape)
    for alpha, chosen in ((plan.mixup_alpha, ~use_cutmix), (plan.cutmix_alpha, use_cutmix)):
        if alpha > 0:
            lam = np.where(chosen, beta(seed, rows, views, _MIX_DRAW + 10, alpha), lam)
    mixed = uniform(seed, rows, views, _MIX_DRAW) < plan.mix_prob
    others = np.maximum(shard_rows - 1, 1)
    partner = np.floor(uniform(seed, rows, views, _MIX_DRAW + 2) * others)
    partner = np.where(shard_rows > 1, partner + (partner >= positions), positions)
    side = np.sqrt(1 - lam)
    boxes = []
    for draw in (3, 4):  # vertical, then horizontal: start and length, clipped to the view
        centre = uniform(seed, rows, views, _MIX_DRAW + draw)
        start = np.clip(centre - side / 2, 0, 1)
        boxes += [start, np.clip(centre + side / 2, 0, 1) - start]
    cut = mixed & use_cutmix
    top, height, left, width = (np.where(cut, b, 0.0) for b in boxes)
    lam = np.where(cut, 1 - height * width, np.where(mixed, lam, 1.0))
    mode = np.where(mixed, np.where(use_cutmix, CUTMIX, MIXUP), 0)
    partner = np.where(mixed, partner, positions)
    values = (mode, partner, lam, top, left, height, width)
    return {name: np.broadcast_to(v, shape) for name, v in zip(MIX_COLUMNS, values, strict=True)}


def cutmix_box(values: dict[str, float], size: int) -> tuple[int, int, int, int]:
    """Pixel box of a CutMix view at ``size``."""
    return fraction_box(
        values["mix_top"], values["mix_left"], values["mix_height"], values["mix_width"], size
    )


def mix_weight(values: dict[str, float], size: int) -> float:
    """Weight of the sample's own label in the view rendered at ``size`` (the pixel share its
    image keeps; 1 for an unmixed view)."""
    if values["mix_mode"] == CUTMIX:
        _, _, h, w = cutmix_box(values, size)
        return 1.0 - h * w / (size * size)
    return float(values["mix_lam"])
