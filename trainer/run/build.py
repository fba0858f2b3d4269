"""Building a training run from its config: the data, the student, its step, the optimiser,
the run folder, and where a resumed run stopped (:func:`build_run`; the loop is
:mod:`trainer.run.engine`)."""

import json
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from functools import partial

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from kdcache.errors import ConfigError, RunStateError
from kdcache.pipeline.cache import catalog_root, resolve_cache
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, TeacherSource, create_model, requests
from kdcache.pipeline.views import MIX_FIELDS, ViewPlan, normalize, set_pixel_limit
from kdcache.trainer.data import (
    CachedTargets,
    EvalViews,
    LabelMixedTargets,
    OnlineTeacher,
    PlannedViews,
    TrainViews,
    ViewSchedule,
    default_resolution,
    label_targets,
    make_loader,
    moved,
)
from kdcache.trainer.kd import DistillationLoss, FeatureAlignment, KDTask, teacher_mix
from kdcache.trainer.run.distributed import World
from kdcache.trainer.run.evaluate import eval_preprocessing
from kdcache.trainer.run.resume import RESUME_FILE, Progress, load_state, progress_from, restore_rng
from kdcache.trainer.run.run_folder import claim_run_folder, write_run_config
from kdcache.trainer.run.run_log import RunLog
from kdcache.trainer.run.step_profile import StepProfile
from kdcache.trainer.run.student_weights import load_initial_checkpoint, pretrained_student
from kdcache.trainer.run.train_config import TrainConfig


@dataclass
class Student:
    """The student being trained: its spec, the plain module (checkpoints, EMA source,
    evaluation), what trains (maybe DDP-wrapped and compiled), its EMA and feature adapters."""

    spec: ModelSpec
    net: torch.nn.Module
    model: torch.nn.Module
    ema: ModelEmaV3 | None
    alignment: FeatureAlignment | None  # feature/attention adapters (optimised, checkpointed)


@dataclass
class Data:
    """The run's data: the training views, their loader, the test loader, steps per epoch."""

    train_set: TrainViews
    train_loader: Iterable
    test_loader: Iterable
    epoch_steps: list[int]


@dataclass
class Run:
    """Everything one training run holds, built by :func:`build_run`."""

    config: TrainConfig
    world: World
    device: torch.device
    student: Student
    data: Data
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    step: Callable  # batch -> (loss, parts), through the run's KDTask
    run_config: dict  # what config.json holds
    progress: Progress
    log: RunLog | None
    profile: StepProfile


def build_run(config: TrainConfig, world: World, device: torch.device) -> Run:
    """Data, student, step, optimiser and run folder of a run, resumed if asked."""
    mode = config.validate().teacher_mode()
    _claim_run_folder(config, world)
    _seed_everything(config.seed)
    set_pixel_limit(config.max_pixels)
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    source = _views_source(config, manifest)
    net, spec, evaluation = _student(config, manifest, source, device)
    online = _online_teacher(config, manifest, device) if mode == "online" else None
    teachers = None if mode == "none" else (["online"] if online else source.teachers)
    distilled = hasattr(net, "set_distilled_training")
    criterion = _criterion(config, manifest.num_classes, teachers, distilled)
    alignment = _alignment(config, net, spec, source, online, device)
    data = _data(config, world, device, manifest, source, spec, evaluation, online)
    optimizer, scheduler = _optimizer(net, config, data.epoch_steps, alignment)
    ema = ModelEmaV3(net, decay=config.ema_decay) if config.ema_decay else None
    run_config = _config_json(config, source, spec, online)
    progress = Progress()
    if config.resume:
        progress = _resume(config, run_config, Student(spec, net, net, ema, alignment),
                           optimizer, scheduler, device, world)  # fmt: skip
        _print_resumed(config, world, progress, data.epoch_steps)
    model = _wrapped(net, world, device, config.compile)
    task = _task(config, model, criterion, online, alignment, device)
    return Run(
        config, world, device, Student(spec, net, model, ema, alignment), data, optimizer,
        scheduler, partial(_step, task, manifest.num_classes, spec, device), run_config,
        progress, _open_run_folder(config, run_config, world, progress),
        StepProfile(config.profile, os.path.join(config.out, "profile"), device, world.rank,
                    show=world.is_main and config.progress),
    )  # fmt: skip


def _claim_run_folder(config: TrainConfig, world: World) -> None:
    """Rank 0: check that this run may write its run folder, before any work."""
    if world.is_main:
        local_only = [name for name, on in (("tensorboard", config.tensorboard),
                                            ("profile", config.profile)) if on]  # fmt: skip
        claim_run_folder(
            config.out, resume=config.resume, overwrite=config.overwrite, local_only=local_only
        )


