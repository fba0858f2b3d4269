"""The training loop: one student, one run folder (config.json, metrics.csv, checkpoints).

Runs alone or under torchrun (DDP, one process per device), checkpoints every epoch and on
SIGTERM, and resumes exactly (:mod:`trainer.resume`).
"""

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from kdcache.pipeline.cache import catalog_root, resolve_cache
from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint
from kdcache.pipeline.views import MIX_FIELDS, ViewPlan, normalize
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
)
from kdcache.trainer.kd import TEACHER_MODES, DistillationLoss, teacher_mix
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
from kdcache.trainer.run.run_log import RunLog


@dataclass
class TrainConfig:
    """Options of one training run (see ``kdcache train --help``)."""

    manifest: str
    out: str
    model: str
    model_args: dict = field(default_factory=dict)
    resolution: int | None = None
    kd: str = "none"
    teacher: str | None = None  # none | cached | online; default cached with a cache, else none
    cache: str | None = None  # a location, or "auto" to pick from the catalogue
    catalog: str | None = None
    teachers: list[str] = field(default_factory=list)  # names in the cache; several: an ensemble
    teacher_weights: dict = field(default_factory=dict)  # ensemble weights (default: equal)
    head_teachers: dict = field(default_factory=dict)  # e.g. {"dist": "b"} (DeiT heads)
    teacher_checkpoint: str | None = None  # the online teacher
    teacher_arch: str | None = None  # architecture of published weights (online)
    targets: str = "topk"  # or "sampled" (RS-KD drawn class ids)
    topk: int | None = None  # top-k used per view: a cache's first K, or online logits reduced
    samples: int | None = None  # sampled ids used per view (default: all the cache holds)
    plan: dict = field(default_factory=dict)  # plan fields; with a cache, checked against it
    alpha: float = 0.5
    tau: float = 1.0
    kl_reduction: str = "batchmean"
    tail: str = "uniform"
    label_smoothing: float = 0.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    clip_grad: float | None = None
    ema_decay: float | None = None
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    shuffle_buffer: int = 2000
    view_schedule: str = "cycle"  # epoch -> view: cycle, or shuffle (per sample, per V epochs)
    mixing: str = "exact"  # exact: the plan's mixing, seen by the teacher; label: FKD-style
    eval_crop_pct: float | None = field(
        default=None,
        metadata={"help": "evaluation crop: shorter side to resolution / crop_pct, centre crop "
                  "(default: the model's pretrained config, else 0.875)"},
    )  # fmt: skip
    eval_interpolation: str | None = field(
        default=None,
        metadata={"help": "evaluation resize interpolation, e.g. bicubic or bilinear "
                  "(default: the model's pretrained config)"},
    )  # fmt: skip
    eval_crop_mode: str | None = field(
        default=None,
        metadata={"help": "evaluation crop mode, as timm's: center, squash (whole image to a "
                  "square) or border (default: the model's pretrained config, else center)"},
    )  # fmt: skip
    tensorboard: bool = False
    resume: bool = False
    progress: bool = True


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
    """
    world, device = start_world(config.device)
    try:
        return _train(config, world, device)
    finally:
        stop_world(world)


def _train(config: TrainConfig, world: World, device: torch.device) -> dict:
    if config.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {config.epochs}")
    _seed_everything(config.seed)
    mode = teacher_mode(config)
    manifest = Manifest.read(config.manifest)
    source = _views_source(config, manifest)
    resolution = config.resolution or default_resolution(manifest, source, config.model)
    spec = ModelSpec(
        arch=config.model,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        resolution=int(resolution),
        mean=manifest.pixel_mean,
        std=manifest.pixel_std,
        model_args=config.model_args,
    )
    net = create_model(spec).to(device)
    distilled = hasattr(net, "set_distilled_training")
    if distilled:
        net.set_distilled_training(config.kd != "none")
    online = None
    if mode == "online":
        online = OnlineTeacher(
            config.teacher_checkpoint,
            num_classes=manifest.num_classes,
            in_chans=manifest.channels,
            device=device,
            topk=config.topk,
            arch=config.teacher_arch,
            amp=config.amp,
        )
    criterion = DistillationLoss(
        config.kd,
        manifest.num_classes,
        alpha=config.alpha,
        tau=config.tau,
        label_smoothing=config.label_smoothing,
        kl_reduction=config.kl_reduction,
        tail=config.tail,
        targets=config.targets,
        mix=None
        if mode == "none"
        else teacher_mix(
            ["online"] if online else source.teachers,
            config.teacher_weights,
            config.head_teachers,
            distilled,
        ),
    )
    train_set = TrainViews(
        manifest,
        source,
        resolution=spec.resolution,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        schedule=ViewSchedule(config.view_schedule, source.plan.views, config.seed),
        mix_targets=config.mixing == "label",
        teacher_resolution=online.resolution if online else None,
    )
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, config.batch_size, config.workers, pin, config.seed)
    evaluation = eval_preprocessing(
        net, config.eval_crop_pct, config.eval_interpolation, config.eval_crop_mode
    )
    spec = replace(spec, interpolation=evaluation["interpolation"], crop_pct=evaluation["crop_pct"])
    test_set = EvalViews(manifest, resolution=spec.resolution, **evaluation)
    test_loader = make_loader(test_set, 256, config.workers, pin)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return normalize(images, spec.mean, spec.std)

    def step(model, batch) -> tuple[torch.Tensor, dict]:
        images = prepare(batch["image"].to(device, non_blocking=True))
        labels = label_targets(batch, manifest.num_classes).to(device, non_blocking=True)
        if online is not None:
            targets = {"online": online(batch["teacher_image"])}
        else:
            targets = {
                name: {k: t.to(device, non_blocking=True) for k, t in arrays.items()}
                for name, arrays in batch["targets"].items()
            }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            outputs = model(images)
        return criterion(outputs, labels, targets), criterion.parts

    epoch_steps = [
        train_set.epoch_steps(e, config.batch_size, config.workers, world.size)
        for e in range(config.epochs)
    ]
    optimizer = create_optimizer_v2(net, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, sum(epoch_steps)),
        lr_min=config.min_lr,
        warmup_t=int(config.warmup_epochs * epoch_steps[0]) if epoch_steps else 0,
        warmup_lr_init=config.lr / 100,
        t_in_epochs=False,
    )
    ema = ModelEmaV3(net, decay=config.ema_decay) if config.ema_decay else None
    run_config = _config_json(config, source, spec, online)
    resume_path = os.path.join(config.out, RESUME_FILE)
    progress = Progress()
    if config.resume:
        state = load_state(resume_path, run_config)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        restore_rng(state)
        progress = progress_from(state, device)
        scheduler.step_update(progress.updates)
        if world.is_main and config.progress:
            print(
                f"train: resuming {config.out} at epoch {progress.epoch}, "
                f"step {progress.step}/{epoch_steps[min(progress.epoch, config.epochs - 1)]}",
                flush=True,
            )
    model = net
    if world.distributed:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)

    log = None
    if world.is_main:
        os.makedirs(config.out, exist_ok=True)
        with open(os.path.join(config.out, "config.json"), "w") as f:
            json.dump(run_config, f, indent=2)
        log = RunLog(config.out, tensorboard=config.tensorboard, rows=progress.rows)

    def save(epoch_row: dict | None) -> None:
        if not world.is_main:
            return
        if epoch_row is not None:
            for suffix, weights in (("", net), ("-ema", ema.module if ema else None)):
                if weights is not None:
                    save_checkpoint(
                        os.path.join(config.out, f"checkpoint{suffix}.pth"),
                        weights,
                        spec,
                        epoch=epoch_row["epoch"],
                        metrics=epoch_row,
                    )
        save_state(
            resume_path,
            config=run_config,
            model=net,
            optimizer=optimizer,
            ema=ema,
            progress=progress,
        )

    try:
        with StopOnSignal() as stop:
            for epoch in range(progress.epoch, config.epochs):
                train_set.set_epoch(epoch)
                began = time.perf_counter()
                fresh = train_epoch(
                    model,
                    net,
                    train_loader,
                    lambda batch: step(model, batch),
                    optimizer,
                    scheduler,
                    ema,
                    progress,
                    epoch_steps[epoch],
                    clip_grad=config.clip_grad,
                    stop=lambda step: stop_now(stop, step, world, device),
                    log=log,
                    bar=config.progress and world.is_main,
                )
                if progress.step < epoch_steps[epoch]:
                    save(None)
                    raise Stopped(f"SIGTERM at epoch {epoch}, step {progress.step}")
                train_seconds = time.perf_counter() - began
                check_in_sync(net, world, device)
                share_buffers(net, ema, world)  # every rank evaluates what checkpoint.pth holds
                sums = sum_across(
                    {name: float(v) for name, v in progress.sums.items()}
                    | {"images": progress.seen, "fresh": fresh},
                    world,
                    device,
                )
                images = sums.pop("images")
                fresh_images = sums.pop("fresh")
                scores = accuracy(
                    sum_across(count_correct(net, test_loader, device, prepare), world, device)
                )
                if ema is not None:
                    counts = count_correct(ema.module, test_loader, device, prepare)
                    scores |= accuracy(sum_across(counts, world, device), prefix="ema_")
                row = {
                    "epoch": epoch,
                    "lr": optimizer.param_groups[0]["lr"],
                    **{f"train_{k}": v / max(images, 1) for k, v in sums.items()},
                    "train_images": int(images),
                    "train_images_per_s": fresh_images / train_seconds,
                    **{f"test_{k}": v for k, v in scores.items()},
                    "seconds": time.perf_counter() - began,
                }
                progress = Progress(epoch + 1, 0, progress.updates, {}, 0, [*progress.rows, row])
                # decided before saving: a SIGTERM that arrives later stops the next epoch
                stop_here = agreed(stop.requested, world, device) and epoch + 1 < config.epochs
                if log is not None:
                    log.add_epoch(row)
                save(row)
                if world.is_main and config.progress:
                    _print_epoch(row)
                if stop_here:
                    raise Stopped(f"SIGTERM after epoch {epoch}")
    finally:
        if log is not None:
            log.close()
    return progress.rows[-1]


def _print_epoch(row: dict) -> None:
    ema = f", EMA {row['test_ema_acc']:.2f}%" if "test_ema_acc" in row else ""
    print(
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}, "
        f"kd {row['train_kd']:.4f}), {row['train_images_per_s']:.0f} img/s, "
        f"test acc {row['test_acc']:.2f}%{ema}",
        flush=True,
    )
