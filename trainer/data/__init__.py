"""What a training step consumes: streamed shards, each sample's view replayed, joined with
its cached (or online) teacher targets."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "CachedTargets": ".targets",
        "EvalViews": ".loader",
        "KDBatch": ".kd_loader",
        "KDLoader": ".kd_loader",
        "Targets": ".kd_loader",
        "LabelMixedTargets": ".label_mixing",
        "OnlineTeacher": ".online",
        "PlannedViews": ".targets",
        "SCHEDULES": ".view_schedule",
        "TrainViews": ".loader",
        "ViewSchedule": ".view_schedule",
        "default_resolution": ".input_size",
        "label_targets": ".label_mixing",
        "make_loader": ".loader",
        "moved": ".kd_loader",
    },
)
