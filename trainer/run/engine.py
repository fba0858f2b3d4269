"""The training loop: one student, one run folder (config.json, metrics.csv, checkpoints).

Runs alone or under torchrun (DDP, one process per device), checkpoints every epoch and on
SIGTERM, and resumes exactly (:mod:`trainer.resume`).
"""

import contextlib
import json
import os
import random
import time
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
from kdcache.pipeline.data import Manifest, storage
from kdcache.pipeline.teach import (
    ModelSpec,
    TeacherSource,
    create_model,
    requests,
    save_checkpoint,
)
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
from kdcache.trainer.kd import TEACHER_MODES, DistillationLoss, FeatureAlignment, teacher_mix
from kdcache.trainer.run.distributed import (
    World,
    check_in_sync,
    share_buffers,
    start_world,
    stop_world,
    sum_across,
)
from kdcache.trainer.run.epoch import agreed, stop_now, train_epoch
from kdcache.trainer.run.evaluate import accuracy, count_correct, eval_preprocessing
from kdcache.trainer.run.resume import (
    RESUME_FILE,
    Progress,
    StopOnSignal,
    Stopped,
    load_state,
    progress_from,
    restore_rng,
    save_state,
)
from kdcache.trainer.run.run_folder import claim_run_folder, write_run_config
from kdcache.trainer.run.run_log import RunLog
from kdcache.trainer.run.step_profile import StepProfile
from kdcache.trainer.run.student_weights import load_initial_checkpoint, pretrained_student
from kdcache.trainer.run.train_config import TrainConfig


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def teacher_mode(config: TrainConfig) -> str:
    """Where the distillation targets come from, checked against the other options."""
    mode = config.teacher or ("cached" if config.cache else "none")
    if mode not in TEACHER_MODES:
        raise ValueError(f"--teacher must be one of {TEACHER_MODES}, got {mode!r}")
    if (config.kd == "none") != (mode == "none"):
        raise ValueError(
            f"--kd {config.kd} with --teacher {mode}: distillation needs a teacher "
            "(--cache for cached targets, --teacher online --teacher-checkpoint for online)"
            if mode == "none"
            else f"--teacher {mode} needs --kd soft or hard"
        )
    if mode == "online" and config.teacher_checkpoint is None:
        raise ValueError("--teacher online needs --teacher-checkpoint")
    if mode == "online" and (config.teachers or config.targets == "sampled"):
        raise ValueError(
            "--teacher online runs one teacher on top-k targets: --teacher-name and "
            "--targets sampled are for cached teachers"
        )
    if mode != "cached" and config.cache is not None:
        raise ValueError(f"--cache holds cached targets; --teacher {mode} does not use one")
    return mode


def _views_source(config: TrainConfig, manifest: Manifest) -> CachedTargets | PlannedViews:
    cache, teachers = config.cache, config.teachers
    if cache == "auto":
        root = catalog_root(config.catalog)
        wanted = teachers[0] if teachers else None
        plan = config.plan
        if config.mixing == "label":  # the cache holds unmixed views; the run mixes them
            plan = {k: v for k, v in plan.items() if k not in MIX_FIELDS}
        cache, teacher = resolve_cache(root, manifest.fingerprint, plan, wanted)
        teachers = teachers or [teacher]
        if config.progress:
            print(f"train: --cache auto picked {cache} (teacher {teacher})", flush=True)
    if cache is not None:
        options = dict(
            teachers=teachers,
            plan=config.plan,
            topk=config.topk,
            sampled=config.targets == "sampled",
            samples=config.samples,
        )
        if config.mixing == "label":
            return LabelMixedTargets(cache, manifest, **options)
        return CachedTargets(cache, manifest, **options)
    if config.mixing == "label":
        raise ValueError("--mixing label mixes cached targets: it needs --cache")
    return PlannedViews(ViewPlan(**config.plan), manifest)


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


def train(config: TrainConfig) -> dict:
    """Train a student (or a teacher, with ``kd='none'``); return the final metrics row.

    Under torchrun every rank calls this; rank 0 writes the run folder. Raises
    :class:`~trainer.resume.Stopped` after saving a resumable state when sent SIGTERM.
    ``config.storage_options`` (over ``$KDCACHE_STORAGE_OPTIONS``) reach every URL: data,
    cache, catalogue and ``out``, in DataLoader workers too.
    """
    with storage.using(config.storage_options):
        return _train(config)


def _train(config: TrainConfig) -> dict:
    world, device = start_world(config.device)
    try:
        run = _build_run(config, world, device)
        return _train_epochs(run)
    finally:
        stop_world(world)


@dataclass
class _Run:
    """Everything one training run holds, built by :func:`_build_run`."""

    config: TrainConfig
    world: World
    device: torch.device
    spec: ModelSpec
    net: torch.nn.Module  # the plain student (checkpoints, EMA source, evaluation)
    model: torch.nn.Module  # what trains: net, maybe DDP-wrapped and compiled
    ema: ModelEmaV3 | None
    step: Callable  # batch -> (loss, parts)
    alignment: FeatureAlignment | None  # feature/attention adapters (optimised, checkpointed)
    train_set: TrainViews
    train_loader: Iterable
    test_loader: Iterable
    epoch_steps: list[int]
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    run_config: dict  # what config.json holds
    progress: Progress
    log: RunLog | None
    profile: StepProfile


