"""Checkpoint and resume: the whole training state, saved after every epoch and on SIGTERM.

``RUN/resume.pth`` holds the model, optimiser and EMA weights, the RNG state, where the run is
(epoch, batches done in it, optimiser updates), the epoch's loss sums so far and the finished
epochs' metrics rows, plus the run's config. ``--resume`` loads it and continues exactly: the
schedule from the update count, the data order from (seed, epoch) by skipping the batches
already trained on, the view schedule from the epoch. It refuses a state whose config differs
in anything but the fields in :data:`FREE_FIELDS`.
"""

import io
import signal
import threading
from dataclasses import asdict, dataclass, field

import torch

from kdcache.pipeline.data import storage, urls

RESUME_FILE = "resume.pth"
RESUME_FORMAT = "kdcache-resume/1"
# options that do not change what is computed, only how it is shown or where it runs
FREE_FIELDS = frozenset(
    {"progress", "resume", "overwrite", "device", "tensorboard", "compile", "channels_last",
     "profile"}
)  # fmt: skip


class Stopped(Exception):
    """Training stopped on request (SIGTERM) after saving a resumable state."""


@dataclass
class Progress:
    """Where a run is: ``step`` batches of ``epoch`` done, ``updates`` optimiser steps in all."""

    epoch: int = 0
    step: int = 0
    updates: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    seen: int = 0
    rows: list[dict] = field(default_factory=list)


def save_state(
    path: str, *, config: dict, model, optimizer, ema, progress: Progress, extra: dict | None = None
) -> None:
    """Write the resumable state whole (temp file, then rename; :func:`urls.write_bytes`);
    ``extra``: more state by name (the feature adapters)."""
    state = {
        **(extra or {}),
        "format": RESUME_FORMAT,
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "progress": asdict(progress),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    urls.write_bytes(path, buffer.getbuffer())


def load_state(path: str, config: dict) -> dict:
    """Read a resumable state, checking it was made by a run with the same config."""
    if not urls.exists(path):
        raise FileNotFoundError(f"{path}: no resumable state (--resume needs a run folder)")
    with storage.open_file(path, "rb") as f:
        state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=False)
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path}: format {state.get('format')!r}, expected {RESUME_FORMAT!r}")
    saved = state["config"]
    for name in sorted(set(saved) | set(config)):
        if name not in FREE_FIELDS and saved.get(name) != config.get(name):
            raise ValueError(
                f"{path}: saved run has {name}={saved.get(name)!r}, this run "
                f"{config.get(name)!r}; resume with the same options"
            )
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def progress_from(state: dict, device: torch.device) -> Progress:
    values = dict(state["progress"])
    values["sums"] = {name: value.to(device) for name, value in values["sums"].items()}
    return Progress(**values)


class StopOnSignal:
    """While active, SIGTERM only sets :attr:`requested`; the loop saves and stops at a step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
