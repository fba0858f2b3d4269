"""Distillation objectives: label loss plus soft, hard or sampled distillation from cached
top-k targets, several teachers, DeiT's two heads; feature and attention alignment
(``FeatureAlignment``); the training step as a timm ``TrainingTask`` (``KDTask``), and timm
``TrainingTask`` classes on cached targets
(``CachedLogitDistillationTask``, ``CachedTokenDistillationTask``,
``CachedFeatureDistillationTask``)."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CachedLogitDistillationTask": ".timm_tasks",
        "CachedTokenDistillationTask": ".timm_tasks",
        "ATTENTION_LOSSES": ".modes",
        "CachedFeatureDistillationTask": ".timm_tasks",
        "DistillationLoss": ".losses",
        "FEATURE_LOSSES": ".modes",
        "FeatureAlignment": ".feature_losses",
        "KD_MODES": ".modes",
        "KL_REDUCTIONS": ".modes",
        "MIXING_MODES": ".modes",
        "TAIL_MODES": ".modes",
        "TARGET_KINDS": ".modes",
        "TEACHER_MODES": ".modes",
        "TeacherMix": ".ensemble",
        "distillation_bins": ".topk_tail",
        "from_alpha_tau": ".timm_tasks",
        "sampled_probs": ".sampled",
        "soft_distillation": ".losses",
        "teacher_logits": ".topk_tail",
        "teacher_mix": ".ensemble",
        "KDTask": ".task",
    },
)
