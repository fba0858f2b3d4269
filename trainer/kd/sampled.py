"""Sampled distillation (RS-KD, Anshumann et al. 2025) from class ids drawn from the teacher.

The cache holds, per view, D class ids drawn with replacement from the teacher's softmax p at
temperature 1 (``pipeline.sampled_targets``). Their empirical distribution ``q(c) = n_c / D``
has expectation p, so

    L = sum_c q(c) * -log s(c)        (s: the student's softmax)

is an unbiased estimate of the cross-entropy ``H(p, s) = KL(p || s) + H(p)``, and its gradient
in the student's logits, ``s - q``, an unbiased estimate of the KL gradient ``s - p``. The KL
value itself is not estimated (the teacher entropy H(p) is not stored; it does not depend on
the student), so a sampled run's logged ``kd`` is larger than a top-k run's by about H(p).
Top-k targets, with any tail option, are biased for K < C instead (tests/test_losses.py).
Sampled targets are drawn at temperature 1: the trainer refuses ``--tau`` other than 1 with
them (tempering would need the teacher's logits at the drawn classes, which are not stored).
"""

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError


def sampled_probs(sample_index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The empirical distribution (B, C) of drawn class ids (B, D): counts / D."""
    counts = torch.zeros(sample_index.shape[0], num_classes, device=sample_index.device)
    counts.scatter_add_(1, sample_index.long(), torch.ones_like(sample_index, dtype=counts.dtype))
    return counts / sample_index.shape[1]


def sampled_distillation(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    reduction: str = "batchmean",
    numel: int | None = None,
) -> torch.Tensor:
    """``sum_c q(c) * -log s(c)`` summed over the batch, divided by the batch size
    (``batchmean``) or by ``numel`` (``deit``: batch size times classes), as the KL term is."""
    total = -(teacher_probs * F.log_softmax(student_logits.float(), dim=-1)).sum()
    if reduction == "deit":
        return total / (numel or student_logits.numel())
    if reduction == "batchmean":
        return total / student_logits.shape[0]
    raise ConfigError(
        f"kl_reduction: must be one of ('batchmean', 'deit'), got {reduction!r}",
        field="kl_reduction",
    )
