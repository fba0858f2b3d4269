"""The plans bench-replay and gpu-views render: crop + flip, and the full plan (RandAugment,
colour jitter, erasing, Mixup/CutMix), at ImageNet's mean and std."""

from dataclasses import replace

from kdcache.pipeline.views import ViewPlan

# magnitude 7: timm itself fails on this Pillow when PosterizeIncreasing reaches magnitude 10
RANDAUGMENT = "rand-m7-mstd0.5-inc1"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BASE = ViewPlan(seed=0, views=8, crop_scale=(0.08, 1.0))
CONFIGURATIONS = {
    "crop + flip": BASE,
    "full plan": replace(
        BASE, randaugment=RANDAUGMENT, color_jitter=(0.4, 0.4, 0.4, 0.0), erase_prob=0.25,
        mixup_alpha=0.8, cutmix_alpha=1.0,
    ),
}  # fmt: skip
