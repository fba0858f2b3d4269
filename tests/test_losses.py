import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcache.pipeline.cache import draw_classes, sample_uniforms
from kdcache.trainer.kd import (
    TAIL_MODES,
    DistillationLoss,
    TeacherMix,
    distillation_bins,
    sampled_probs,
    soft_distillation,
    teacher_logits,
    teacher_mix,
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
    loss = hard((cls, dist), labels, targets)
    expected = 0.5 * F.cross_entropy(cls, labels) + 0.5 * F.cross_entropy(dist, teacher.argmax(-1))
    torch.testing.assert_close(loss, expected)
    soft = DistillationLoss("soft", C, alpha=0.3, tau=2.0)
    loss = soft(cls, labels, targets)
    kd = _full_kd(cls, teacher, 2.0)
    torch.testing.assert_close(loss, 0.7 * F.cross_entropy(cls, labels) + 0.3 * kd)
    none = DistillationLoss("none", C)
    none_loss, parts = none(cls, labels, targets), none.parts
    torch.testing.assert_close(none_loss, F.cross_entropy(cls, labels))
    assert parts["kd"] == 0
    with pytest.raises(ValueError, match="kd must be one of"):
        DistillationLoss("online", C)


SAMPLED_TOLERANCE = 0.01  # on the batch-mean loss; at least 5 standard errors of the mean below


def test_sampled_loss_is_unbiased_for_full_kd_and_topk_is_not():
    """Mean over 4000 draws of 4 ids: the sampled loss minus the teacher entropy is full KD
    (KL) within SAMPLED_TOLERANCE; top-3 with every tail option misses it by more."""
    torch.manual_seed(5)
    batch, runs, draws = 8, 4000, 4
    teacher, student = torch.randn(batch, C) * 1.5, torch.randn(batch, C)
    p, student_log = torch.softmax(teacher, -1), torch.log_softmax(student, -1)
    full_kl = (p * (p.log() - student_log)).sum(-1).mean()
    entropy = -(p * p.log()).sum(-1).mean()
    uniforms = sample_uniforms(0, np.arange(batch), list(range(runs)), draws)  # (B, R, D)
    ids = draw_classes(teacher.repeat_interleave(runs, 0), uniforms.reshape(-1, draws))
    ids = torch.from_numpy(ids)
    loss = DistillationLoss("soft", C, alpha=1.0, targets="sampled")
    # one call over all runs: batchmean over B * R rows is the mean of the R runs' losses
    labels = torch.zeros(batch * runs, dtype=torch.long)
    mean = loss(student.repeat_interleave(runs, 0), labels, {"t": {"sample_index": ids}})
    per_run = -(sampled_probs(ids, C) * student_log.repeat_interleave(runs, 0)).sum(-1)
    standard_error = per_run.view(batch, runs).mean(0).std() / runs**0.5
    assert 5 * standard_error < SAMPLED_TOLERANCE
    assert abs(mean - entropy - full_kl) < SAMPLED_TOLERANCE
    # E[q] = p: the drawn ids' frequencies are the teacher's probabilities
    frequencies = sampled_probs(ids, C).view(batch, runs, C).mean(1)
    torch.testing.assert_close(frequencies, p, atol=0.02, rtol=0)
    for tail in TAIL_MODES:
        bins = distillation_bins(student, *_full_targets(teacher, 3), C, 1.0, tail)
        assert abs(soft_distillation(*bins, 1.0) - full_kl) > SAMPLED_TOLERANCE, tail


def test_sampled_draws_are_pure_in_seed_row_view_and_draw():
    rows = np.array([3, 17, 250])
    together = sample_uniforms(7, rows, [0, 2, 5], 6)
    alone = sample_uniforms(7, rows[1:2], [2], 6)
    np.testing.assert_array_equal(together[1:2, 1:2], alone)
    assert not np.array_equal(sample_uniforms(8, rows[1:2], [2], 6), alone)
    np.testing.assert_array_equal(sample_uniforms(7, rows, [5], 3), together[:, 2:, :3])  # prefix
    # a class of probability 0 is never drawn, even for u next to 1
    logits = torch.tensor([[0.0, -1e4, 0.0, -1e4]])
    drawn = draw_classes(logits, np.array([[0.0, 0.49, 0.5, 1 - 1e-16]]))
    assert drawn.tolist() == [[0, 0, 2, 2]]


def _two_teachers(k: int, seed: int = 4):
    torch.manual_seed(seed)
    a, b = torch.randn(6, C) * 2, torch.randn(6, C)
    targets = {"a": _batch_targets(a, k)["t"], "b": _batch_targets(b, k)["t"]}
    return a, b, targets


@pytest.mark.parametrize("tail", ["uniform", "renormalize"])
def test_ensemble_of_all_classes_equals_mean_of_full_softmaxes(tail):
    a, b, targets = _two_teachers(C)
    student, labels = torch.randn(6, C), torch.randint(0, C, (6,))
    for tau, weights in ((1.0, {}), (3.0, {"a": 3.0, "b": 1.0})):
        share = weights.get("a", 1) / (weights.get("a", 1) + weights.get("b", 1))
        mean = share * torch.softmax(a / tau, -1) + (1 - share) * torch.softmax(b / tau, -1)
        log_s = torch.log_softmax(student / tau, -1)
        expected = (mean * (mean.log() - log_s)).sum(-1).mean() * tau**2
        mix = teacher_mix(["a", "b"], weights)
        loss = DistillationLoss("soft", C, alpha=1.0, tau=tau, tail=tail, mix=mix)
        got = loss(student, labels, targets)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    hard = DistillationLoss("hard", C, alpha=1.0, mix=teacher_mix(["a", "b"]))
    got = hard(student, labels, targets)
    mean = (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2
    torch.testing.assert_close(got, F.cross_entropy(student, mean.argmax(-1)))


def test_ensemble_of_topk_averages_the_rebuilt_distributions():
    a, b, targets = _two_teachers(3)
    student = torch.randn(6, C)
    rebuilt = [
        torch.softmax(teacher_logits(*_full_targets(t, 3), C), -1) for t in (a, b)
    ]  # uniform tail: exact top-3, the tail mass spread evenly
    mean = (rebuilt[0] + rebuilt[1]) / 2
    expected = (mean * (mean.log() - torch.log_softmax(student, -1))).sum(-1).mean()
    got = DistillationLoss("soft", C, alpha=1.0, mix=TeacherMix.equal(["a", "b"]))(
        student, torch.zeros(6, dtype=torch.long), targets
    )
    torch.testing.assert_close(got, expected)
    # renormalize: each teacher's top-3 renormalised, zero elsewhere, then averaged
    renormalised = []
    for t in (a, b):
        values, index, _ = _full_targets(t, 3)
        renormalised.append(torch.zeros(6, C).scatter(1, index, torch.softmax(values, -1)))
    mean = (renormalised[0] + renormalised[1]) / 2
    log_s = torch.log_softmax(student, -1)
    expected = (torch.xlogy(mean, mean) - mean * log_s).sum(-1).mean()
    loss = DistillationLoss("soft", C, alpha=1.0, tail="renormalize", mix=teacher_mix(["a", "b"]))
    torch.testing.assert_close(loss(student, torch.zeros(6, dtype=torch.long), targets), expected)


def test_teachers_assigned_to_deit_heads():
    a, b, targets = _two_teachers(C)
    cls, dist, labels = torch.randn(6, C), torch.randn(6, C), torch.randint(0, C, (6,))
    mix = teacher_mix(["a", "b"], head_teachers={"cls": "a", "dist": "b"}, two_heads=True)
    got = DistillationLoss("soft", C, alpha=0.4, mix=mix)((cls, dist), labels, targets)
    teacher_term = (_full_kd(cls, a, 1.0) + _full_kd(dist, b, 1.0)) / 2
    torch.testing.assert_close(got, 0.6 * F.cross_entropy(cls, labels) + 0.4 * teacher_term)
    only_dist = teacher_mix(["a", "b"], head_teachers={"dist": "b"}, two_heads=True)
    got = DistillationLoss("soft", C, alpha=0.4, mix=only_dist)((cls, dist), labels, targets)
    torch.testing.assert_close(
        got, 0.6 * F.cross_entropy(cls, labels) + 0.4 * _full_kd(dist, b, 1.0)
    )


def test_mix_and_sampled_options_are_checked():
    with pytest.raises(ValueError, match="the student has one head"):
        teacher_mix(["a", "b"], head_teachers={"cls": "a"}, two_heads=False)
    with pytest.raises(ValueError, match="not among the teachers"):
        teacher_mix(["a"], head_teachers={"dist": "b"})
    with pytest.raises(ValueError, match="a weight for every teacher"):
        teacher_mix(["a", "b"], {"a": 2.0})
    with pytest.raises(ValueError, match="tail bucket takes one teacher"):
        DistillationLoss("soft", C, tail="bucket", mix=teacher_mix(["a", "b"]))
    with pytest.raises(ValueError, match="targets sampled needs kd soft and tau 1"):
        DistillationLoss("soft", C, tau=2.0, targets="sampled")
