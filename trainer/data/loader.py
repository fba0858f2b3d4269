"""Streaming loaders: WebDataset shards -> replayed views joined with their teacher targets."""

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from kdcache.errors import DataSplitError, KdcacheError, ShardError
from kdcache.pipeline.cache import ShardTargets
from kdcache.pipeline.data import Manifest, ShardInfo, checked_samples, sample_image, storage
from kdcache.pipeline.views import ViewRenderer, check_renderer, eval_image, source_image
from kdcache.trainer.data.batch_pool import BatchPool
from kdcache.trainer.data.collate import IMAGE_KEYS, collate_views
from kdcache.trainer.data.label_mixing import mix_targets
from kdcache.trainer.data.rebatch import RebatchedLoader
from kdcache.trainer.data.targets import CachedTargets, PlannedViews, ShardBlock
from kdcache.trainer.data.view_schedule import ViewSchedule


def view_targets(block: ShardTargets, position: int, view: int) -> dict[str, torch.Tensor]:
    """One sample's targets for one view, as tensors (fp32 logits, int64 class ids; with
    sampled targets also ``sample_index``, the drawn class ids; with feature or attention
    targets ``features``: name -> float32 values)."""
    targets = {
        "topk_logits": torch.from_numpy(block.topk_logits[position, view].astype(np.float32)),
        "topk_index": torch.from_numpy(block.topk_index[position, view].astype(np.int64)),
        "logsumexp": torch.tensor(float(block.logsumexp[position, view])),
    }
    if block.sample_index is not None:
        targets["sample_index"] = torch.from_numpy(
            block.sample_index[position, view].astype(np.int64)
        )
    if block.features:
        targets["features"] = {
            name: torch.from_numpy(np.ascontiguousarray(values[position, view]))
            for name, values in block.features.items()
        }
    return targets


@dataclass
class EpochSplit:
    """One epoch's split: per rank and worker the shards read and the samples padded, and the
    steps every rank takes."""

    reads: list[list[list[ShardInfo]]]
    pads: list[list[int]]
    steps: int


class _ShardStream(IterableDataset):
    """Shared parts: shard list split by node and worker, tar reading, key -> row lookup."""

    def __init__(self, manifest: Manifest, shards: list[ShardInfo], resolution: int):
        self.manifest = manifest
        self.shards = shards
        self.resolution = resolution
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard_samples(self, shard: ShardInfo) -> Iterator[tuple[dict, int]]:
        """``(sample, row)`` of one shard's tar, each checked against the manifest (key,
        position, image sha1, label, count: :func:`checked_samples`)."""
        first = shard.id * self.manifest.shard_size
        for position, sample in enumerate(checked_samples(self.manifest, shard)):
            yield sample, first + position


class ShardImages:
    """A shard's encoded images by position, decoded on access (a mixed view also needs its
    partner's image, which may come later in the tar)."""

    def __init__(self, shard: ShardInfo, channels: int, url: str):
        self.shard = shard
        self.channels = channels
        self.url = url
        self.encoded: dict[int, bytes] = {}
        self.keys: dict[int, str] = {}

    def __getitem__(self, position: int):
        if position not in self.encoded:
            raise ShardError(
                f"{self.shard.file}: no sample at position {position} in the tar "
                "(a mixing partner must be read from the same shard)"
            )
        return source_image(self.encoded[position], self.channels)

    def unreadable(self, position: int, error: Exception, mixes: bool) -> ShardError:
        """The error for a sample whose view could not be made from its image."""
        partner = " (or its mixing partner's)" if mixes else ""
        return ShardError(
            f"{self.url}: sample {self.keys[position]}: its image{partner} cannot be decoded "
            f"({type(error).__name__}: {str(error).strip() or '-'})"
        )


