"""bench-train's modes: the student's training step as ``kdcache train`` takes it (kdcache's
loader, loss and AdamW), with no teacher, with cached targets and with the teacher online,
and the online teacher's forward pass alone on the online run's real batches.

Every mode keeps its student, optimiser and DataLoader (persistent workers) across repeats,
so no run pays worker start-up; every run skips warm-up steps (more than the loader's
prefetched batches), then times its steps, the wait for data included. The online mode also
clocks the teacher's share of each step inside the run, beside its loader workers.
"""

import time

import torch
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, create_model
from kdcache.pipeline.views import normalize
from kdcache.tools.bench.bench_data import small_deit
from kdcache.tools.bench.harness import StepModes
from kdcache.trainer.data import (
    CachedTargets,
    OnlineTeacher,
    PlannedViews,
    TrainViews,
    label_targets,
)
from kdcache.trainer.data.collate import collate_views
from kdcache.trainer.kd import DistillationLoss, teacher_mix

PREFETCH = 4  # batches per DataLoader worker


def persistent_batches(dataset: TrainViews, batch_size: int, workers: int):
    """Endless batches of ``dataset`` from one DataLoader whose workers live across epochs."""
    workers = min(workers, len(dataset.shards))
    dataset.configure(batch_size, workers)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_views, persistent_workers=workers > 0,
                        prefetch_factor=PREFETCH if workers else None)  # fmt: skip
    while True:
        yield from loader


class TrainModes(StepModes):
    """The student, loss, optimiser and batches of each mode; :meth:`run` times one run."""

    def __init__(self, args, data: str, cache: str, checkpoint: str, plan: dict | None):
        self.args, self.manifest = args, Manifest.read(data)
        manifest = self.manifest
        self.online = OnlineTeacher(checkpoint, num_classes=manifest.num_classes,
                                    in_chans=manifest.channels, device=torch.device("cpu"),
                                    topk=args.topk)  # fmt: skip
        self.teacher_seconds = 0.0
        self.cached = cached = CachedTargets(cache, manifest, plan=plan, topk=args.topk)
        planned = PlannedViews(cached.plan, manifest)  # the same views, no targets
        self.spec = ModelSpec(args.student, manifest.num_classes, manifest.channels,
                              args.resolution, manifest.pixel_mean, manifest.pixel_std,
                              model_args=small_deit(args.resolution)
                              if args.student.startswith("deit") and args.resolution < 224
                              else {})  # fmt: skip
        self.batches, self.students = {}, {}
        for mode, source, teachers in (("none", planned, None), ("cached", cached, cached.teachers),
                                       ("online", planned, ["online"])):  # fmt: skip
            views = TrainViews(manifest, source, resolution=args.resolution, seed=0,
                               teacher_resolution=self.online.resolution if mode == "online"
                               else None)  # fmt: skip
            self.batches[mode] = persistent_batches(views, args.batch_size, args.workers)
            self.students[mode] = self._student(teachers)
        self.batches["teacher"] = self.batches["online"]  # the online run's real batches

    def _student(self, teachers: list[str] | None) -> tuple:
        torch.manual_seed(0)
        net = create_model(self.spec)
        distilled = hasattr(net, "set_distilled_training")
        if distilled:
            net.set_distilled_training(teachers is not None)
        mix = teacher_mix(teachers, None, None, distilled) if teachers else None
        loss = DistillationLoss("soft" if teachers else "none", self.manifest.num_classes,
                                alpha=0.5, mix=mix)  # fmt: skip
        net.train()
        return net, loss, create_optimizer_v2(net, "adamw", lr=1e-3, weight_decay=0.05)

    def _teacher(self, batch: dict) -> dict:
        began = time.perf_counter()
        targets = {"online": self.online(batch["teacher_image"])}
        self.teacher_seconds += time.perf_counter() - began
        return targets

    def step(self, mode: str, batch: dict) -> int:
        """One training step of ``mode`` (for ``teacher``: the teacher's forward alone)."""
        if mode == "teacher":
            self._teacher(batch)
            return len(batch["label"])
        net, loss, optimizer = self.students[mode]
        images = normalize(batch["image"], self.spec.mean, self.spec.std)
        labels = label_targets(batch, self.manifest.num_classes)
        targets = {}
        if mode == "online":
            targets = self._teacher(batch)
        elif mode == "cached":
            targets = batch["targets"]
        value = loss(net(images), labels, targets)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        return images.shape[0]
