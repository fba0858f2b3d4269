"""Training objectives: cross-entropy plus soft or hard distillation from cached top-k targets.

Formulas follow DeiT (Touvron et al. 2021) and its reference ``DistillationLoss``:

* soft: ``(1 - alpha) * CE(z_s, y) + alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``
* hard: ``(1 - alpha) * CE(z_s, y) + alpha * CE(z_s, argmax z_t)`` (DeiT: alpha = 1/2)

With a distillation token the class head takes the label term and the distillation head the
teacher term; a one-head student takes both on its logits.

KL reduction: ``batchmean`` (timm's, sum over classes, mean over the batch; the default) or
``deit`` (DeiT's reference code: sum / numel, i.e. additionally divided by the class count).

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

KD_MODES = ("none", "soft", "hard")
TEACHER_MODES = ("none", "cached", "online")  # where the targets come from (train --teacher)
KL_REDUCTIONS = ("batchmean", "deit")
TAIL_MODES = ("uniform", "renormalize", "bucket")
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
        raise ValueError(f"--tail must be one of {TAIL_MODES}, got {tail!r}")
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


def soft_distillation(
    student_log: torch.Tensor,
    teacher_log: torch.Tensor,
    tau: float,
    reduction: str = "batchmean",
    numel: int | None = None,
) -> torch.Tensor:
    """``tau^2 * KL(teacher || student)`` from log-probabilities over the same bins.

    ``batchmean`` divides the sum by the batch size; ``deit`` by ``numel`` (DeiT's
    ``outputs_kd.numel()``: batch size times classes; default the bins' count).
    """
    total = F.kl_div(student_log, teacher_log, reduction="sum", log_target=True) * tau * tau
    if reduction == "deit":
        return total / (numel or student_log.numel())
    if reduction == "batchmean":
        return total / student_log.shape[0]
    raise ValueError(f"KL reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")


class DistillationLoss(torch.nn.Module):
    """Label loss plus a distillation term from cached targets; returns (loss, parts)."""

    def __init__(
        self,
        kd: str,
        num_classes: int,
        *,
        alpha: float = 0.5,
        tau: float = 1.0,
        label_smoothing: float = 0.0,
        kl_reduction: str = "batchmean",
        tail: str = "uniform",
    ):
        super().__init__()
        if tail not in TAIL_MODES:
            raise ValueError(f"--tail must be one of {TAIL_MODES}, got {tail!r}")
        if kd not in KD_MODES:
            raise ValueError(f"--kd must be one of {KD_MODES}, got {kd!r}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"--kl-reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        if not 0 <= alpha <= 1 or tau <= 0:
            raise ValueError(f"need 0 <= alpha <= 1 and tau > 0, got alpha={alpha} tau={tau}")
        self.kd, self.num_classes = kd, num_classes
        self.alpha, self.tau = alpha, tau
        self.label_smoothing, self.kl_reduction = label_smoothing, kl_reduction
        self.tail = tail

    def forward(
        self, outputs, labels: torch.Tensor, targets: dict[str, dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``outputs``: logits, or (class, distillation) logits of a DeiT student; ``targets``:
        per teacher name its batched ``topk_logits``, ``topk_index`` and ``logsumexp``."""
        class_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        ce = F.cross_entropy(class_logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.kd == "none":
            return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce).detach()}
        if len(targets) != 1:
            raise ValueError(f"--kd {self.kd} needs one teacher's targets, got {sorted(targets)}")
        (teacher,) = targets.values()
        topk_logits, topk_index = teacher["topk_logits"], teacher["topk_index"]
        if self.kd == "soft":
            student_log, teacher_log = distillation_bins(
                dist_logits,
                topk_logits,
                topk_index,
                teacher["logsumexp"],
                self.num_classes,
                self.tau,
                self.tail,
            )
            kd = soft_distillation(
                student_log, teacher_log, self.tau, self.kl_reduction, dist_logits.numel()
            )
        else:
            kd = F.cross_entropy(dist_logits.float(), topk_index[:, 0])
        loss = (1 - self.alpha) * ce + self.alpha * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}
