"""Mixing on the trainer's side: mixed labels for the loss, and label-space mixing.

Exact mixing (``--mixing exact``, the default): the cache's plan mixes views, the teacher saw
the mixed image, and the trainer rebuilds the same image; the label term is
``lam * CE(y_a) + (1 - lam) * CE(y_b)`` (cross-entropy against the mixed one-hot target, which
is the same thing) and the distillation term takes the cached targets as they are.

Label-space mixing (``--mixing label``, FKD-style, for comparison): the cache holds unmixed
views; the trainer mixes the images with its own Mixup/CutMix options (the plan's mixing
columns are drawn by the trainer from the run's plan options) and mixes the two samples'
cached teacher distributions with the same lambda. The mixture is taken over probabilities at
temperature 1 (top-k plus the uniform tail share of each sample) and stored as full-class
targets (K = C, logsumexp 0), which every distillation option then reads as full logits.
"""

from dataclasses import replace

import numpy as np
import torch

from kdcache.errors import ConfigError
from kdcache.pipeline.cache import CacheMismatch
from kdcache.pipeline.data import Manifest, ShardInfo
from kdcache.pipeline.views import MIX_COLUMNS, MIX_FIELDS
from kdcache.trainer.data.targets import CachedTargets, ShardBlock
from kdcache.trainer.kd import teacher_logits


class LabelMixedTargets(CachedTargets):
    """A cache of unmixed views, with the run's own mixing columns added to its params."""

    def __init__(self, location: str, manifest: Manifest, *, plan: dict | None = None, **options):
        """``options`` as for :class:`CachedTargets` (top-k targets only)."""
        if options.get("sampled"):
            raise ConfigError(
                "mixing: label mixes top-k distributions, not sampled targets", field="mixing"
            )
        plan = dict(plan or {})
        mixing = {name: plan.pop(name) for name in MIX_FIELDS if name in plan}
        super().__init__(location, manifest, plan=plan, **options)
        if self.plan.mixes:
            raise CacheMismatch(
                f"{location}: its plan mixes views (the teacher saw mixed images); "
                "label mixing needs a cache without mixing (mixing exact replays its mixed views)",
                field="mixing",
            )
        self.plan = replace(self.plan, **mixing)
        if not self.plan.mixes:
            raise ConfigError(
                "mixing: label needs plan.mixup_alpha or plan.cutmix_alpha", field="mixing"
            )

    def block(self, shard: ShardInfo, views: list[int] | None = None) -> ShardBlock:
        cached = super().block(shard, views)
        views = range(cached.params.shape[1]) if views is None else views
        mixing = self.plan.shard_params(self.manifest, shard, views)[..., -len(MIX_COLUMNS) :]
        params = np.concatenate([cached.params, mixing], axis=-1)
        return ShardBlock(params, cached.targets, cached.views)


def mix_targets(
    own: dict[str, torch.Tensor], partner: dict[str, torch.Tensor], lam: float, num_classes: int
) -> dict[str, torch.Tensor]:
    """``lam * p_own + (1 - lam) * p_partner`` over all classes, as full-class targets."""
    probabilities = [
        torch.softmax(
            teacher_logits(
                t["topk_logits"][None], t["topk_index"][None], t["logsumexp"][None], num_classes
            )[0],
            -1,
        )  # fmt: skip
        for t in (own, partner)
    ]
    mixed = lam * probabilities[0] + (1 - lam) * probabilities[1]
    values, index = mixed.clamp_min(1e-12).log().sort(descending=True)
    return {"topk_logits": values, "topk_index": index, "logsumexp": torch.tensor(0.0)}


def label_targets(batch: dict, num_classes: int) -> torch.Tensor:
    """Class ids, or for mixed samples the mixed one-hot targets ``lam * y_a + (1 - lam) * y_b``."""
    if "mix_lam" not in batch:
        return batch["label"]
    lam = batch["mix_lam"].float()[:, None]
    own = torch.nn.functional.one_hot(batch["label"], num_classes).float()
    partner = torch.nn.functional.one_hot(batch["mix_label"], num_classes).float()
    return lam * own + (1 - lam) * partner
