"""Batches of training samples as DataLoader workers make them: the views of a batch become
one float32 tensor in one pass, normalised there when the caller asks (``KDLoader``), so the
main process receives the finished batch and does not touch its pixels."""

from collections.abc import Sequence

from torch.utils.data import default_collate

from kdcache.pipeline.views import float_batch

IMAGE_KEYS = ("image", "teacher_image")  # float views; "image" normalised on request


def collate_views(
    samples: list[dict], normalise: tuple[Sequence[float], Sequence[float]] | None = None
) -> dict:
    """``default_collate`` of :class:`~trainer.data.loader.TrainViews` samples, their views
    (uint8 pixels or float views) as float32 batches (:func:`pipeline.views.float_batch`):
    ``image`` normalised with ``normalise`` = (mean, std) if given (bitwise what
    ``normalize`` gives on the stacked views), else on [0, 1]."""
    keys = [key for key in IMAGE_KEYS if key in samples[0]]
    batch = default_collate([{k: v for k, v in s.items() if k not in keys} for s in samples])
    for key in keys:
        stats = normalise if key == "image" else None
        batch[key] = float_batch([s[key] for s in samples], stats)
    return batch