def _build_run(config: TrainConfig, world: World, device: torch.device) -> _Run:
    """Data, student, loss, optimiser and run folder of a run, resumed if asked."""
    if config.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {config.epochs}")
    if world.is_main:
        local_only = [name for name, on in (("--tensorboard", config.tensorboard),
                                            ("--profile", config.profile)) if on]  # fmt: skip
        claim_run_folder(
            config.out, resume=config.resume, overwrite=config.overwrite, local_only=local_only
        )
    _seed_everything(config.seed)
    mode = teacher_mode(config)
    set_pixel_limit(config.max_pixels)
    manifest = Manifest.read(config.manifest, allow_remote_shards=config.allow_remote_shards)
    source = _views_source(config, manifest)
    net, spec, evaluation = _student(config, manifest, source, device)
    distilled = hasattr(net, "set_distilled_training")
    online = _online_teacher(config, manifest, device) if mode == "online" else None
    teachers = None if mode == "none" else (["online"] if online else source.teachers)
    criterion = _criterion(config, manifest.num_classes, teachers, distilled)
    alignment = _alignment(config, net, spec, source, online, device)
    train_set = TrainViews(
        manifest, source, resolution=spec.resolution, seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        schedule=ViewSchedule(config.view_schedule, source.plan.views, config.seed),
        mix_targets=config.mixing == "label",
        teacher_resolution=online.resolution if online else None,
    )  # fmt: skip
    pin = device.type == "cuda"
    epoch_steps = [
        train_set.epoch_steps(e, config.batch_size, config.workers, world.size)
        for e in range(config.epochs)
    ]
    optimizer, scheduler = _optimizer(net, config, epoch_steps, alignment)
    ema = ModelEmaV3(net, decay=config.ema_decay) if config.ema_decay else None
    run_config = _config_json(config, source, spec, online)
    progress = Progress()
    if config.resume:
        progress = _resume(config, run_config, net, optimizer, scheduler, ema, device, alignment)
        if world.is_main and config.progress:
            total = epoch_steps[min(progress.epoch, config.epochs - 1)]
            print(f"train: resuming {config.out} at epoch {progress.epoch}, "
                  f"step {progress.step}/{total}", flush=True)  # fmt: skip
    return _Run(
        config=config,
        world=world,
        device=device,
        spec=spec,
        net=net,
        model=_wrapped(net, world, device, config.compile),
        ema=ema,
        step=partial(_step, criterion, alignment, net, manifest.num_classes, spec, online, device,
                     config),
        alignment=alignment,
        train_set=train_set,
        train_loader=make_loader(train_set, config.batch_size, config.workers, pin, config.seed),
        test_loader=make_loader(EvalViews(manifest, resolution=spec.resolution, **evaluation),
                                256, config.workers, pin),
        epoch_steps=epoch_steps,
        optimizer=optimizer,
        scheduler=scheduler,
        run_config=run_config,
        progress=progress,
        log=_open_run_folder(config, run_config, world, progress),
        profile=StepProfile(config.profile, os.path.join(config.out, "profile"), device,
                            world.rank, show=world.is_main and config.progress),
    )  # fmt: skip


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


def _step(
    criterion, alignment, net, num_classes, spec, online, device, config: TrainConfig, model, batch
):
    """One batch through the student: (loss, its parts)."""
    images = normalize(batch["image"].to(device, non_blocking=True), spec.mean, spec.std)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = label_targets(batch, num_classes).to(device, non_blocking=True)
    if online is not None:
        targets = {"online": online(batch["teacher_image"])}
    else:
        targets = {
            name: moved(arrays, device, non_blocking=True)
            for name, arrays in batch["targets"].items()
        }
    taps = alignment.taps(net) if alignment is not None else contextlib.nullcontext()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp), taps:
        outputs = model(images)
    loss, parts = criterion(outputs, labels, targets), dict(criterion.parts)
    if alignment is not None:
        feat, attn = alignment(taps.collect(), next(iter(targets.values()))["features"])
        loss = loss + config.feature_weight * feat + config.attention_weight * attn
        parts |= {"feat": feat.detach(), "attn": attn.detach()}
    return loss, parts


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


def _resume(config, run_config, net, optimizer, scheduler, ema, device, alignment) -> Progress:
    """Load ``RUN/resume.pth`` into the run's parts; where the run stopped."""
    path = os.path.join(config.out, RESUME_FILE)
    state = load_state(path, run_config)
    parts = [("model", net), ("optimizer", optimizer)]
    parts += [("feature_adapters", alignment)] if alignment is not None else []
    parts += [("ema", ema)] if ema is not None else []
    for name, part in parts:
        try:
            part.load_state_dict(state[name])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise RunStateError(
                f"{path}: field {name} does not fit this run ({first[:200]})"
            ) from None
    restore_rng(state)
    progress = progress_from(state, device)
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