def _data(config, world, device, manifest, source, spec, evaluation, online) -> Data:
    """The training views (each sample's view per epoch), their loader and the test loader."""
    train_set = TrainViews(
        manifest, source, resolution=spec.resolution, seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        schedule=ViewSchedule(config.view_schedule, source.plan.views, config.seed),
        mix_targets=config.mixing == "label",
        teacher_resolution=online.resolution if online else None,
    )  # fmt: skip
    pin = device.type == "cuda"
    epoch_steps = [
        train_set.epoch_split(e, config.batch_size, config.workers, world.size).steps
        for e in range(config.epochs)
    ]
    return Data(
        train_set,
        make_loader(train_set, config.batch_size, config.workers, pin, config.seed),
        make_loader(EvalViews(manifest, resolution=spec.resolution, **evaluation), 256,
                    config.workers, pin),
        epoch_steps,
    )  # fmt: skip


def _print_resumed(config: TrainConfig, world: World, progress: Progress, steps: list) -> None:
    if world.is_main and config.progress:
        total = steps[min(progress.epoch, config.epochs - 1)]
        print(f"train: resuming {config.out} at epoch {progress.epoch}, "
              f"step {progress.step}/{total}", flush=True)  # fmt: skip


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _views_source(config: TrainConfig, manifest: Manifest) -> CachedTargets | PlannedViews:
    cache, teachers, fields = config.cache, config.teachers, config.plan_fields()
    if cache == "auto":
        root = catalog_root(config.catalog)
        wanted = teachers[0] if teachers else None
        plan = fields
        if config.mixing == "label":  # the cache holds unmixed views; the run mixes them
            plan = {k: v for k, v in plan.items() if k not in MIX_FIELDS}
        cache, teacher = resolve_cache(root, manifest.fingerprint, plan, wanted)
        teachers = teachers or [teacher]
        if config.progress:
            print(f"train: cache auto picked {cache} (teacher {teacher})", flush=True)
    if cache is not None:
        options = dict(
            teachers=teachers,
            plan=fields,
            topk=config.topk,
            sampled=config.targets == "sampled",
            samples=config.samples,
        )
        if config.mixing == "label":
            return LabelMixedTargets(cache, manifest, **options)
        return CachedTargets(cache, manifest, **options)
    return PlannedViews(ViewPlan(**fields), manifest)


def _config_json(config: TrainConfig, source, spec: ModelSpec, online) -> dict:
    values = asdict(config)
    del values["storage_options"]  # secrets are never written
    values["plan"] = source.plan.to_attrs()
    values["spec"] = spec.to_dict()
    if isinstance(source, CachedTargets):
        values["cache"] = source.store.location
        values["teacher_identity"] = {
            name: source.store.teacher_identity(name) for name in source.teachers
        }
    if online is not None:
        values["teacher_identity"] = {"online": online.teacher.identity()}
        values["topk"] = online.topk
    return json.loads(json.dumps(values))  # as read back from config.json


def _student(config: TrainConfig, manifest: Manifest, source, device):
    """The student on its device, its spec (with its evaluation preprocessing) and that
    preprocessing (EvalViews' options)."""
    spec = _student_spec(config, manifest, source)
    if config.pretrained_path or config.pretrained:
        net = pretrained_student(spec, config.pretrained_path)
    else:
        net = create_model(spec)
    if config.initial_checkpoint:
        load_initial_checkpoint(net, config.initial_checkpoint, config.initial_checkpoint_key_map)
    net = net.to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if hasattr(net, "set_distilled_training"):  # a DeiT student: both heads train with KD
        net.set_distilled_training(config.kd != "none")
    evaluation = eval_preprocessing(
        net, config.eval_crop_pct, config.eval_interpolation, config.eval_crop_mode
    )
    spec = replace(spec, interpolation=evaluation["interpolation"], crop_pct=evaluation["crop_pct"])
    return net, spec, evaluation


def _student_spec(config: TrainConfig, manifest: Manifest, source) -> ModelSpec:
    """The student's architecture, classes, channels, input size and normalisation."""
    resolution = config.resolution
    if resolution is None:
        resolution = default_resolution(manifest, source, config.model)
    return ModelSpec(
        arch=config.model,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        resolution=int(resolution),
        mean=manifest.pixel_mean,
        std=manifest.pixel_std,
        model_args=config.model_args,
    )


def _online_teacher(config: TrainConfig, manifest: Manifest, device) -> OnlineTeacher:
    aligned = config.feature_weight or config.attention_weight
    source = config.teacher_source or TeacherSource(
        location=config.teacher_checkpoint, arch=config.teacher_arch
    )
    return OnlineTeacher(
        source,
        class_names=manifest.classes,
        features=requests(config.features, config.attention) if aligned else None,
        feature_dim=config.feature_dim,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        device=device,
        topk=config.topk,
        amp=config.amp,
    )


