"""Soft-distillation targets from the cached top-k logits and logsumexp, and the tail options.

The teacher distribution comes from the cached top-k logits and the stored logsumexp: the
top-k probabilities at tau = 1 are exact and so is the tail mass 1 - sum(top-k). Tail options
(:func:`distillation_bins`): ``uniform`` spreads it evenly over the other C - K classes (the
default), ``renormalize`` drops it and renormalises the top-k, ``bucket`` keeps it as one
extra "other" bin against the student's total probability of the other classes. At tau != 1
each tail class is given the logit ``logsumexp + log(tail / (C - K))`` (the logit that
reproduces its even share at tau = 1) and the whole vector is tempered (``bucket``: the other
bin gets the tempered total of those even shares). With K = C every option is exactly
full-logit distillation.
"""

import math

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.trainer.kd.modes import TAIL_MODES

_TAIL_FLOOR = 1e-12


def teacher_logits(
    topk_logits: torch.Tensor, topk_index: torch.Tensor, logsumexp: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Full (B, C) logits rebuilt from top-k + logsumexp, tail classes sharing the tail mass evenly."""
    k = topk_logits.shape[-1]
    topk_logits = topk_logits.float()
    logsumexp = logsumexp.float().unsqueeze(-1)
    if k == num_classes:
        full = torch.empty(topk_logits.shape[0], num_classes, device=topk_logits.device)
        return full.scatter_(1, topk_index, topk_logits)
    top_mass = torch.exp(topk_logits - logsumexp).sum(-1, keepdim=True)
    tail = (1 - top_mass).clamp_min(_TAIL_FLOOR) / (num_classes - k)
    full = (logsumexp + tail.log()).expand(-1, num_classes).clone()
    return full.scatter_(1, topk_index, topk_logits)


def distillation_bins(
    student_logits: torch.Tensor,
    topk_logits: torch.Tensor,
    topk_index: torch.Tensor,
    logsumexp: torch.Tensor,
    num_classes: int,
    tau: float,
    tail: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) log-probabilities at temperature ``tau`` over the bins compared.

    ``uniform``: all C classes, the tail mass shared evenly by the C - K others.
    ``renormalize``: the K top classes; the teacher's top-k renormalised, the student's full
    softmax read at those classes. ``bucket``: K + 1 bins, the last one "every other class"
    (the teacher's tail mass; the student's probability of all non-top-k classes).
    """
    student_log = F.log_softmax(student_logits.float() / tau, dim=-1)
    if tail == "uniform":
        teacher = teacher_logits(topk_logits, topk_index, logsumexp, num_classes)
        return student_log, F.log_softmax(teacher / tau, dim=-1)
    if tail not in TAIL_MODES:
        raise ConfigError(f"tail: must be one of {TAIL_MODES}, got {tail!r}", field="tail")
    top = topk_logits.float()
    student_top = student_log.gather(1, topk_index)
    k = top.shape[-1]
    if tail == "renormalize" or k == num_classes:
        return student_top, F.log_softmax(top / tau, dim=-1)
    lse = logsumexp.float().unsqueeze(-1)
    tail_mass = (1 - torch.exp(top - lse).sum(-1, keepdim=True)).clamp_min(_TAIL_FLOOR)
    share = lse + (tail_mass / (num_classes - k)).log()  # each tail class's logit (even shares)
    teacher = F.log_softmax(torch.cat([top / tau, math.log(num_classes - k) + share / tau], -1), -1)
    rest = student_log.scatter(1, topk_index, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([student_top, rest], -1), teacher
