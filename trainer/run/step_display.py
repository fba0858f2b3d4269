"""Progress within an epoch: a tqdm bar on a terminal, else plain lines for files and pipes.

A log written to a file or piped (a cluster job, ``train | tail``) gets one line every
``total // LINES`` steps with the rate and the time left, and never a carriage return.
"""

import sys
import time

from tqdm import tqdm

LINES = 10  # lines per epoch when not on a terminal


class StepDisplay:
    """Shows ``steps`` done of ``total`` in epoch ``epoch`` (from ``initial``, after a resume)."""

    def __init__(self, epoch: int, total: int, initial: int, show: bool, stream=None):
        self.stream = stream or sys.stderr
        self.tty = show and self.stream.isatty()
        self.show, self.epoch, self.total, self.done = show, epoch, total, initial
        self.every = max(1, total // LINES)
        self.began, self.first, self.images = time.perf_counter(), initial, 0
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch}", leave=False,
                        disable=not self.tty, file=self.stream)  # fmt: skip

    def update(self, images: int) -> None:
        """One step of ``images`` samples done."""
        self.done += 1
        self.images += images
        self.bar.update()
        if self.show and not self.tty and (self.done % self.every == 0 or self.done == self.total):
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        """``epoch E: step S/T, R img/s, ETA mm:ss``."""
        seconds = max(time.perf_counter() - self.began, 1e-9)
        steps = self.done - self.first
        left = (self.total - self.done) * seconds / max(steps, 1)
        return (
            f"epoch {self.epoch}: step {self.done}/{self.total}, "
            f"{self.images / seconds:.1f} img/s, ETA {int(left) // 60}:{int(left) % 60:02d}"
        )

    def close(self) -> None:
        self.bar.close()
