"""Replayable views: the augmentation plan (a pure function of seed, row and view) and the
renderer that turns an image and its params into the model's input."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CROP_FLIP_NAMES": ".plan",
        "ERASE_MODES": ".augment",
        "MIX_COLUMNS": ".mix",
        "MIX_FIELDS": ".plan",
        "ViewPlan": ".plan",
        "ViewRenderer": ".render",
        "decode_image": ".render",
        "normalize": ".render",
        "parse_randaugment": ".randaugment",
        "render_full": ".render",
        "source_image": ".render",
        "SourceImage": ".source",
        "RENDERERS": ".plan",
        "uniform": ".draws",
    },
)
