import pytest
import torch
import torch.nn.functional as F

from trainer.losses import DistillationLoss, soft_distillation, teacher_logits

C = 10


def _full_targets(logits: torch.Tensor, k: int):
    values, index = logits.topk(k, dim=-1)
    return values, index, torch.logsumexp(logits, dim=-1)


def test_topk_with_all_classes_equals_full_logit_distillation():
    torch.manual_seed(0)
    teacher, student = torch.randn(16, C) * 3, torch.randn(16, C)
    rebuilt = teacher_logits(*_full_targets(teacher, C), C)
    torch.testing.assert_close(rebuilt, teacher)
    for tau in (1.0, 4.0):
        expected = (
            F.kl_div(
                F.log_softmax(student / tau, -1),
                F.softmax(teacher / tau, -1),
                reduction="batchmean",
            )
            * tau**2
        )
        got = soft_distillation(student, rebuilt, tau, "batchmean")
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        deit = soft_distillation(student, rebuilt, tau, "deit")
        torch.testing.assert_close(deit, expected * 16 / student.numel(), rtol=1e-6, atol=1e-6)


def test_topk_keeps_exact_top_probabilities_and_tail_mass():
    torch.manual_seed(1)
    teacher = torch.randn(8, C) * 2
    values, index, lse = _full_targets(teacher, 3)
    probs = F.softmax(teacher_logits(values, index, lse, C), -1)
    true = F.softmax(teacher, -1)
    torch.testing.assert_close(probs.gather(1, index), true.gather(1, index))
    tail_true = 1 - true.gather(1, index).sum(-1)
    mask = torch.ones_like(probs, dtype=torch.bool).scatter_(1, index, False)
    tail = probs[mask].view(8, C - 3)
    torch.testing.assert_close(tail.sum(-1), tail_true)
    torch.testing.assert_close(tail, tail_true[:, None].expand(-1, C - 3) / (C - 3))


def test_distillation_loss_heads_and_modes():
    torch.manual_seed(2)
    labels = torch.randint(0, C, (6,))
    teacher = torch.randn(6, C)
    targets = _full_targets(teacher, C)
    cls, dist = torch.randn(6, C), torch.randn(6, C)
    hard = DistillationLoss("hard", C, alpha=0.5)
    loss, parts = hard((cls, dist), labels, *targets)
    expected = 0.5 * F.cross_entropy(cls, labels) + 0.5 * F.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(loss, expected)
    soft = DistillationLoss("soft", C, alpha=0.3, tau=2.0)
    loss, parts = soft(cls, labels, *targets)
    kd = soft_distillation(cls, teacher, 2.0)
    torch.testing.assert_close(loss, 0.7 * F.cross_entropy(cls, labels) + 0.3 * kd)
    none_loss, parts = DistillationLoss("none", C)(cls, labels, *targets)
    torch.testing.assert_close(none_loss, F.cross_entropy(cls, labels))
    assert parts["kd"] == 0
    with pytest.raises(ValueError, match="--kd"):
        DistillationLoss("online", C)
