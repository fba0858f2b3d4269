"""The online baseline: the teacher runs on every training batch, as DeiT does.

It sees the same replayed views as a cache's teacher (rendered at its own resolution by the
loader) and its logits are reduced exactly as the teacher job reduces them for a cache
(:func:`pipeline.store.reduce_logits`, top-k logits rounded to fp16 as the cache stores them),
so cached and online runs differ only in when the teacher runs: its batches are the training
batches instead of a shard's rows in order. Feature and attention targets (``features``:
requests, :mod:`pipeline.teach.feature_request`) are read in the same forward by the teacher
job's hooks, projected by the same seeded matrix, and rounded as a fp16 cache stores them.
"""

from dataclasses import asdict

import torch

from kdcache.errors import ConfigError
from kdcache.pipeline.cache import projection_matrix, reduce_logits, stored_features
from kdcache.pipeline.teach import (
    FeatureRequest,
    FeatureTaps,
    Teacher,
    TeacherSource,
    load_teacher,
    resolve_targets,
)
from kdcache.pipeline.views import normalize


class OnlineTeacher:
    """A frozen teacher producing a batch's targets in the layout the cache stores."""

    def __init__(
        self,
        location: "str | TeacherSource",
        *,
        num_classes: int,
        class_names: list[str] | None = None,
        in_chans: int,
        device: torch.device,
        topk: int | None = None,
        arch: str | None = None,
        amp: bool = False,
        features: list[FeatureRequest] | None = None,
        feature_dim: int | None = None,
    ):
        if not isinstance(location, TeacherSource):
            location = TeacherSource(location=location, arch=arch)
        options = {k: v for k, v in asdict(location).items() if k not in ("location", "name")}
        self.teacher: Teacher = load_teacher(
            location.location,
            name="online",
            num_classes=num_classes,
            class_names=class_names,
            in_chans=in_chans,
            device=device,
            **options,
        )
        if topk is not None and topk < 1:
            raise ConfigError(f"topk: must be at least 1, got {topk}", field="topk")
        self.topk = min(topk or num_classes, num_classes)  # top-K of K or fewer classes: all
        self.device = device
        self.amp = amp
        spec = self.teacher.spec
        self.feature_targets = []
        if features:
            self.feature_targets = resolve_targets(
                self.teacher.model, spec.resolution, spec.in_chans, features, feature_dim, "fp16"
            )
        self.projections = {
            t["name"]: projection_matrix(p["seed"], p["in_dim"], p["dim"])
            for t in self.feature_targets
            if (p := t["projection"])
        }

    @property
    def resolution(self) -> int:
        return self.teacher.spec.resolution

    @torch.no_grad()  # not inference_mode: the loss saves the targets for the student's backward
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Targets for a batch of views on [0, 1] at the teacher's resolution, on the device."""
        spec = self.teacher.spec
        images = normalize(images.to(self.device, non_blocking=True), spec.mean, spec.std)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        taps = FeatureTaps(self.teacher.model, self.feature_targets, self.projections)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp), taps:
            logits = self.teacher.model(images)
        values, index, lse = reduce_logits(logits, self.topk)
        values = values.half().float()  # stored as fp16 in a cache: the same targets exactly
        targets = {"topk_logits": values, "topk_index": index, "logsumexp": lse}
        if self.feature_targets:
            found = taps.collect()
            targets["features"] = {
                t["name"]: torch.from_numpy(
                    stored_features(found[t["name"]].cpu().numpy(), t, "fp16")
                ).to(self.device)
                for t in self.feature_targets
            }
        return targets
