"""The words of the distillation options, without torch (the CLI offers them as choices)."""

KD_MODES = ("none", "soft", "hard")
TEACHER_MODES = ("none", "cached", "online")  # where the targets come from (train --teacher)
KL_REDUCTIONS = ("batchmean", "deit")
TARGET_KINDS = ("topk", "sampled")
TAIL_MODES = ("uniform", "renormalize", "bucket")  # the teacher's mass outside the top-k
MIXING_MODES = ("exact", "label")  # the plan's Mixup/CutMix, or the trainer's with mixed targets
FEATURE_LOSSES = ("mse", "smooth_l1", "cosine")  # feature targets: student adapter vs teacher
ATTENTION_LOSSES = ("kl", "mse")  # attention maps, each normalised to sum 1
