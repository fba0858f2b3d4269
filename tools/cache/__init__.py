"""Cache health: ``inspect_cache`` (completeness, accuracy, agreement, tail mass, bytes) and
``verify_cache`` (checksums, teacher recomputation, replayed views), each imported from its
module of that name; the face offers their helpers."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "bad_regions": ".inspect_cache",
        "format_report": ".inspect_cache",
        "plot_report": ".inspect_cache",
        "replay_check": ".verify_replay",
        "sample_done_rows": ".verify_replay",
    },
)
