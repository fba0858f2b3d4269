"""The training run: configuration, the loop, evaluation, checkpoints and resume, DDP."""

from kdcache._lazy import lazy_face

__getattr__, __dir__, __all__ = lazy_face(
    __name__,
    {
        "RESUME_FILE": ".resume",
        "Stopped": ".resume",
        "TrainConfig": ".train_config",
        "evaluate_model": ".evaluate",
        "train": ".engine",
    },
)
