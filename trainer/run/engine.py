"""The training loop: one student, one run folder (config.json, metrics.csv, checkpoints).

Runs alone or under torchrun (DDP, one process per device), checkpoints every epoch and on
SIGTERM, and resumes exactly (:mod:`trainer.run.resume`). The run is built by
:func:`~trainer.run.build.build_run`; here it trains, epoch by epoch: train, evaluate, log, save.
"""

import os
import time
from functools import partial

from kdcache.pipeline.data import storage
from kdcache.pipeline.teach import save_checkpoint
from kdcache.pipeline.views import normalize
from kdcache.trainer.run.build import Run, build_run
from kdcache.trainer.run.distributed import (
    check_in_sync,
    gather_across,
    share_buffers,
    start_world,
    stop_world,
    sum_across,
)
from kdcache.trainer.run.epoch import agreed, stop_now, train_epoch
from kdcache.trainer.run.evaluate import accuracy, count_correct
from kdcache.trainer.run.resume import (
    RESUME_FILE,
    Progress,
    StopOnSignal,
    Stopped,
    rank_progress,
    save_state,
)
from kdcache.trainer.run.train_config import TrainConfig


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
        run = build_run(config, world, device)
        return _train_epochs(run)
    finally:
        stop_world(world)


def _train_epochs(run: Run) -> dict:
    """The epochs left, each: train, evaluate, log, save; stop after saving on SIGTERM."""
    try:
        with StopOnSignal() as stop:
            for epoch in range(run.progress.epoch, run.config.epochs):
                _train_one_epoch(run, epoch, stop)
    finally:
        run.profile.close()
        if run.log is not None:
            run.log.close()
    return run.progress.rows[-1]


def _train_one_epoch(run: Run, epoch: int, stop: StopOnSignal) -> None:
    """Train ``epoch`` (from where a resumed run stopped), then evaluate, log and save it."""
    config, world = run.config, run.world
    run.data.train_set.set_epoch(epoch)
    began = time.perf_counter()
    steps = run.data.epoch_steps[epoch]
    fresh = train_epoch(run, steps, lambda step: stop_now(stop, step, world, run.device))
    if run.progress.step < steps:  # stopped inside the epoch
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


def _epoch_row(run: Run, epoch: int, fresh: int, train_seconds: float) -> dict:
    """The epoch's metrics, summed over ranks: train loss parts, speed, test accuracy."""
    world, device = run.world, run.device
    check_in_sync(run.student.net, world, device)
    share_buffers(
        run.student.net, run.student.ema, world
    )  # every rank evaluates what checkpoint.pth holds
    sums = sum_across(
        {name: float(v) for name, v in run.progress.sums.items()}
        | {"images": run.progress.seen, "fresh": fresh},
        world,
        device,
    )
    images, fresh_images = sums.pop("images"), sums.pop("fresh")
    prepare = partial(normalize, mean=run.student.spec.mean, std=run.student.spec.std)
    counts = count_correct(run.student.net, run.data.test_loader, device, prepare)
    scores = accuracy(sum_across(counts, world, device))
    if run.student.ema is not None:
        counts = count_correct(run.student.ema.module, run.data.test_loader, device, prepare)
        scores |= accuracy(sum_across(counts, world, device), prefix="ema_")
    return {
        "epoch": epoch,
        "lr": run.optimizer.param_groups[0]["lr"],
        **{f"train_{k}": v / max(images, 1) for k, v in sums.items()},
        "train_images": int(images),
        "train_images_per_s": fresh_images / train_seconds,
        **{f"test_{k}": v for k, v in scores.items()},
    }


def _save(run: Run, epoch_row: dict | None) -> None:
    """Rank 0: the epoch's checkpoints (after a finished epoch) and the resumable state, with
    every rank's partial loss sums under DDP (a collective: every rank calls this)."""
    parts = gather_across(rank_progress(run.progress), run.world)
    if not run.world.is_main:
        return
    if epoch_row is not None:
        for suffix, weights in (
            ("", run.student.net),
            ("-ema", run.student.ema.module if run.student.ema else None),
        ):
            if weights is not None:
                save_checkpoint(
                    os.path.join(run.config.out, f"checkpoint{suffix}.pth"),
                    weights,
                    run.student.spec,
                    epoch=epoch_row["epoch"],
                    metrics=epoch_row,
                    **_adapter_state(run),
                )
    save_state(
        os.path.join(run.config.out, RESUME_FILE),
        config=run.run_config,
        model=run.student.net,
        optimizer=run.optimizer,
        ema=run.student.ema,
        progress=run.progress,
        extra=_adapter_state(run) | ({"rank_progress": parts} if run.world.distributed else {}),
    )


def _adapter_state(run: Run) -> dict:
    """The feature adapters' weights under ``feature_adapters`` (nothing without them)."""
    if run.student.alignment is None:
        return {}
    return {"feature_adapters": run.student.alignment.state_dict()}


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
