"""Training objectives: cross-entropy plus soft or hard distillation from cached top-k targets.

Formulas follow DeiT (Touvron et al. 2021) and its reference ``DistillationLoss``:

* soft: ``(1 - alpha) * CE(z_s, y) + alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``
* hard: ``(1 - alpha) * CE(z_s, y) + alpha * CE(z_s, argmax z_t)`` (DeiT: alpha = 1/2)

With a distillation token the class head takes the label term and the distillation head the
teacher term; a one-head student takes both on its logits.

KL reduction: ``batchmean`` (timm's, sum over classes, mean over the batch; the default) or
``deit`` (DeiT's reference code: sum / numel, i.e. additionally divided by the class count).

The teacher distribution comes from the cached top-k logits and logsumexp with a tail option
(:mod:`trainer.topk_tail`), from sampled class ids (:mod:`trainer.sampled`), and from several
teachers as a mixture, per student head (:mod:`trainer.teacher_mix`).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdcache.errors import ConfigError
from kdcache.trainer.kd.ensemble import TeacherMix, mixture_probs
from kdcache.trainer.kd.modes import KD_MODES, KL_REDUCTIONS, TAIL_MODES, TARGET_KINDS
from kdcache.trainer.kd.sampled import sampled_distillation
from kdcache.trainer.kd.topk_tail import distillation_bins


def soft_distillation(
    student_log: torch.Tensor,
    teacher: torch.Tensor,
    tau: float,
    reduction: str = "batchmean",
    numel: int | None = None,
    *,
    log_target: bool = True,
) -> torch.Tensor:
    """``tau^2 * KL(teacher || student)`` over the same bins; ``teacher`` holds log-probabilities,
    or probabilities (zeros allowed) with ``log_target=False``.

    ``batchmean`` divides the sum by the batch size; ``deit`` by ``numel`` (DeiT's
    ``outputs_kd.numel()``: batch size times classes; default the bins' count).
    """
    total = F.kl_div(student_log, teacher, reduction="sum", log_target=log_target) * tau * tau
    if reduction == "deit":
        return total / (numel or student_log.numel())
    if reduction == "batchmean":
        return total / student_log.shape[0]
    raise ConfigError(
        f"kl_reduction must be one of {KL_REDUCTIONS}, got {reduction!r}", field="kl_reduction"
    )


def _check_options(kd, alpha, tau, kl_reduction, tail, targets, mix) -> None:
    """Refuse options out of range or that do not fit together, naming the field."""
    for field, value, allowed in (("tail", tail, TAIL_MODES), ("kd", kd, KD_MODES),
                                  ("kl_reduction", kl_reduction, KL_REDUCTIONS),
                                  ("targets", targets, TARGET_KINDS)):  # fmt: skip
        if value not in allowed:
            raise ConfigError(f"{field} must be one of {allowed}, got {value!r}", field=field)
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}", field="alpha")
    if tau <= 0:
        raise ConfigError(f"tau must be positive, got {tau}", field="tau")
    if targets == "sampled" and (kd != "soft" or tau != 1):
        raise ConfigError(
            f"targets sampled needs kd soft and tau 1 (ids drawn at tau = 1), got kd {kd} "
            f"tau {tau}",
            field="targets",
        )
    ensemble = mix is not None and any(len(w) > 1 for w in mix.heads.values())
    if ensemble and tail == "bucket" and targets == "topk":
        raise ConfigError(
            "tail bucket takes one teacher; ensembles use uniform or renormalize", field="tail"
        )


class DistillationLoss(torch.nn.Module):
    """Label loss plus a distillation term from cached targets; returns the loss.

    The last call's components (``ce``, ``kd``, detached) are in :attr:`parts`, for logging.

    ``targets``: ``topk`` (top-k logits, logsumexp and ``tail``) or ``sampled`` (RS-KD drawn
    class ids; soft distillation at tau = 1 only). ``mix``: which teachers each head learns
    from (default: the mean of all teachers in the batch's targets, on the distillation head).
    """

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
        targets: str = "topk",
        mix: TeacherMix | None = None,
        criterion: Callable | None = None,
        weights: tuple[float, float] | None = None,
    ):
        super().__init__()
        _check_options(kd, alpha, tau, kl_reduction, tail, targets, mix)
        self.kd, self.num_classes = kd, num_classes
        self.alpha, self.tau = alpha, tau
        self.criterion = criterion
        self.weights = weights if weights is not None else (1 - alpha, alpha)
        self.label_smoothing, self.kl_reduction = label_smoothing, kl_reduction
        self.tail, self.targets, self.mix = tail, targets, mix
        self.parts: dict[str, torch.Tensor] = {}

    def forward(self, outputs, labels: torch.Tensor, targets=None) -> torch.Tensor:
        """``outputs``: logits, or (class, distillation) logits of a DeiT student; ``labels``:
        class ids or (mixed) label probabilities; ``targets``: one teacher's batched targets
        (:class:`~kdcache.trainer.data.Targets`), or per teacher name such targets or dicts of
        ``topk_logits``, ``topk_index`` and ``logsumexp`` (and ``sample_index`` when sampled).
        Sets :attr:`parts`."""
        loss, self.parts = self._terms(outputs, labels, _by_teacher(targets))
        return loss

    def _terms(
        self, outputs, labels, targets: dict
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        two_heads = isinstance(outputs, tuple)
        class_logits, dist_logits = outputs if two_heads else (outputs, outputs)
        if self.criterion is not None:
            ce = self.criterion(class_logits, labels)
        else:
            ce = F.cross_entropy(class_logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.kd == "none":
            return ce, {"ce": ce.detach(), "kd": torch.zeros_like(ce).detach()}
        mix = self.mix or TeacherMix.equal(sorted(targets))
        missing = [name for name in mix.teachers if name not in targets]
        if missing or not targets:
            raise ConfigError(
                f"kd {self.kd}: no targets of teachers {missing or mix.teachers}", field="kd"
            )
        if "cls" in mix.heads and not two_heads:
            raise ConfigError(
                "a class-head teacher needs a student with a distillation token",
                field="head_teachers",
            )
        head_logits = {"cls": class_logits, "dist": dist_logits}
        terms = [self._teacher_term(head_logits[h], targets, w) for h, w in mix.heads.items()]
        kd = torch.stack(terms).mean()
        loss = self.weights[0] * ce + self.weights[1] * kd
        return loss, {"ce": ce.detach(), "kd": kd.detach()}

    def _teacher_term(
        self, logits: torch.Tensor, targets: dict, weights: dict[str, float]
    ) -> torch.Tensor:
        """One head's distillation term from the teachers in ``weights``."""
        one = targets[next(iter(weights))] if len(weights) == 1 else None
        if self.kd == "hard":
            if one is not None:
                return F.cross_entropy(logits.float(), one["topk_index"][:, 0])
            ensemble = mixture_probs(targets, weights, self.num_classes, 1.0, "uniform")
            return F.cross_entropy(logits.float(), ensemble.argmax(-1))
        if self.targets == "sampled":
            probs = mixture_probs(targets, weights, self.num_classes, 1.0, self.tail, sampled=True)
            return sampled_distillation(logits, probs, self.kl_reduction, logits.numel())
        if one is not None:
            bins = distillation_bins(
                logits,
                one["topk_logits"],
                one["topk_index"],
                one["logsumexp"],
                self.num_classes,
                self.tau,
                self.tail,
            )
            return soft_distillation(*bins, self.tau, self.kl_reduction, logits.numel())
        probs = mixture_probs(targets, weights, self.num_classes, self.tau, self.tail)
        student_log = F.log_softmax(logits.float() / self.tau, dim=-1)
        return soft_distillation(
            student_log, probs, self.tau, self.kl_reduction, logits.numel(), log_target=False
        )


def _by_teacher(targets) -> dict[str, dict[str, torch.Tensor]]:
    """Targets as per-teacher dicts of tensors, whatever form they came in."""
    if targets is None:
        return {}
    if hasattr(targets, "as_dict"):  # one teacher's Targets
        return {"teacher": targets.as_dict()}
    return {name: t.as_dict() if hasattr(t, "as_dict") else t for name, t in targets.items()}