class TrainViews(_ShardStream):
    """Training samples: each sample's view for the epoch, with its teacher targets.

    Yields dicts ``image`` (on [0, 1]; the training loop normalises whole batches on the
    device; iterated as a dataset, a view that is uint8 pixels / 255 comes as those pixels and
    :func:`collate_views`, the collate of :func:`make_loader`, divides them), ``label``,
    ``row``, ``view`` and ``targets``: per teacher name a dict of ``topk_logits``,
    ``topk_index`` and ``logsumexp`` (no teachers without a cache).
    Views of a mixing plan add ``mix_lam`` (weight of the sample's own label at this
    resolution, 1 if unmixed) and ``mix_label`` (the partner's label); with ``mix_targets``
    (label-space mixing) each teacher's targets are the lam-mixture of the sample's and the
    partner's cached targets. With a ``teacher_resolution`` (an online teacher) also
    ``teacher_image``: the same view rendered at the teacher's input size. Which view a sample
    is shown follows ``schedule`` (default: cycle). Shards are shuffled per epoch (seeded),
    split by rank and DataLoader worker (:meth:`epoch_split`; a rank with fewer batches pads
    with repeats flagged ``pad``), read whole (mixing partners are in the same shard), and
    samples pass a seeded shuffle buffer.
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
        schedule: ViewSchedule | None = None,
        mix_targets: bool = False,
        teacher_resolution: int | None = None,
    ):
        super().__init__(manifest, manifest.shards_of(split), resolution)
        check_renderer(source.plan)  # before any loader worker starts and fails on it
        self.split = split
        self.batch_size, self.workers, self.rank, self.world_size = 1, 0, 0, 1
        self.drop_last = False
        self.source = source
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.schedule = schedule or ViewSchedule("cycle", source.plan.views)
        self.mix_targets = mix_targets
        self.teacher_resolution = teacher_resolution

    def __len__(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def epoch_order(self, epoch: int) -> list[ShardInfo]:
        """The epoch's shard order (seeded); rank r of W then reads ``order[r::W]``."""
        order = list(self.shards)
        random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        return order

    def epoch_split(
        self,
        epoch: int,
        batch_size: int,
        workers: int,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> EpochSplit:
        """Who reads what in ``epoch``, with the padding that gives every rank the same steps.

        Rank r reads ``order[r::W]`` and its DataLoader worker w ``order[r::W][w::workers]``
        (workers are capped by the shard count, as :func:`make_loader` does); the workers'
        short last batches are joined (:mod:`trainer.data.rebatch`), so a rank yields whole
        batches and at most one partial one. Every rank must take as many steps as the busiest
        one, so a rank with fewer batches pads: its first worker repeats its own first samples
        (flagged ``pad``), like ``DistributedSampler(drop_last=False)``; no sample is dropped.
        With ``drop_last`` every rank takes the whole batches the smallest rank has, no padding.
        A rank without a shard cannot train: refused.
        """
        order = self.epoch_order(epoch)
        if len(order) < world_size:
            raise DataSplitError(
                f"{len(order)} {self.split} shards for {world_size} ranks: every rank needs a "
                "shard (use fewer ranks, or shard the data with a smaller shard size)"
            )
        loaders = max(1, min(workers, len(self.shards)))
        reads = [
            [order[r::world_size][w::loaders] for w in range(loaders)] for r in range(world_size)
        ]
        rows = [sum(map(_rows, rank)) for rank in reads]
        if drop_last:
            no_pads = [[0] * loaders for _ in reads]
            return EpochSplit(reads, no_pads, min(n // batch_size for n in rows))
        steps = [math.ceil(n / batch_size) for n in rows]
        pads = [[(max(steps) - own) * batch_size if w == 0 else 0 for w in range(loaders)]
                for own in steps]  # fmt: skip
        return EpochSplit(reads, pads, max(steps))

    def iter_views(self, shards: list[ShardInfo], uint8: bool = False) -> Iterator[dict]:
        """The given shards' samples in tar order, each in its view for the current epoch;
        with ``uint8``, a renderer's views that are uint8 pixels / 255 stay those pixels
        (``ViewRenderer.render_uint8``; :func:`collate_views` divides them, bitwise)."""
        renderer = ViewRenderer(self.source.plan)
        uint8 = uint8 and renderer.uint8_views
        for shard in shards:  # read and checked whole before any of its samples is yielded
            first = shard.id * self.manifest.shard_size
            images = ShardImages(shard, self.manifest.channels, self.manifest.shard_url(shard))
            rows = []
            for sample, row in self._shard_samples(shard):
                images.encoded[row - first] = sample_image(sample, self.manifest.image_extensions)
                images.keys[row - first] = sample["__key__"]
                rows.append(row)
            views = self.schedule.views_for(self.epoch, np.array(rows))
            block = self.source.block(shard, sorted(set(views.tolist())))  # only those used
            for row, view in zip(rows, views.tolist(), strict=True):
                try:
                    made = self._sample(renderer, images, block, row - first, view, uint8)
                except KdcacheError:
                    raise
                except Exception as error:  # PIL and decoder errors
                    raise images.unreadable(row - first, error, renderer.plan.mixes) from error
                yield made

    def _sample(
        self,
        renderer: ViewRenderer,
        images: ShardImages,
        block: ShardBlock,
        position: int,
        view: int,
        uint8: bool = False,
    ) -> dict:
        """One sample's dict: its view (``uint8``: its uint8 pixels), label, targets and, for
        mixing plans, lam and partner label."""
        column = block.column(view)
        params = block.params[:, column]
        render = renderer.render_uint8 if uint8 else renderer.render
        first_row = images.shard.id * self.manifest.shard_size
        label = int(self.manifest.labels[first_row + position])
        targets = {name: view_targets(t, position, column) for name, t in block.targets.items()}
        sample = {
            "image": render(images, params, position, self.resolution),
            "label": label,
            "row": first_row + position,
            "view": view,
            "targets": targets,
            "pad": False,
        }
        if self.teacher_resolution == self.resolution:
            sample["teacher_image"] = sample["image"]
        elif self.teacher_resolution is not None:
            sample["teacher_image"] = render(images, params, position, self.teacher_resolution)
        if renderer.plan.mixes:
            partner = renderer.partner(params[position])
            partner = position if partner is None else partner
            lam = renderer.label_weight(params[position], self.resolution)
            sample["mix_lam"] = lam
            sample["mix_label"] = int(self.manifest.labels[first_row + partner])
            if self.mix_targets:
                classes = self.manifest.num_classes
                sample["targets"] = {
                    name: mix_targets(own, view_targets(block.targets[name], partner, column),
                                      lam, classes)
                    for name, own in targets.items()
                }  # fmt: skip
        return sample

    def configure(self, batch_size: int, workers: int, drop_last: bool = False) -> None:
        """The batch size, worker count and ``drop_last`` the loader uses (they decide the
        padding), and this process's rank, read here: DataLoader workers may not see the
        process group."""
        self.batch_size, self.workers, self.drop_last = batch_size, workers, drop_last
        self.rank, self.world_size = wds.utils.pytorch_worker_info()[:2]

    def __iter__(self):
        rank, world_size = self.rank, self.world_size
        worker = wds.utils.pytorch_worker_info()[2]
        split = self.epoch_split(
            self.epoch, self.batch_size, self.workers, world_size, self.drop_last
        )
        shards = split.reads[rank][worker] if worker < len(split.reads[rank]) else []
        rng = random.Random(f"samples-{self.seed}-{self.epoch}-{rank}-{worker}")
        views = partial(self.iter_views, uint8=True)  # divided by 255 in collate_views
        stream = views(shards)
        pad = split.pads[rank][worker] if shards else 0
        if pad:
            stream = itertools.chain(stream, _padding(views, shards, pad))
        if self.shuffle_buffer > 1:
            initial = min(100, self.shuffle_buffer)
            stream = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(stream)
        return iter(stream)


def _rows(shards: list[ShardInfo]) -> int:
    return sum(s.num_rows for s in shards)


def _padding(views, shards: list[ShardInfo], count: int) -> Iterator[dict]:
    """``count`` samples repeated from the start of ``shards`` (cycling), flagged ``pad``."""
    made = 0
    while made < count:
        for sample in views(shards):
            if made == count:
                return
            made += 1
            yield sample | {"pad": True}


class EvalViews(_ShardStream):
    """Evaluation samples, ``(image, label)``: each whole image as timm evaluates it (shorter
    side to ``resolution / crop_pct`` with ``interpolation``, centre crop; ``crop_mode`` as
    timm's), on [0, 1] (:func:`pipeline.views.eval_image`)."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        resolution: int,
        split: str = "test",
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        crop_mode: str = "center",
    ):
        super().__init__(manifest, manifest.shards_of(split), resolution)
        self.preprocessing = dict(crop_pct=crop_pct, interpolation=interpolation,
                                  crop_mode=crop_mode)  # fmt: skip

    def __len__(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def __iter__(self):
        channels, extensions = self.manifest.channels, self.manifest.image_extensions
        for shard in wds.split_by_worker(wds.split_by_node(self.shards)):
            for sample, row in self._shard_samples(shard):
                try:
                    image = eval_image(
                        sample_image(sample, extensions),
                        channels,
                        self.resolution,
                        **self.preprocessing,
                    )
                except Exception as error:  # PIL and decoder errors
                    raise ShardError(
                        f"{sample['__url__']}: sample {sample['__key__']}: unreadable image "
                        f"({type(error).__name__}: {error})"
                    ) from error
                yield image, int(self.manifest.labels[row])  # checked against the tar's


def make_loader(
    dataset: IterableDataset,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    seed: int = 0,
    drop_last: bool = False,
    normalise: tuple[Sequence[float], Sequence[float]] | None = None,
):
    """A DataLoader over a streaming dataset (workers get disjoint shards); over
    :class:`TrainViews`, one that yields whole batches and at most one partial batch per
    epoch (none with ``drop_last``: :class:`~trainer.data.rebatch.RebatchedLoader`), its
    images float32 on [0, 1], or normalised with ``normalise`` = (mean, std) by the workers
    (:func:`collate_views`; with workers, into shared batches they reuse once the main
    process has dropped them: :mod:`trainer.data.batch_pool`).

    The loader draws its workers' base seed from its own generator, never from the global
    torch RNG: a resumed run's dropout masks then follow the saved RNG state exactly. Its
    workers take the storage options current now, and open their own filesystems and stores.
    """
    workers = min(workers, len(dataset.shards))
    train = isinstance(dataset, TrainViews)
    pool = BatchPool(workers, IMAGE_KEYS) if train and workers > 0 else None
    if train:
        dataset.configure(batch_size, workers, drop_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=partial(_adopt_storage, dict(storage.current())) if workers else None,
        collate_fn=partial(collate_views, normalise=normalise, pool=pool) if train else None,
    )
    return RebatchedLoader(loader, drop_last, pool) if train else loader


def _adopt_storage(options: dict, worker: int) -> None:
    storage.adopt(options)