def _train_epochs(run: _Run) -> dict:
    """The epochs left: train, evaluate, log, save; stop after saving on SIGTERM."""
    config, world = run.config, run.world
    try:
        with StopOnSignal() as stop:
            for epoch in range(run.progress.epoch, config.epochs):
                run.train_set.set_epoch(epoch)
                began = time.perf_counter()
                fresh = train_epoch(
                    run.model,
                    run.net,
                    run.train_loader,
                    lambda batch: run.step(run.model, batch),
                    run.optimizer,
                    run.scheduler,
                    run.ema,
                    run.progress,
                    run.epoch_steps[epoch],
                    clip_grad=config.clip_grad,
                    stop=lambda step: stop_now(stop, step, world, run.device),
                    log=run.log,
                    bar=config.progress and world.is_main,
                    profile=run.profile,
                )
                if run.progress.step < run.epoch_steps[epoch]:
                    _save(run, None)
                    raise Stopped(f"SIGTERM at epoch {epoch}, step {run.progress.step}")
                row = _epoch_row(run, epoch, fresh, time.perf_counter() - began)
                row["seconds"] = time.perf_counter() - began
                done = run.progress
                run.progress = Progress(epoch + 1, 0, done.updates, {}, 0, [*done.rows, row])
                # decided before saving: a SIGTERM that arrives later stops the next epoch
                stop_here = agreed(stop.requested, world, run.device) and epoch + 1 < config.epochs
                if run.log is not None:
                    run.log.add_epoch(row)
                _save(run, row)
                if world.is_main and config.progress:
                    _print_epoch(row)
                if stop_here:
                    raise Stopped(f"SIGTERM after epoch {epoch}")
    finally:
        run.profile.close()
        if run.log is not None:
            run.log.close()
    return run.progress.rows[-1]


def _epoch_row(run: _Run, epoch: int, fresh: int, train_seconds: float) -> dict:
    """The epoch's metrics, summed over ranks: train loss parts, speed, test accuracy."""
    world, device = run.world, run.device
    check_in_sync(run.net, world, device)
    share_buffers(run.net, run.ema, world)  # every rank evaluates what checkpoint.pth holds
    sums = sum_across(
        {name: float(v) for name, v in run.progress.sums.items()}
        | {"images": run.progress.seen, "fresh": fresh},
        world,
        device,
    )
    images, fresh_images = sums.pop("images"), sums.pop("fresh")
    prepare = partial(normalize, mean=run.spec.mean, std=run.spec.std)
    counts = count_correct(run.net, run.test_loader, device, prepare)
    scores = accuracy(sum_across(counts, world, device))
    if run.ema is not None:
        counts = count_correct(run.ema.module, run.test_loader, device, prepare)
        scores |= accuracy(sum_across(counts, world, device), prefix="ema_")
    return {
        "epoch": epoch,
        "lr": run.optimizer.param_groups[0]["lr"],
        **{f"train_{k}": v / max(images, 1) for k, v in sums.items()},
        "train_images": int(images),
        "train_images_per_s": fresh_images / train_seconds,
        **{f"test_{k}": v for k, v in scores.items()},
    }


def _save(run: _Run, epoch_row: dict | None) -> None:
    """Rank 0: the epoch's checkpoints (after a finished epoch) and the resumable state."""
    if not run.world.is_main:
        return
    if epoch_row is not None:
        for suffix, weights in (("", run.net), ("-ema", run.ema.module if run.ema else None)):
            if weights is not None:
                save_checkpoint(
                    os.path.join(run.config.out, f"checkpoint{suffix}.pth"),
                    weights,
                    run.spec,
                    epoch=epoch_row["epoch"],
                    metrics=epoch_row,
                    **_adapter_state(run),
                )
    save_state(
        os.path.join(run.config.out, RESUME_FILE),
        config=run.run_config,
        model=run.net,
        optimizer=run.optimizer,
        ema=run.ema,
        progress=run.progress,
        extra=_adapter_state(run),
    )


def _adapter_state(run: _Run) -> dict:
    """The feature adapters' weights under ``feature_adapters`` (nothing without them)."""
    if run.alignment is None:
        return {}
    return {"feature_adapters": run.alignment.state_dict()}


def _print_epoch(row: dict) -> None:
    ema = f", EMA {row['test_ema_acc']:.2f}%" if "test_ema_acc" in row else ""
    extra = "".join(
        f", {k} {row['train_' + k]:.4f}" for k in ("feat", "attn") if f"train_{k}" in row
    )
    print(
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}, "
        f"kd {row['train_kd']:.4f}{extra}), {row['train_images_per_s']:.0f} img/s, "
        f"test acc {row['test_acc']:.2f}%{ema}",
        flush=True,
    )
