"""The training loop: one student, one run folder (config.json, metrics.csv, checkpoint.pth)."""

import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from tqdm import tqdm

from pipeline.catalog import catalog_root, resolve_cache
from pipeline.manifest import Manifest
from pipeline.models import ModelSpec, create_model, save_checkpoint
from pipeline.plan import ViewPlan
from pipeline.views import normalize
from trainer.evaluate import evaluate
from trainer.loader import EvalViews, TrainViews, make_loader
from trainer.losses import DistillationLoss
from trainer.mixing import LabelMixedTargets, label_targets
from trainer.targets import CachedTargets, PlannedViews
from trainer.view_schedule import ViewSchedule


@dataclass
class TrainConfig:
    """Options of one training run (see ``kdcache train --help``)."""

    manifest: str
    out: str
    model: str
    model_args: dict = field(default_factory=dict)
    resolution: int | None = None
    kd: str = "none"
    cache: str | None = None  # a location, or "auto" to pick from the catalogue
    catalog: str | None = None
    teacher_name: str | None = None
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
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    shuffle_buffer: int = 2000
    view_schedule: str = "cycle"  # epoch -> view: cycle, or shuffle (per sample, per V epochs)
    mixing: str = "exact"  # exact: the plan's mixing, seen by the teacher; label: FKD-style
    progress: bool = True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _views_source(config: TrainConfig, manifest: Manifest) -> CachedTargets | PlannedViews:
    if config.kd != "none" and config.cache is None:
        raise ValueError(f"--kd {config.kd} needs --cache (a cache made by kdcache teach)")
    cache, teacher = config.cache, config.teacher_name
    if cache == "auto":
        root = catalog_root(config.catalog)
        cache, teacher = resolve_cache(root, manifest.fingerprint, config.plan, teacher)
        if config.progress:
            print(f"train: --cache auto picked {cache} (teacher {teacher})", flush=True)
    if cache is not None and config.mixing == "label":
        return LabelMixedTargets(cache, manifest, teacher=teacher, plan=config.plan)
    if cache is not None:
        return CachedTargets(cache, manifest, teacher=teacher, plan=config.plan)
    if config.mixing == "label":
        raise ValueError("--mixing label mixes cached targets: it needs --cache")
    return PlannedViews(ViewPlan(**config.plan), manifest)


def _config_json(config: TrainConfig, source, spec: ModelSpec) -> dict:
    values = asdict(config)
    values["plan"] = source.plan.to_attrs()
    values["spec"] = spec.to_dict()
    if isinstance(source, CachedTargets):
        values["cache"] = source.store.location
        values["teacher"] = source.store.teacher_identity(source.teacher)
    return values


def _train_epoch(model, batches, optimizer, scheduler, updates: int, step, clip_grad):
    """One pass over ``batches``; returns (summed loss parts, samples seen, updates so far).

    Loss parts are summed on the device and read once at the end (no per-step sync).
    """
    model.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for batch in batches:
        loss, parts = step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        updates += 1
        scheduler.step_update(updates)
        size = batch["label"].numel()
        seen += size
        for name, value in {"loss": loss.detach(), **parts}.items():
            sums[name] = sums.get(name, 0) + value * size
    return {name: float(value) for name, value in sums.items()}, seen, updates


def train(config: TrainConfig) -> dict:
    """Train a student (or a teacher, with ``kd='none'``); return the final metrics row."""
    _seed_everything(config.seed)
    device = _device(config.device)
    manifest = Manifest.read(config.manifest)
    source = _views_source(config, manifest)
    resolution = config.resolution or max(manifest.table["height"].to_numpy().max(), 1)
    spec = ModelSpec(
        arch=config.model,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        resolution=int(resolution),
        mean=manifest.pixel_mean,
        std=manifest.pixel_std,
        model_args=config.model_args,
    )
    model = create_model(spec).to(device)
    distilled = hasattr(model, "set_distilled_training")
    if distilled:
        model.set_distilled_training(config.kd != "none")
    criterion = DistillationLoss(
        config.kd,
        manifest.num_classes,
        alpha=config.alpha,
        tau=config.tau,
        label_smoothing=config.label_smoothing,
        kl_reduction=config.kl_reduction,
        tail=config.tail,
    )
    train_set = TrainViews(
        manifest,
        source,
        resolution=spec.resolution,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
        schedule=ViewSchedule(config.view_schedule, source.plan.views, config.seed),
        mix_targets=config.mixing == "label",
    )
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, config.batch_size, config.workers, pin)
    test_set = EvalViews(manifest, resolution=spec.resolution)
    test_loader = make_loader(test_set, 256, config.workers, pin)

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return normalize(images, spec.mean, spec.std)

    def step(batch) -> tuple[torch.Tensor, dict]:
        images = prepare(batch["image"].to(device, non_blocking=True))
        labels = label_targets(batch, manifest.num_classes).to(device, non_blocking=True)
        targets = {
            name: {k: t.to(device, non_blocking=True) for k, t in arrays.items()}
            for name, arrays in batch["targets"].items()
        }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            outputs = model(images)
        return criterion(outputs, labels, targets)

    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, config.epochs * steps_per_epoch),
        lr_min=config.min_lr,
        warmup_t=int(config.warmup_epochs * steps_per_epoch),
        warmup_lr_init=config.lr / 100,
        t_in_epochs=False,
    )

    os.makedirs(config.out, exist_ok=True)
    with open(os.path.join(config.out, "config.json"), "w") as f:
        json.dump(_config_json(config, source, spec), f, indent=2)
    metrics_path = os.path.join(config.out, "metrics.csv")
    rows: list[dict] = []
    updates = 0
    for epoch in range(config.epochs):
        train_set.set_epoch(epoch)
        began = time.perf_counter()
        bar = tqdm(
            train_loader,
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            disable=None if config.progress else True,
            leave=False,
        )
        sums, seen, updates = _train_epoch(
            model, bar, optimizer, scheduler, updates, step, config.clip_grad
        )
        train_seconds = time.perf_counter() - began
        accuracy = evaluate(model, test_loader, device, prepare)
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"train_{k}": v / max(seen, 1) for k, v in sums.items()},
            "train_images": seen,
            "train_images_per_s": seen / train_seconds,
            **{f"test_{k}": v for k, v in accuracy.items()},
            "seconds": time.perf_counter() - began,
        }
        rows.append(row)
        with open(metrics_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
        save_checkpoint(
            os.path.join(config.out, "checkpoint.pth"), model, spec, epoch=epoch, metrics=row
        )
        if config.progress:
            print(
                f"epoch {epoch}: loss {row['train_loss']:.4f} (ce {row['train_ce']:.4f}, "
                f"kd {row['train_kd']:.4f}), {row['train_images_per_s']:.0f} img/s, "
                f"test acc {row['test_acc']:.2f}%",
                flush=True,
            )
    return rows[-1]
