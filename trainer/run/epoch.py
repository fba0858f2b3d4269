"""One epoch of optimiser steps, resumable mid-epoch and stoppable at an agreed step."""

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from kdcache.trainer.run.distributed import World, sum_across
from kdcache.trainer.run.resume import Progress, StopOnSignal
from kdcache.trainer.run.step_display import StepDisplay

if TYPE_CHECKING:
    from kdcache.trainer.run.build import Run

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


def train_epoch(run: "Run", steps: int, stop: Callable[[int], bool]) -> int:
    """Train ``run.progress.epoch`` up to ``steps`` batches, updating ``run.progress`` in place;
    skip the batches a resumed epoch already did; ``stop(step)`` says whether to stop after a
    step. Returns the images trained on here.

    Loss parts are summed on the device and read at the epoch's end (no per-step sync).
    """
    progress, student, profile = run.progress, run.student, run.profile
    student.model.train()
    batches = iter(run.data.train_loader)
    for _ in range(progress.step):  # same order as the interrupted run: skip what it did
        next(batches)
    fresh = 0
    shown = StepDisplay(progress.epoch, steps, progress.step,
                        show=run.config.progress and run.world.is_main)  # fmt: skip
    try:
        while progress.step < steps:
            profile.batch_wanted()
            batch = next(batches)
            profile.batch_arrived()
            loss, parts = run.step(batch)
            _update(run, loss)
            profile.step_done()
            size = _count_step(progress, batch["label"].numel(), loss, parts)
            fresh += size
            _log_step(run, loss)
            shown.update(size)
            if stop(progress.step):
                break
    finally:
        shown.close()
    return fresh


def _update(run: "Run", loss: torch.Tensor) -> None:
    """One optimiser update from ``loss``: backward, clipping, step, schedule, EMA."""
    optimizer, progress = run.optimizer, run.progress
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.config.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.student.model.parameters(), run.config.clip_grad)
    optimizer.step()
    progress.updates += 1
    run.scheduler.step_update(progress.updates)
    if run.student.ema is not None:
        run.student.ema.update(run.student.net, step=progress.updates)


def _log_step(run: "Run", loss: torch.Tensor) -> None:
    """Every few updates, the loss and learning rate to TensorBoard (rank 0 with a writer)."""
    log = run.log
    if log is not None and log.writer is not None and run.progress.updates % _STEP_LOG_EVERY == 0:
        lr = run.optimizer.param_groups[0]["lr"]
        log.add_step(run.progress.updates, {"loss": loss.item(), "lr": lr})


def _count_step(progress: Progress, size: int, loss: torch.Tensor, parts: dict) -> int:
    """Add a step of ``size`` samples to ``progress`` (loss parts summed on the device)."""
    progress.step += 1
    progress.seen += size
    for name, value in {"loss": loss.detach(), **parts}.items():
        progress.sums[name] = progress.sums.get(name, 0) + value * size
    return size
