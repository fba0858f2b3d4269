"""Training objectives: cross-entropy plus soft or hard distillation from cached top-k targets.

Formulas follow DeiT (Touvron et al. 2021) and its reference ``DistillationLoss``:

* soft: ``(1 - alpha) * CE(z_s, y) + alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``
* hard: ``(1 - alpha) * CE(z_s, y) + alpha * CE(z_s, argmax z_t)`` (DeiT: alpha = 1/2)

With a distillation token the class head takes the label term and the distillation head the
teacher term; a one-head student takes both on its logits.

KL reduction: ``batchmean`` (timm's, sum over classes, mean over the batch; the default) or
``deit`` (DeiT's reference code: sum / numel, i.e. additionally divided by the class count).

The teacher distribution comes from the cached top-k logits and the stored logsumexp: the
top-k probabilities at tau = 1 are exact, the tail mass 1 - sum(top-k) is exact, and it is
spread evenly over the other C - K classes. At tau != 1 each tail class is given the logit
``logsumexp + log(tail / (C - K))`` (the logit that reproduces its even share at tau = 1) and
the whole vector is tempered; with K = C this is exactly full-logit distillation.
"""

import torch
import torch.nn.functional as F

KD_MODES = ("none", "soft", "hard")
KL_REDUCTIONS = ("batchmean", "deit")
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


def soft_distillation(
    student_logits: torch.Tensor, teacher: torch.Tensor, tau: float, reduction: str = "batchmean"
) -> torch.Tensor:
    """``tau^2 * KL(softmax(teacher / tau) || softmax(student / tau))`` with the named reduction."""
    student_log = F.log_softmax(student_logits.float() / tau, dim=-1)
    teacher_log = F.log_softmax(teacher / tau, dim=-1)
    total = F.kl_div(student_log, teacher_log, reduction="sum", log_target=True) * tau * tau
    if reduction == "deit":
        return total / student_logits.numel()
    if reduction == "batchmean":
        return total / student_logits.shape[0]
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
    ):
        super().__init__()
        if kd not in KD_MODES:
            raise ValueError(f"--kd must be one of {KD_MODES}, got {kd!r}")
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"--kl-reduction must be one of {KL_REDUCTIONS}, got {kl_reduction!r}")
        if not 0 <= alpha <= 1 or tau <= 0:
            raise ValueError(f"need 0 <= alpha <= 1 and tau > 0, got alpha={alpha} tau={tau}")
        self.kd, self.num_classes = kd, num_classes
        self.alpha, self.tau = alpha, tau
        self.label_smoothing, self.kl_reduction = label_smoothing, kl_reduction

    def forward(self, outputs, labels, topk_logits, topk_index, logsumexp):
        class_logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        ce = F.cross_entropy(class_logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.kd == "none":
            return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce).detach()}
        if self.kd == "soft":
            teacher = teacher_logits(topk_logits, topk_index, logsumexp, self.num_classes)
            kd = soft_distillation(dist_logits, teacher, self.tau, self.kl_reduction)
        else:
            kd = F.cross_entropy(dist_logits.float(), topk_index[:, 0])
        loss = (1 - self.alpha) * ce + self.alpha * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}
