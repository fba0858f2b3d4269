import pytest
import torch
import torch.nn.functional as F

from trainer.losses import (
    TAIL_MODES,
    DistillationLoss,
    distillation_bins,
    soft_distillation,
    teacher_logits,
)

C = 10


def _full_targets(logits: torch.Tensor, k: int):
    values, index = logits.topk(k, dim=-1)
    return values, index, torch.logsumexp(logits, dim=-1)


def _batch_targets(logits: torch.Tensor, k: int) -> dict:
    values, index, lse = _full_targets(logits, k)
    return {"t": {"topk_logits": values, "topk_index": index, "logsumexp": lse}}


def _full_kd(student, teacher, tau):
    """tau^2 KL(softmax(teacher/tau) || softmax(student/tau)), batch mean, written out."""
    p = torch.softmax(teacher / tau, -1)
    return (p * (p.log() - torch.log_softmax(student / tau, -1))).sum(-1).mean() * tau**2


@pytest.mark.parametrize("tail", TAIL_MODES)
def test_topk_with_all_classes_equals_full_logit_distillation(tail):
    torch.manual_seed(0)
    teacher, student = torch.randn(16, C) * 3, torch.randn(16, C)
    torch.testing.assert_close(teacher_logits(*_full_targets(teacher, C), C), teacher)
    for tau in (1.0, 4.0):
        expected = _full_kd(student, teacher, tau)
        bins = distillation_bins(student, *_full_targets(teacher, C), C, tau, tail)
        got = soft_distillation(*bins, tau, "batchmean")
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        deit = soft_distillation(*bins, tau, "deit", student.numel())
        torch.testing.assert_close(deit, expected * 16 / student.numel(), rtol=1e-6, atol=1e-6)


def test_tail_options_give_their_documented_values():
    torch.manual_seed(3)
    teacher, student = torch.randn(8, C) * 2, torch.randn(8, C)
    targets = _full_targets(teacher, 3)
    index = targets[1]
    p_t, p_s = torch.softmax(teacher, -1), torch.softmax(student, -1)
    top_t, top_s = p_t.gather(1, index), p_s.gather(1, index)
    # renormalize: the teacher's top-3 renormalised against the student's probabilities there
    q = top_t / top_t.sum(-1, keepdim=True)
    expected = (q * (q.log() - top_s.log())).sum(-1).mean()
    got = soft_distillation(*distillation_bins(student, *targets, C, 1.0, "renormalize"), 1.0)
    torch.testing.assert_close(got, expected)
    # bucket: top-3 plus one "other" bin, exact on both sides
    t_bins = torch.cat([top_t, 1 - top_t.sum(-1, keepdim=True)], -1)
    s_bins = torch.cat([top_s, 1 - top_s.sum(-1, keepdim=True)], -1)
    expected = (t_bins * (t_bins.log() - s_bins.log())).sum(-1).mean()
    got = soft_distillation(*distillation_bins(student, *targets, C, 1.0, "bucket"), 1.0)
    torch.testing.assert_close(got, expected)
    # the three options differ when K < C
    values = [
        soft_distillation(*distillation_bins(student, *targets, C, 1.0, tail), 1.0)
        for tail in TAIL_MODES
    ]
    assert len({round(v.item(), 6) for v in values}) == 3


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
    targets = _batch_targets(teacher, C)
    cls, dist = torch.randn(6, C), torch.randn(6, C)
    hard = DistillationLoss("hard", C, alpha=0.5)
    loss, parts = hard((cls, dist), labels, targets)
    expected = 0.5 * F.cross_entropy(cls, labels) + 0.5 * F.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(loss, expected)
    soft = DistillationLoss("soft", C, alpha=0.3, tau=2.0)
    loss, parts = soft(cls, labels, targets)
    kd = _full_kd(cls, teacher, 2.0)
    torch.testing.assert_close(loss, 0.7 * F.cross_entropy(cls, labels) + 0.3 * kd)
    none_loss, parts = DistillationLoss("none", C)(cls, labels, targets)
    torch.testing.assert_close(none_loss, F.cross_entropy(cls, labels))
    assert parts["kd"] == 0
    with pytest.raises(ValueError, match="--kd"):
        DistillationLoss("online", C)
