"""The input resolution a run uses when none is given.

1. Data whose images all share one size (Fashion-MNIST, CIFAR): that size.
2. Otherwise (images of varied sizes, e.g. ImageNet-shaped JPEGs): the resolution of the
   cache's first teacher, as its identity records it (224 for ImageNet teachers);
3. else the student's timm pretrained config (224 for ImageNet models).
Image sizes never decide it for varied data: the largest photo of a folder is no input size.
"""

import timm

from kdcache.pipeline.data import Manifest


def default_resolution(manifest: Manifest, source, model: str | None = None) -> int:
    """The resolution for a run over ``manifest`` with ``source`` (a ``CachedTargets``, or
    planned views without a teacher) and the timm student ``model``."""
    heights = manifest.column("height")
    widths = manifest.column("width")
    if len(heights) and heights.min() == heights.max() and widths.min() == widths.max():
        return int(heights[0])
    store, teachers = getattr(source, "store", None), getattr(source, "teachers", [])
    if store is not None and teachers:
        return int(store.teacher_identity(teachers[0])["preprocessing"]["resolution"])
    config = timm.get_pretrained_cfg(model) if model else None
    return int(config.input_size[-1]) if config is not None and config.input_size else 224
