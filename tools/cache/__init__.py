"""Cache health for the command line: ``inspect_cache`` (completeness, accuracy, agreement,
tail mass, bytes; imported from its module) and its helpers. ``verify`` (checksums, teacher
recomputation, replayed views) is library code: :mod:`kdcache.verify_cache`."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "bad_regions": ".inspect_cache",
        "format_report": ".inspect_cache",
        "plot_report": ".inspect_cache",
    },
)
