"""bench-timm's modes: the same seeded student through timm's own tasks (no KD, online KD)
and kdcache's cached task, and the online teacher's forward alone on the online run's real
batches. Every mode keeps its task, optimiser and DataLoader (persistent workers) across
repeats; forward hooks clock the teacher inside the online run."""

import json
import time

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.task import (
    ClassificationTask,
    DistillationTeacher,
    LogitDistillationTask,
    TokenDistillationTask,
)

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import load_teacher
from kdcache.pipeline.views import normalize
from kdcache.tools.bench.bench_data import small_deit
from kdcache.tools.bench.harness import StepModes
from kdcache.tools.bench.train_modes import persistent_batches
from kdcache.trainer.data import CachedTargets, PlannedViews, TrainViews
from kdcache.trainer.kd import CachedLogitDistillationTask, CachedTokenDistillationTask


class TimmModes(StepModes):
    """What every run shares (manifest, cache, teacher, student recipe) and each mode's task,
    optimiser and batches; :meth:`run` times one run."""

    def __init__(self, args, data: str, cache: str, checkpoint: str, plan: dict | None,
                 modes: tuple[str, ...] = ("none", "online", "cached")):  # fmt: skip
        self.args = args
        self.manifest = Manifest.read(data)
        self.mean, self.std = self.manifest.pixel_mean, self.manifest.pixel_std
        self.teacher = load_teacher(checkpoint, num_classes=self.manifest.num_classes,
                                    in_chans=self.manifest.channels)  # fmt: skip
        self.teacher.model.eval()
        self.teacher_seconds, self._began = 0.0, 0.0
        self.teacher.model.register_forward_pre_hook(self._teacher_starts)
        self.teacher.model.register_forward_hook(self._teacher_ends)
        self.resolution = args.resolution or self.teacher.spec.resolution
        self.cached = CachedTargets(cache, self.manifest, plan=plan, topk=args.topk)
        planned = PlannedViews(self.cached.plan, self.manifest)  # same views, no targets
        self.distill = args.distill or (
            "token" if hasattr(self.student(), "set_distilled_training") else "logit"
        )
        self.train_images = sum(s.num_rows for s in self.manifest.shards_of("train"))
        self.tasks, self.batches = {}, {}
        sources = {"none": planned, "online": planned, "cached": self.cached}
        for mode, source in ((m, sources[m]) for m in modes):
            views = TrainViews(self.manifest, source, resolution=self.resolution, seed=args.seed)
            self.batches[mode] = persistent_batches(views, args.batch_size, args.workers)
            task = self.task(mode)
            task.train()
            optimizer = create_optimizer_v2(task.get_trainable_module(), "adamw", lr=args.lr)
            self.tasks[mode] = task, optimizer
        if "online" in modes:
            self.batches["teacher"] = self.batches["online"]  # the online run's real batches

    def _teacher_starts(self, *_) -> None:
        self._began = time.perf_counter()

    def _teacher_ends(self, *_) -> None:
        self.teacher_seconds += time.perf_counter() - self._began

    def student(self) -> torch.nn.Module:
        torch.manual_seed(self.args.seed)
        model = timm.create_model(
            self.args.student,
            num_classes=self.manifest.num_classes,
            in_chans=self.manifest.channels,
            **self.model_kwargs(),
        )
        return with_normalisation(model, self.mean, self.std)

    def model_kwargs(self) -> dict:
        if self.args.model_kwargs is not None:
            return json.loads(self.args.model_kwargs)
        if self.args.student.startswith("deit") and self.resolution < 224:
            return {**small_deit(self.resolution), "img_size": self.resolution}
        return {}

    def task(self, mode: str):
        student, args = self.student(), self.args
        weights = dict(task_loss_weight=1 - args.alpha, distill_loss_weight=args.alpha,
                       temperature=args.tau, verbose=False)  # fmt: skip
        token = self.distill == "token"
        if mode == "none":
            return ClassificationTask(student, verbose=False)
        if mode == "online":
            teacher = DistillationTeacher(
                with_normalisation(self.teacher.model, self.mean, self.std)
            )
            online = TokenDistillationTask if token else LogitDistillationTask
            return online(student, teacher, **weights)
        cached = CachedTokenDistillationTask if token else CachedLogitDistillationTask
        return cached(student, **weights)

    def step(self, mode: str, batch: dict) -> int:
        """One training step of ``mode`` (``teacher``: the teacher's forward alone)."""
        inputs = normalize(batch["image"], self.mean, self.std)
        if mode == "teacher":
            with torch.no_grad():
                self.teacher.model(inputs)
            return inputs.shape[0]
        task, optimizer = self.tasks[mode]
        extra = (batch["targets"],) if mode == "cached" else ()
        result = task(inputs, batch["label"], *extra)
        optimizer.zero_grad(set_to_none=True)
        result["loss"].backward()
        optimizer.step()
        return inputs.shape[0]


def with_normalisation(model: torch.nn.Module, mean, std) -> torch.nn.Module:
    """The dataset's mean/std in the model's pretrained_cfg: timm's online tasks renormalise the
    student's input for the teacher from these (here: no change, as for the cache's teacher)."""
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "mean": tuple(mean),
                            "std": tuple(std)}  # fmt: skip
    return model
