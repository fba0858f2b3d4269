"""Checkpoint and resume: the whole training state, saved after every epoch and on SIGTERM.

``RUN/resume.pth`` holds the model, optimiser and EMA weights, the RNG state, where the run is
(epoch, batches done in it, optimiser updates), the epoch's loss sums so far and the finished
epochs' metrics rows, plus the run's config. ``--resume`` loads it and continues exactly: the
schedule from the update count, the data order from (seed, epoch) by skipping the batches
already trained on, the view schedule from the epoch. It refuses a state whose config differs
in anything but the fields in :data:`FREE_FIELDS`.
"""

import io
import pickle
import signal
import threading
from dataclasses import asdict, dataclass, field

import torch

from kdcache.errors import RunStateError
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
    """Read a resumable state, checking it was made by a run with the same config.

    The file is read as tensors and plain containers only (``weights_only=True``): a pickle
    that names any other object is refused, never run."""
    if not urls.exists(path):
        raise FileNotFoundError(
            f"{path}: no resumable state (resuming needs a run folder that holds one)"
        )
    with storage.open_file(path, "rb") as f:
        payload = f.read()
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunStateError(
            f"{path}: not a resumable state of tensors and plain values ({reason[:200]})"
        ) from None
    _check_layout(path, state)
    saved = state["config"]
    for name in sorted(set(saved) | set(config)):
        if name not in FREE_FIELDS and saved.get(name) != config.get(name):
            raise RunStateError(
                f"{path}: saved run has {name}={saved.get(name)!r}, this run "
                f"{config.get(name)!r}; resume with the same options"
            )
    return state


# what a state holds (besides extras such as the feature adapters), by type
_STATE_FIELDS = {"config": dict, "model": dict, "optimizer": dict, "progress": dict, "rng": dict}
_PROGRESS_FIELDS = {"epoch": int, "step": int, "updates": int, "sums": dict, "seen": int,
                    "rows": list}  # fmt: skip


def _check_layout(path: str, state) -> None:
    """Refuse a state that lacks a field or holds one of the wrong type, naming it."""
    if not isinstance(state, dict):
        raise RunStateError(f"{path}: holds a {type(state).__name__}, expected a dict of state")
    if state.get("format") != RESUME_FORMAT:
        raise RunStateError(f"{path}: format {state.get('format')!r}, expected {RESUME_FORMAT!r}")
    for where, fields, holder in (("", _STATE_FIELDS, state),
                                  ("progress.", _PROGRESS_FIELDS, state.get("progress"))):  # fmt: skip
        for name, kind in fields.items():
            value = holder.get(name) if isinstance(holder, dict) else None
            if not isinstance(value, kind) or isinstance(value, bool):
                raise RunStateError(
                    f"{path}: field {where}{name} is {type(value).__name__}, "
                    f"expected {kind.__name__}"
                )
    sums = state["progress"]["sums"]
    if not all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in sums.values()):
        raise RunStateError(f"{path}: field progress.sums must map names to scalar tensors")
    if not isinstance(state["rng"].get("torch"), torch.Tensor):
        raise RunStateError(f"{path}: field rng.torch is not a tensor")


def restore_rng(state: dict) -> None:
    try:
        torch.set_rng_state(state["rng"]["torch"])
    except (RuntimeError, TypeError) as error:
        raise RunStateError(f"field rng.torch is not a generator state ({error})") from None
    if state["rng"].get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def rank_progress(progress: Progress) -> dict:
    """This rank's part of an epoch under way: its loss sums and images so far."""
    return {"sums": {k: v.detach().cpu() for k, v in progress.sums.items()}, "seen": progress.seen}


def progress_from(state: dict, device: torch.device, rank: int = 0, ranks: int = 1) -> Progress:
    """Where the saved run was; under DDP each rank takes its own partial loss sums (saved by
    rank in ``rank_progress``), so the epoch's metrics sum every rank's part once."""
    values = {name: state["progress"][name] for name in _PROGRESS_FIELDS}
    saved = state.get("rank_progress")
    if saved is not None or ranks > 1:
        if not isinstance(saved, list) or len(saved) != ranks:
            found = len(saved) if isinstance(saved, list) else 1
            raise RunStateError(
                f"field rank_progress: the state was saved by {found} process(es), this run "
                f"has {ranks}; resume with as many"
            )
        values |= _checked_part(saved[rank], rank)
    values["sums"] = {name: value.to(device) for name, value in values["sums"].items()}
    return Progress(**values)


def _checked_part(part, rank: int) -> dict:
    """A rank's saved part, refused unless it holds scalar tensor sums and an image count."""
    sums = part.get("sums") if isinstance(part, dict) else None
    seen = part.get("seen") if isinstance(part, dict) else None
    scalars = isinstance(sums, dict) and all(
        isinstance(v, torch.Tensor) and v.numel() == 1 for v in sums.values()
    )
    if not scalars or not isinstance(seen, int) or isinstance(seen, bool):
        raise RunStateError(
            f"field rank_progress[{rank}]: expected loss sums (scalar tensors) and an image count"
        )
    return {"sums": sums, "seen": seen}


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
