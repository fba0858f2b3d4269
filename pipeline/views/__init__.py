"""Replayable views: the augmentation plan (a pure function of seed, row and view) and the
renderer that turns an image and its params into the model's input."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CROP_FLIP_NAMES": ".plan",
        "DEFAULT_RENDERER": ".plan",
        "ERASE_MODES": ".augment",
        "EVAL_CROP_MODES": ".eval_input",
        "MIX_COLUMNS": ".mix",
        "MIX_FIELDS": ".plan",
        "ViewPlan": ".plan",
        "MAX_PIXELS": ".pixel_limit",
        "max_pixels_option": ".pixel_limit",
        "ViewRenderer": ".render",
        "check_pixels": ".pixel_limit",
        "check_renderer": ".render",
        "decode_image": ".render",
        "float_batch": ".render",
        "shared_empty": ".render",
        "eval_image": ".eval_input",
        "normalize": ".render",
        "parse_randaugment": ".randaugment",
        "set_pixel_limit": ".pixel_limit",
        "source_image": ".render",
        "SourceImage": ".source",
        "RENDERERS": ".plan",
        "uniform": ".draws",
    },
)
