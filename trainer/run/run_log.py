"""A run's metrics: one ``metrics.csv`` row per epoch, and the same scalars in TensorBoard."""

import csv
import io
import os

from kdcache.pipeline.data import urls


class RunLog:
    """Writes ``RUN/metrics.csv`` (rewritten whole each epoch) and, optionally, TensorBoard
    event files under ``RUN/tensorboard`` (``tensorboard --logdir RUN``)."""

    def __init__(self, out: str, *, tensorboard: bool, rows: list[dict] | None = None):
        self.path = os.path.join(out, "metrics.csv")
        self.rows = list(rows or [])
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(out, "tensorboard"))

    def add_epoch(self, row: dict) -> None:
        """Record a finished epoch's row (keys: ``epoch``, ``train_*``, ``test_*``, ...)."""
        self.rows.append(row)
        names = list(dict.fromkeys(name for r in self.rows for name in r))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=names)
        writer.writeheader()
        writer.writerows(self.rows)
        urls.write_bytes(self.path, text.getvalue().encode())  # whole, or the old file stays
        if self.writer is not None:
            for name, value in row.items():
                if name != "epoch":
                    group, _, metric = name.partition("_")
                    self.writer.add_scalar(f"{group}/{metric or group}", value, row["epoch"])
            self.writer.flush()

    def add_step(self, updates: int, values: dict[str, float]) -> None:
        """Per-step scalars (loss, learning rate) for TensorBoard only."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"step/{name}", value, updates)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
