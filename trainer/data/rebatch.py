"""Whole batches from several DataLoader workers: each worker batches its own shards, so each
ends its epoch with a short batch; these are joined in the main process so a rank yields at
most one partial batch per epoch (none with ``drop_last``)."""

from collections.abc import Iterator

import torch


def _size(batch: dict) -> int:
    return len(batch["label"])


def _join(first: dict, second: dict) -> dict:
    """The two collated batches one after the other (nested dicts of tensors)."""
    return {
        k: _join(v, second[k]) if isinstance(v, dict) else torch.cat((v, second[k]))
        for k, v in first.items()
    }


def _cut(batch: dict, size: int) -> tuple[dict, dict]:
    """The first ``size`` samples and the rest."""
    head = {k: _cut(v, size)[0] if isinstance(v, dict) else v[:size] for k, v in batch.items()}
    tail = {k: _cut(v, size)[1] if isinstance(v, dict) else v[size:] for k, v in batch.items()}
    return head, tail


def rebatched(batches, size: int, steps: int, drop_last: bool) -> Iterator[dict]:
    """Full batches of ``size`` as they come, short ones joined; at most ``steps`` batches, the
    last of them partial only without ``drop_last``."""
    carry, made = None, 0
    for batch in batches:
        if made == steps:
            return
        if _size(batch) == size:
            made += 1
            yield batch
            continue
        carry = batch if carry is None else _join(carry, batch)
        if _size(carry) >= size and made < steps:
            batch, carry = _cut(carry, size)
            made += 1
            yield batch
    if carry is not None and _size(carry) and made < steps and not drop_last:
        yield carry


class RebatchedLoader:
    """A training DataLoader (over :class:`~trainer.data.loader.TrainViews`) whose epochs
    yield the batches of ``dataset.epoch_split``: whole ones, and one partial batch at most."""

    def __init__(self, loader, drop_last: bool = False, pool=None):
        self.loader, self.drop_last, self.pool = loader, drop_last, pool
        self.dataset, self.num_workers = loader.dataset, loader.num_workers

    def __iter__(self) -> Iterator[dict]:
        views = self.dataset
        split = views.epoch_split(views.epoch, views.batch_size, views.workers, views.world_size)
        steps = split.steps
        batches = iter(self.loader) if self.pool is None else self.pool.tracked(self.loader)
        return rebatched(batches, views.batch_size, steps, self.drop_last)
