"""One epoch of optimiser steps, resumable mid-epoch and stoppable at an agreed step."""

import torch

from kdcache.trainer.run.distributed import World, sum_across
from kdcache.trainer.run.resume import Progress, StopOnSignal
from kdcache.trainer.run.run_log import RunLog
from kdcache.trainer.run.step_display import StepDisplay
from kdcache.trainer.run.step_profile import StepProfile

_STEP_LOG_EVERY = 50  # updates between per-step TensorBoard scalars
_STOP_CHECK_EVERY = 10  # under DDP, steps between agreeing on a SIGTERM (one all-reduce)


def agreed(flag: bool, world: World, device: torch.device) -> bool:
    """True when any rank raised ``flag`` (every rank gets the same answer)."""
    return bool(sum_across({"flag": float(flag)}, world, device)["flag"])


def stop_now(stop: StopOnSignal, step: int, world: World, device: torch.device) -> bool:
    """Whether to stop after this step: at once alone, at an agreed step under DDP."""
    if not world.distributed:
        return stop.requested
    return step % _STOP_CHECK_EVERY == 0 and agreed(stop.requested, world, device)


def train_epoch(
    model,
    net: torch.nn.Module,
    loader,
    step,
    optimizer,
    scheduler,
    ema,
    progress: Progress,
    steps: int,
    *,
    clip_grad: float | None,
    stop,
    log: RunLog | None,
    bar: bool,
    profile: StepProfile,
) -> int:
    """Train ``progress.epoch`` up to ``steps`` batches, updating ``progress`` in place; skip
    the batches a resumed epoch already did. ``model`` is what trains (maybe DDP-wrapped or
    compiled), ``net`` the plain module (EMA source); ``profile`` times the steps it covers.
    Returns the images trained on here.

    Loss parts are summed on the device and read at the epoch's end (no per-step sync).
    """
    model.train()
    batches = iter(loader)
    for _ in range(progress.step):  # same order as the interrupted run: skip what it did
        next(batches)
    fresh = 0
    shown = StepDisplay(progress.epoch, steps, progress.step, show=bar)
    try:
        while progress.step < steps:
            profile.batch_wanted()
            batch = next(batches)
            profile.batch_arrived()
            loss, parts = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            progress.updates += 1
            scheduler.step_update(progress.updates)
            if ema is not None:
                ema.update(net, step=progress.updates)
            profile.step_done()
            size = _count_step(progress, batch["label"].numel(), loss, parts)
            fresh += size
            if (
                log is not None
                and log.writer is not None
                and progress.updates % _STEP_LOG_EVERY == 0
            ):
                lr = optimizer.param_groups[0]["lr"]
                log.add_step(progress.updates, {"loss": loss.item(), "lr": lr})
            shown.update(size)
            if stop(progress.step):
                break
    finally:
        shown.close()
    return fresh


def _count_step(progress: Progress, size: int, loss: torch.Tensor, parts: dict) -> int:
    """Add a step of ``size`` samples to ``progress`` (loss parts summed on the device)."""
    progress.step += 1
    progress.seen += size
    for name, value in {"loss": loss.detach(), **parts}.items():
        progress.sums[name] = progress.sums.get(name, 0) + value * size
    return size
