"""Distil a timm student from a kdcache cache with timm's own training pieces.

timm's model factory, ``create_optimizer_v2``, ``create_scheduler_v2`` and ``ModelEmaV3`` (made
by the task's ``setup_ema``), driven through timm's ``TrainingTask`` contract; from kdcache only
the loader (each sample's replayed view with its cached teacher targets) and the cached task,
which is timm's ``LogitDistillationTask``/``TokenDistillationTask`` without the teacher forward.

    kdcache shard --source fashion-mnist --out data
    kdcache teach --data data --cache cache.zarr --teacher teacher.pth --views 4 --topk 10
    python examples/timm_train.py --data data --cache cache.zarr --model resnet10t

    # DeiT's distillation token (soft or hard), a small DeiT at 28 px:
    python examples/timm_train.py --data data --cache cache.zarr --distill token \\
        --model deit_tiny_distilled_patch16_224 \\
        --model-kwargs '{"img_size": 28, "patch_size": 7, "embed_dim": 128, "depth": 4, "num_heads": 4}'

``--alpha``/``--tau`` are kdcache's (``kdcache train``): the task gets ``task_loss_weight = 1 -
alpha``, ``distill_loss_weight = alpha``, ``temperature = tau`` (kdcache.trainer.kd.timm_tasks).
"""

import argparse
import json

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import kdcache
from kdcache.trainer.kd import (
    CachedLogitDistillationTask,
    CachedTokenDistillationTask,
    from_alpha_tau,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a kdcache shard folder (its manifest)")
    parser.add_argument("--cache", required=True, help="a kdcache cache of its train split")
    parser.add_argument("--model", default="resnet10t", help="timm architecture")
    parser.add_argument("--model-kwargs", default="{}", help="JSON, for timm.create_model")
    parser.add_argument("--distill", choices=("logit", "token"), default="logit")
    parser.add_argument("--distill-type", choices=("soft", "hard"), default="soft", help="token")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the teacher term")
    parser.add_argument("--tau", type=float, default=1.0, help="distillation temperature")
    parser.add_argument("--resolution", type=int, default=None, help="default: the images'")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-epochs", type=int, default=0)
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_task(args: argparse.Namespace, model: torch.nn.Module):
    weights = from_alpha_tau(args.alpha, args.tau)  # task/distill weights, temperature
    if args.distill == "token":
        return CachedTokenDistillationTask(model, distill_type=args.distill_type, **weights)
    return CachedLogitDistillationTask(model, **weights)


def train_one_epoch(task, loader, optimizer, scheduler, updates: int, kd_key: str):
    """One epoch of timm-style steps through the task; (mean loss parts, updates so far)."""
    task.train()
    sums = {"loss": 0.0, "task_loss": 0.0, kd_key: 0.0}
    batches = 0
    for batch in loader:
        result = task(batch.images, batch)  # labels and teacher targets from the batch
        optimizer.zero_grad(set_to_none=True)
        result["loss"].backward()
        optimizer.step()
        updates += 1
        scheduler.step_update(num_updates=updates)
        task.update_ema(step=updates)
        for key in sums:
            sums[key] += result[key].item()
        batches += 1
    return {key: value / max(batches, 1) for key, value in sums.items()}, updates


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    # kdcache: batches of replayed views (normalised) with their cached targets
    loader = kdcache.KDLoader(
        args.data, args.cache, batch_size=args.batch_size, workers=args.workers,
        resolution=args.resolution, seed=args.seed,
    )  # fmt: skip
    manifest = loader.manifest

    # timm: model, task, EMA, optimizer, scheduler
    model = timm.create_model(
        args.model,
        num_classes=manifest.num_classes,
        in_chans=manifest.channels,
        **json.loads(args.model_kwargs),
    )
    task = make_task(args, model)
    task.setup_ema(decay=args.ema_decay)  # timm.utils.ModelEmaV3 of the student
    optimizer = create_optimizer_v2(task.get_trainable_module(), "adamw", lr=args.lr)
    steps = loader.steps(0)
    scheduler, epochs = create_scheduler_v2(
        optimizer,
        "cosine",
        num_epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        updates_per_epoch=steps,
        step_on_epochs=False,
    )
    kd_key = "distill_loss" if args.distill == "token" else "kd_loss"
    kind = args.distill_type if args.distill == "token" else "soft"
    print(
        f"timm_train: {args.model} ({type(task).__name__}, {kind}), "
        f"task_loss_weight {task.task_loss_weight:g}, distill_loss_weight "
        f"{task.distill_loss_weight:g}, temperature {task.temperature:g}; "
        f"{len(loader.views)} images x {epochs} epochs, {steps} steps each",
        flush=True,
    )

    updates = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        means, updates = train_one_epoch(task, loader, optimizer, scheduler, updates, kd_key)
        scheduler.step(epoch + 1)
        print(
            f"epoch {epoch + 1}/{epochs} loss {means['loss']:.4f} task_loss "
            f"{means['task_loss']:.4f} {kd_key} {means[kd_key]:.4f} "
            f"lr {optimizer.param_groups[0]['lr']:.2e}",
            flush=True,
        )

    test = dict(resolution=loader.resolution, workers=args.workers)
    student = kdcache.evaluate_model(task.get_eval_model(), args.data, **test)["acc"]
    ema = kdcache.evaluate_model(task.get_eval_model(ema=True), args.data, **test)["acc"]
    print(f"test accuracy: student {student:.2f}%, ema {ema:.2f}%", flush=True)


if __name__ == "__main__":
    main()