def _criterion(config: TrainConfig, num_classes: int, teachers, distilled: bool):
    """The loss; ``teachers`` are the target sources' names (None: no distillation)."""
    return DistillationLoss(
        config.kd,
        num_classes,
        alpha=config.alpha,
        tau=config.tau,
        label_smoothing=config.label_smoothing,
        kl_reduction=config.kl_reduction,
        tail=config.tail,
        targets=config.targets,
        mix=None
        if teachers is None
        else teacher_mix(teachers, config.teacher_weights, config.head_teachers, distilled),
    )


def _alignment(config: TrainConfig, net, spec: ModelSpec, source, online, device):
    """The feature and attention alignment of a run with a feature or attention weight: the
    online teacher's targets, or the cache's (its first teacher's; those asked, else all)."""
    if not (config.feature_weight or config.attention_weight):
        return None
    if online is not None:
        targets = online.feature_targets
    elif isinstance(source, CachedTargets) and not isinstance(source, LabelMixedTargets):
        asked = [r.name for r in requests(config.features, config.attention)]
        held = {t["name"]: t for t in source.feature_targets}
        missing = [name for name in asked if name not in held]
        if missing:
            raise ConfigError(
                f"{source.store.location}: teacher {source.teachers[0]} has no targets "
                f"{missing}; it has {sorted(held)}"
            )
        targets = [held[name] for name in asked] if asked else list(held.values())
    else:
        raise ConfigError(
            "feature and attention weights need teacher targets: a cache taught with "
            "features or attention, or an online teacher with features (no label mixing)"
        )
    if not targets:
        raise ConfigError("feature and attention weights: the teacher has no such targets")
    return FeatureAlignment(
        net, targets, student_layers=config.student_layers, feature_loss=config.feature_loss,
        attention_loss=config.attention_loss, resolution=spec.resolution, in_chans=spec.in_chans,
        seed=config.seed,
    ).to(device)  # fmt: skip


def _task(config: TrainConfig, model, criterion, online, alignment, device) -> KDTask:
    """The training step (:class:`~trainer.kd.task.KDTask`) of the student being trained."""
    return KDTask(
        model, criterion, teacher=online, alignment=alignment,
        feature_weight=config.feature_weight, attention_weight=config.attention_weight,
        amp=config.amp, channels_last=config.channels_last, device=device, verbose=False,
    )  # fmt: skip


def _step(task: KDTask, num_classes: int, spec: ModelSpec, device, batch: dict):
    """One loader batch through the task: (loss, its parts)."""
    images = normalize(batch["image"].to(device, non_blocking=True), spec.mean, spec.std)
    labels = label_targets(batch, num_classes).to(device, non_blocking=True)
    targets = moved(batch["targets"], device, non_blocking=True)
    result = task(images, labels, targets, teacher_input=batch.get("teacher_image"))
    return result.pop("loss"), {k: v for k, v in result.items() if k != "output"}


def _optimizer(net, config: TrainConfig, epoch_steps: list[int], alignment=None):
    """AdamW and its per-update cosine schedule with linear warm-up; the feature adapters'
    parameters are one more group."""
    optimizer = create_optimizer_v2(net, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    adapters = list(alignment.parameters()) if alignment is not None else []
    if adapters:
        optimizer.add_param_group({"params": adapters, "weight_decay": config.weight_decay})
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, sum(epoch_steps)),
        lr_min=config.min_lr,
        warmup_t=int(config.warmup_epochs * epoch_steps[0]) if epoch_steps else 0,
        warmup_lr_init=config.lr / 100,
        t_in_epochs=False,
    )
    return optimizer, scheduler


def _resume(config, run_config, student: Student, optimizer, scheduler, device, world) -> Progress:
    """Load ``RUN/resume.pth`` into the run's parts; where the run stopped (this rank's part of
    an epoch under way)."""
    path = os.path.join(config.out, RESUME_FILE)
    state = load_state(path, run_config)
    parts = [("model", student.net), ("optimizer", optimizer)]
    parts += [("feature_adapters", student.alignment)] if student.alignment is not None else []
    parts += [("ema", student.ema)] if student.ema is not None else []
    for name, part in parts:
        try:
            part.load_state_dict(state[name])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise RunStateError(
                f"{path}: field {name} does not fit this run ({first[:200]})"
            ) from None
    restore_rng(state)
    progress = progress_from(state, device, world.rank, world.size)
    scheduler.step_update(progress.updates)
    return progress


def _wrapped(net, world: World, device, compile: bool) -> torch.nn.Module:
    model = net
    if world.distributed:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def _open_run_folder(config, run_config: dict, world: World, progress: Progress):
    """Rank 0: the run folder with config.json, and its log; other ranks: None."""
    if not world.is_main:
        return None
    write_run_config(config.out, run_config, overwrite=config.overwrite)
    return RunLog(config.out, tensorboard=config.tensorboard, rows=progress.rows)
