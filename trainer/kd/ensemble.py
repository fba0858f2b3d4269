"""Several teachers: which teachers each student head learns from, and their mixture.

An ensemble's target is the weighted mean of the teachers' probabilities at the distillation
temperature, ``sum_i w_i softmax(z_i / tau)`` (weights normalised to sum 1; equal weights: the
plain mean). Each teacher's distribution is first rebuilt over all C classes from what the cache
holds: ``uniform`` tail (exact top-k, the exact tail mass spread evenly over the other classes),
``renormalize`` (the top-k renormalised, zero elsewhere) or, with sampled targets, the empirical
distribution of its drawn ids (an unbiased estimate of its softmax, so the mixture's is too).
With K = C the mixture is exactly that of the full softmaxes. The ``bucket`` tail compares
per-teacher bins (each teacher its own top-k), which cannot be averaged: it takes one teacher.
Hard distillation from an ensemble uses the argmax of the mean (``uniform``, tau = 1).

Heads of a DeiT student (``VisionTransformerDistilled``): by default the class head takes the
label term and the distillation head the teacher term from the ensemble of all teachers read.
``--head-teacher dist=B`` gives the distillation head teacher B alone; ``--head-teacher cls=A``
gives the class head, besides its label term, teacher A's term: the teacher term is then the
mean of the two heads' terms, so alpha still weighs labels against teachers.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.trainer.kd.sampled import sampled_probs
from kdcache.trainer.kd.topk_tail import teacher_logits

HEADS = ("cls", "dist")


@dataclass(frozen=True)
class TeacherMix:
    """Per student head, the teachers it distils from and their weights (summing to 1)."""

    heads: dict[str, dict[str, float]]

    @property
    def teachers(self) -> list[str]:
        return sorted({name for weights in self.heads.values() for name in weights})

    @classmethod
    def equal(cls, teachers: list[str]) -> "TeacherMix":
        """The plain mean of ``teachers`` on the distillation head (or the only head)."""
        return cls({"dist": {name: 1 / len(teachers) for name in teachers}})


def teacher_mix(
    teachers: list[str],
    weights: dict[str, float] | None = None,
    head_teachers: dict[str, str] | None = None,
    two_heads: bool = False,
) -> TeacherMix:
    """Check ``--teacher-weight`` and ``--head-teacher`` against the teachers read and the
    student; return who teaches which head."""
    weights, head_teachers = weights or {}, head_teachers or {}
    if weights and set(weights) != set(teachers):
        raise ConfigError(
            f"teacher_weights: give a weight for every teacher {teachers} or none, "
            f"got {sorted(weights)}",
            field="teacher_weights",
        )
    if any(w <= 0 for w in weights.values()):
        raise ConfigError(
            f"teacher_weights: weights must be positive, got {weights}", field="teacher_weights"
        )
    for head, name in head_teachers.items():
        if head not in HEADS:
            raise ConfigError(
                f"head_teachers: head must be one of {HEADS}, got {head!r}", field="head_teachers"
            )
        if name not in teachers:
            raise ConfigError(
                f"head_teachers: {head}={name}: not among the teachers {teachers}",
                field="head_teachers",
            )
    if "cls" in head_teachers and not two_heads:
        raise ConfigError(
            "head_teachers: cls=...: the student has one head; use a model with a "
            "distillation token (e.g. deit_tiny_distilled_patch16_224)",
            field="head_teachers",
        )
    raw = {name: weights.get(name, 1.0) for name in teachers}
    heads = {}
    if "cls" in head_teachers:
        heads["cls"] = {head_teachers["cls"]: 1.0}
    if "dist" in head_teachers:
        heads["dist"] = {head_teachers["dist"]: 1.0}
    else:
        heads["dist"] = {name: w / sum(raw.values()) for name, w in raw.items()}
    return TeacherMix(heads)


def teacher_probs(
    target: dict[str, torch.Tensor], num_classes: int, tau: float, tail: str, sampled: bool
) -> torch.Tensor:
    """One teacher's distribution (B, C) at ``tau``, rebuilt from its cached targets."""
    if sampled:
        return sampled_probs(target["sample_index"], num_classes)
    top = target["topk_logits"].float()
    if tail == "uniform":
        full = teacher_logits(top, target["topk_index"], target["logsumexp"], num_classes)
        return F.softmax(full / tau, dim=-1)
    if tail == "renormalize":
        probs = torch.zeros(top.shape[0], num_classes, device=top.device)
        return probs.scatter_(1, target["topk_index"], F.softmax(top / tau, dim=-1))
    raise ConfigError(
        f"tail: {tail} cannot be averaged over teachers; use uniform or renormalize", field="tail"
    )


def mixture_probs(
    targets: dict[str, dict[str, torch.Tensor]],
    weights: dict[str, float],
    num_classes: int,
    tau: float,
    tail: str,
    sampled: bool = False,
) -> torch.Tensor:
    """``sum_i w_i p_i`` (B, C) over the teachers in ``weights``."""
    return sum(
        weight * teacher_probs(targets[name], num_classes, tau, tail, sampled)
        for name, weight in weights.items()
    )
