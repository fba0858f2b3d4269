"""Reused shared-memory batches for DataLoader workers.

A worker writes each float32 batch of views into shared memory (that is how it reaches the
main process without a copy). A fresh 38 MB batch costs its pages: the kernel allocates and
zeroes every 4 KB page of it, about as much CPU as decoding the batch's JPEGs. So each worker
keeps the batches it made and writes a later batch into one the main process has dropped.

Which batches are dropped only the main process knows: it holds a weak reference to each batch
it received (``StorageWeakRef``, as torch's own sharing cache does) and, once nothing holds the
batch any more (the caller's tensors and every view of them gone), marks its slot free in a
small shared table; the worker marks a slot busy when it writes into it. A worker with no free
slot, or past ``SLOTS`` slots, makes a fresh batch as before. Each loader iteration has its own
table (its workers are new processes with no slots yet).
"""

from collections.abc import Iterator

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.data import get_worker_info

from kdcache.pipeline.views import shared_empty

SLOTS = 8  # batches a worker keeps: its prefetched ones, one being made, the caller's
SLOT_KEY = "_pool_slots"  # collated batches carry their (key, worker, slot) rows here


class BatchPool:
    """Shared-memory float32 batches reused across a loader iteration's batches (made in the
    main process; its copy in each worker hands out buffers, :meth:`tracked` frees them;
    ``reused`` counts the last iteration's batches written into a kept slot)."""

    def __init__(self, workers: int, keys: tuple[str, ...]):
        self.workers, self.keys = workers, keys
        self.busy = self._table()
        self.reused = 0  # batches of the last iteration written into a kept slot
        self._slots: dict[str, list[torch.Tensor]] = {key: [] for key in keys}

    def _table(self) -> torch.Tensor:
        return torch.zeros((self.workers, len(self.keys), SLOTS), dtype=torch.uint8).share_memory_()

    def buffer(self, key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
        """In a worker: a float32 buffer of ``shape`` (B, C, H, W) in shared memory and the
        (key, worker, slot) row the batch carries for it (slot -1: a fresh batch, not kept).
        Every value of the buffer must be written."""
        info = get_worker_info()
        if info is None:
            return shared_empty(shape), [0, 0, -1]
        index = self.keys.index(key)
        busy, slots = self.busy[info.id, index], self._slots[key]
        for slot, kept in enumerate(slots):
            if not busy[slot] and kept.shape[1:] == shape[1:] and len(kept) >= shape[0]:
                busy[slot] = 1
                return kept[: shape[0]], [index, info.id, slot]
        if len(slots) == SLOTS:
            return shared_empty(shape), [index, info.id, -1]
        slots.append(shared_empty(shape))
        busy[len(slots) - 1] = 1
        return slots[-1], [index, info.id, len(slots) - 1]

    def tracked(self, loader) -> Iterator[dict]:
        """In the main process: ``loader``'s batches (a new iteration with a new table), each
        one's slots freed once the batch is dropped."""
        self.busy = self._table()  # before iter() starts the iteration's workers
        busy, held, sent = self.busy, [], set()
        self.reused = 0
        for batch in iter(loader):
            held = [entry for entry in held if not _freed(busy, *entry)]
            for key, worker, slot in batch.pop(SLOT_KEY).tolist():
                if slot >= 0:
                    storage = StorageWeakRef(batch[self.keys[key]].untyped_storage())
                    held.append((storage, worker, key, slot))
                    self.reused += (key, worker, slot) in sent
                    sent.add((key, worker, slot))
            yield batch


def _freed(busy: torch.Tensor, storage: StorageWeakRef, worker: int, key: int, slot: int) -> bool:
    """Whether a held batch is gone (its slot then marked free)."""
    if not storage.expired():
        return False
    busy[worker, key, slot] = 0
    return True
