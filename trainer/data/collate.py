"""Batches of training samples as DataLoader workers make them: the views of a batch become
one float32 tensor in one pass, normalised there when the caller asks (``KDLoader``), so the
main process receives the finished batch and does not touch its pixels; with a
:class:`~trainer.data.batch_pool.BatchPool`, written into a shared batch the main process has
dropped instead of fresh shared memory."""

from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from kdcache.pipeline.views import float_batch
from kdcache.trainer.data.batch_pool import SLOT_KEY, BatchPool

IMAGE_KEYS = ("image", "teacher_image")  # float views; "image" normalised on request


def collate_views(
    samples: list[dict],
    normalise: tuple[Sequence[float], Sequence[float]] | None = None,
    pool: BatchPool | None = None,
) -> dict:
    """``default_collate`` of :class:`~trainer.data.loader.TrainViews` samples, their views
    (uint8 pixels or float views) as float32 batches (:func:`pipeline.views.float_batch`):
    ``image`` normalised with ``normalise`` = (mean, std) if given (bitwise what
    ``normalize`` gives on the stacked views), else on [0, 1]. With ``pool``, the batches are
    its buffers and ``SLOT_KEY`` lists their slots (:meth:`BatchPool.tracked` takes it)."""
    keys = [key for key in IMAGE_KEYS if key in samples[0]]
    batch = default_collate([{k: v for k, v in s.items() if k not in keys} for s in samples])
    rows = []
    for key in keys:
        stats = normalise if key == "image" else None
        views = [s[key] for s in samples]
        out = None
        if pool is not None:
            out, row = pool.buffer(key, (len(views), *views[0].shape))
            rows.append(row)
        batch[key] = float_batch(views, stats, out)
    if pool is not None:
        batch[SLOT_KEY] = torch.tensor(rows, dtype=torch.int64)
    return batch
