"""The training-data front door: batches of (images, labels, teacher targets) for any loop.

``KDLoader`` streams the shards, replays each sample's view for the epoch and joins it with
the cached targets, like ``kdcache train`` does (it is the same :class:`TrainViews`). Its
``len()`` is the number of batches this rank yields in the current epoch, whatever the worker
count: whole batches and at most one partial one (none with ``drop_last=True``); under DDP every
rank yields the same number, padding with repeated samples (flagged in ``KDBatch.padded``)
instead of dropping any (with ``drop_last``, every rank takes the smallest rank's whole batches).
Ranks come from ``torch.distributed`` when it is initialised, else from
``RANK``/``WORLD_SIZE``.
"""

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import webdataset as wds

from kdcache.errors import ConfigError
from kdcache.pipeline.data import Manifest, storage
from kdcache.pipeline.views import ViewPlan
from kdcache.trainer.data.input_size import default_resolution
from kdcache.trainer.data.label_mixing import label_targets
from kdcache.trainer.data.loader import TrainViews, make_loader
from kdcache.trainer.data.targets import CachedTargets, PlannedViews
from kdcache.trainer.data.view_schedule import ViewSchedule


@dataclass
class Targets:
    """One teacher's targets for a batch: the cached top-k logits (float32, descending), their
    class ids (int64), the log-sum-exp of all logits, (sampled caches) drawn class ids, and
    (caches with feature or attention targets) ``features``: target name -> float32
    (B, *shape), e.g. ``features["pre_logits"]`` (B, D)."""

    topk_logits: torch.Tensor
    topk_index: torch.Tensor
    logsumexp: torch.Tensor
    sample_index: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None

    def to(self, device, non_blocking: bool = False) -> "Targets":
        return Targets(**moved(self.as_dict(), device, non_blocking))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


def moved(arrays: dict, device, non_blocking: bool = False) -> dict:
    """A (nested) dict of tensors on ``device``."""
    return {
        k: moved(v, device, non_blocking) if isinstance(v, dict) else v.to(device, non_blocking=non_blocking)
        for k, v in arrays.items()
    }  # fmt: skip


@dataclass
class KDBatch:
    """A batch: normalised ``images`` (B, C, H, W), ``labels`` (B,) class ids — or (B, classes)
    probabilities when the plan mixes views —, per teacher name its :class:`Targets`, the
    manifest ``rows`` and ``views`` shown, and ``padded`` (B,) for DDP padding repeats."""

    images: torch.Tensor
    labels: torch.Tensor
    teacher_targets: dict[str, Targets]
    rows: torch.Tensor
    views: torch.Tensor
    padded: torch.Tensor

    @property
    def targets(self) -> Targets:
        """The targets of the only teacher (use ``teacher_targets`` with several)."""
        if len(self.teacher_targets) != 1:
            raise ConfigError(
                f"the batch holds targets of teachers {sorted(self.teacher_targets)}; "
                "pick one from teacher_targets",
                field="teachers",
            )
        return next(iter(self.teacher_targets.values()))

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """The only teacher's feature and attention targets by name (empty if none)."""
        return self.targets.features or {}

    def to(self, device, non_blocking: bool = False) -> "KDBatch":
        move = {"non_blocking": non_blocking}
        return KDBatch(
            images=self.images.to(device, **move),
            labels=self.labels.to(device, **move),
            teacher_targets={n: t.to(device, **move) for n, t in self.teacher_targets.items()},
            rows=self.rows.to(device, **move),
            views=self.views.to(device, **move),
            padded=self.padded.to(device, **move),
        )


class KDLoader:
    """Batches of replayed views and their cached targets, for a training loop of your own.

    ``data``: a manifest (folder or ``manifest.parquet``); ``cache``: a kdcache cache, or None
    for the plan's views without targets (``plan`` then sets the plan fields). ``teachers``
    picks teachers of the cache (default: its only one); ``topk`` keeps the first K of each
    view's top-k. Call :meth:`set_epoch` before each epoch: the epoch picks each sample's view
    (``view_schedule``), the shard order and the shuffle. ``storage_options`` (over
    ``$KDCACHE_STORAGE_OPTIONS``) reach URLs, in the DataLoader workers too.
    """

    def __init__(
        self,
        data: str,
        cache: str | None = None,
        *,
        batch_size: int = 128,
        workers: int = 2,
        resolution: int | None = None,
        teachers: list[str] | None = None,
        topk: int | None = None,
        plan: dict | None = None,
        split: str = "train",
        seed: int = 0,
        shuffle_buffer: int = 2000,
        view_schedule: str = "cycle",
        pin_memory: bool = False,
        drop_last: bool = False,
        storage_options: dict | None = None,
    ):
        self.storage_options = storage.resolve(storage_options)
        with storage.using(self.storage_options):  # workers adopt them (make_loader)
            self.manifest = Manifest.read(data)
            if cache is not None:
                source = CachedTargets(
                    cache, self.manifest, teachers=teachers, plan=plan, topk=topk, split=split
                )
            else:
                source = PlannedViews(ViewPlan(**(plan or {})), self.manifest)
            self.plan = source.plan
            self.resolution = resolution or default_resolution(self.manifest, source)
            self.views = TrainViews(
                self.manifest,
                source,
                resolution=self.resolution,
                seed=seed,
                shuffle_buffer=shuffle_buffer,
                split=split,
                schedule=ViewSchedule(view_schedule, source.plan.views, seed),
            )
            self.batch_size, self.drop_last = batch_size, drop_last
            self.world_size = wds.utils.pytorch_worker_info()[1]  # as the dataset splits shards
            stats = (self.manifest.pixel_mean, self.manifest.pixel_std)  # in the workers
            self._loader = make_loader(
                self.views, batch_size, workers, pin_memory, seed, drop_last, normalise=stats
            )
            self.workers = self._loader.num_workers

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def steps(self, epoch: int) -> int:
        """Batches this rank yields in ``epoch`` (the same on every rank)."""
        return self.views.epoch_split(
            epoch, self.batch_size, self.workers, self.world_size, self.drop_last
        ).steps

    def __len__(self) -> int:
        return self.steps(self.views.epoch)

    def __iter__(self) -> Iterator[KDBatch]:
        with storage.using(self.storage_options):  # without workers, read in this process
            yield from map(self._batch, self._loader)

    def _batch(self, batch: dict) -> KDBatch:
        manifest = self.manifest
        return KDBatch(
            images=batch["image"],  # normalised by the workers (collate_views)
            labels=label_targets(batch, manifest.num_classes),
            teacher_targets={name: Targets(**arrays) for name, arrays in batch["targets"].items()},
            rows=batch["row"],
            views=batch["view"],
            padded=batch["pad"],
        )
