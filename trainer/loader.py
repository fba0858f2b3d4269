"""Streaming loaders: WebDataset shards -> replayed views joined with their teacher targets."""

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pipeline.manifest import Manifest, ShardInfo
from pipeline.store import ShardTargets
from pipeline.tar_reader import sample_image, tar_samples
from pipeline.views import decode_image, render_full, render_view
from trainer.targets import CachedTargets, PlannedViews


def view_for_epoch(epoch: int, num_views: int) -> int:
    """The view a sample is shown in ``epoch``: views are cycled, epoch e uses view e mod V."""
    return epoch % num_views


def view_targets(block: ShardTargets, position: int, view: int) -> dict[str, torch.Tensor]:
    """One sample's targets for one view, as tensors (fp32 logits, int64 class ids; with
    sampled targets also ``sample_index``, the drawn class ids)."""
    targets = {
        "topk_logits": torch.from_numpy(block.topk_logits[position, view].astype(np.float32)),
        "topk_index": torch.from_numpy(block.topk_index[position, view].astype(np.int64)),
        "logsumexp": torch.tensor(float(block.logsumexp[position, view])),
    }
    if block.sample_index is not None:
        targets["sample_index"] = torch.from_numpy(
            block.sample_index[position, view].astype(np.int64)
        )
    return targets


class _ShardStream(IterableDataset):
    """Shared parts: shard list split by node and worker, tar reading, key -> row lookup."""

    def __init__(self, manifest: Manifest, shards: list[ShardInfo], resolution: int):
        self.manifest = manifest
        self.shards = shards
        self.resolution = resolution
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples(self, shards: list[ShardInfo]) -> Iterator[tuple[dict, int]]:
        urls = [self.manifest.shard_url(s) for s in shards]
        key_to_row, labels = self.manifest.key_to_row, self.manifest.labels
        for sample in tar_samples(urls, wds.split_by_node, wds.split_by_worker):
            row = key_to_row.get(sample["__key__"])
            if row is None:
                raise ValueError(
                    f"{sample['__url__']}: key {sample['__key__']} is not in the manifest"
                )
            label = int(sample["cls"])
            if label != labels[row]:
                raise ValueError(
                    f"{sample['__url__']}: {sample['__key__']} has label {label}, "
                    f"the manifest says {labels[row]}"
                )
            yield sample, row


class TrainViews(_ShardStream):
    """Training samples: each sample's view for the epoch, with its teacher targets.

    Yields dicts ``image`` (on [0, 1]; the training loop normalises whole batches on the
    device), ``label``, ``row``, ``view`` and ``targets``: per teacher name a dict of
    ``topk_logits``, ``topk_index`` and ``logsumexp`` (no teachers without a cache). With a
    ``teacher_resolution`` (an online teacher) also ``teacher_image``: the same view rendered
    at the teacher's input size.
    Shards are shuffled per epoch (seeded), split by node and DataLoader worker, and samples
    pass a seeded shuffle buffer.
    """

    def __init__(
        self,
        manifest: Manifest,
        source: CachedTargets | PlannedViews,
        *,
        resolution: int,
        seed: int = 0,
        shuffle_buffer: int = 2000,
        split: str = "train",
        teacher_resolution: int | None = None,
    ):
        super().__init__(manifest, manifest.shards_of(split), resolution)
        self.source = source
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.teacher_resolution = teacher_resolution

    def __len__(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def epoch_order(self, epoch: int) -> list[ShardInfo]:
        """The epoch's shard order (seeded); rank r of W then reads ``order[r::W]``."""
        order = list(self.shards)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        return order

    def epoch_steps(self, epoch: int, batch_size: int, workers: int, world_size: int = 1) -> int:
        """Batches every rank trains on in ``epoch``: the fewest any rank's loader yields.

        A rank's DataLoader workers each batch their own shards (the last batch of each may be
        short). Alone, a rank trains on all of its batches; under DDP every rank must take the
        same number of steps, so each stops at the smallest rank's count and skips the rest of
        its samples for this epoch (other samples each epoch, since the shard order changes).
        """
        order = self.epoch_order(epoch)
        counts = []
        for rank in range(world_size):
            shards = order[rank::world_size]
            loaders = max(1, min(workers, len(self.shards)))
            counts.append(
                sum(
                    math.ceil(sum(s.num_rows for s in shards[w::loaders]) / batch_size)
                    for w in range(loaders)
                )
            )
        return min(counts)

    def iter_views(self, shards: list[ShardInfo]) -> Iterator[dict]:
        """The given shards' samples in tar order, each in its view for the current epoch."""
        view = view_for_epoch(self.epoch, self.source.plan.views)
        current, block = None, None
        for sample, row in self._samples(shards):
            shard_id, position = divmod(row, self.manifest.shard_size)
            if shard_id != current:
                current, block = shard_id, self.source.block(self.manifest.shards[shard_id])
            image = decode_image(sample_image(sample), self.manifest.channels)
            params = block.params[position, view]
            item = {
                "image": render_view(image, params, self.resolution),
                "label": int(sample["cls"]),
                "row": row,
                "view": view,
                "targets": {
                    name: view_targets(targets, position, view)
                    for name, targets in block.targets.items()
                },
            }
            if self.teacher_resolution == self.resolution:
                item["teacher_image"] = item["image"]
            elif self.teacher_resolution is not None:
                item["teacher_image"] = render_view(image, params, self.teacher_resolution)
            yield item

    def __iter__(self):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{worker}")
        stream = self.iter_views(self.epoch_order(self.epoch))
        if self.shuffle_buffer > 1:
            initial = min(100, self.shuffle_buffer)
            stream = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(stream)
        return iter(stream)


class EvalViews(_ShardStream):
    """Evaluation samples: whole images at the model's resolution on [0, 1], ``(image, label)``."""

    def __init__(self, manifest: Manifest, *, resolution: int, split: str = "test"):
        super().__init__(manifest, manifest.shards_of(split), resolution)

    def __len__(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def __iter__(self):
        for sample, _ in self._samples(self.shards):
            image = decode_image(sample_image(sample), self.manifest.channels)
            yield render_full(image, self.resolution), int(sample["cls"])


def make_loader(
    dataset: IterableDataset, batch_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader over a streaming dataset (workers get disjoint shards)."""
    workers = min(workers, len(dataset.shards))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
