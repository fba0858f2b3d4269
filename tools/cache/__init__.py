"""Cache health: ``inspect`` (completeness, accuracy, agreement, tail mass, bytes) and
``verify`` (checksums, teacher recomputation, replayed views)."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "format_report": ".inspect_cache",
        "inspect_cache": ".inspect_cache",
        "manifest_for": ".cache_manifest",
        "plot_report": ".inspect_cache",
        "replay_check": ".verify_replay",
        "sample_done_rows": ".verify_replay",
        "verify_cache": ".verify_cache",
    },
)
