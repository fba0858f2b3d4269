"""Distillation objectives: label loss plus soft, hard or sampled distillation from cached
top-k targets, several teachers, DeiT's two heads."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "DistillationLoss": ".losses",
        "KD_MODES": ".losses",
        "KL_REDUCTIONS": ".losses",
        "TAIL_MODES": ".topk_tail",
        "TARGET_KINDS": ".losses",
        "TEACHER_MODES": ".losses",
        "TeacherMix": ".ensemble",
        "distillation_bins": ".topk_tail",
        "sampled_probs": ".sampled",
        "soft_distillation": ".losses",
        "teacher_logits": ".topk_tail",
        "teacher_mix": ".ensemble",
    },
)
