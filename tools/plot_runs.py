"""``kdcache plot RUN... --out curves.png``: training curves of several runs side by side.

Read RUN/metrics.csv of each run and draw one panel per metric, a line per run.
"""

import argparse
import csv
import os

from kdcache.errors import ConfigError
from kdcache.tools.cli.arg_types import command_parser

# (column of metrics.csv, panel title); a panel is drawn when some run has its column
PANELS = (
    ("test_acc", "test accuracy (%)"),
    ("test_ema_acc", "test accuracy, EMA weights (%)"),
    ("train_loss", "train loss"),
    ("train_kd", "train distillation term"),
    ("train_ce", "train label term"),
    ("train_images_per_s", "train images/s"),
)


def read_metrics(run: str) -> list[dict[str, float]]:
    """A run folder's ``metrics.csv`` rows as numbers."""
    path = os.path.join(run, "metrics.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no metrics (is {run} a kdcache train --out folder?)")
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_runs(runs: list[str], out: str, labels: list[str] | None = None) -> list[str]:
    """Draw one panel per metric with a line per run; returns the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(runs):
        raise ConfigError(f"--label given {len(labels)} times for {len(runs)} runs")
    names = labels or [os.path.basename(os.path.normpath(run)) for run in runs]
    metrics = {name: read_metrics(run) for name, run in zip(names, runs, strict=True)}
    panels = [(c, t) for c, t in PANELS if any(c in rows[0] for rows in metrics.values() if rows)]
    columns = min(3, len(panels))
    rows_needed = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows_needed, columns, figsize=(4.5 * columns, 3.2 * rows_needed), squeeze=False
    )
    for axis, (column, title) in zip(axes.flat, panels, strict=False):
        for name, rows in metrics.items():
            points = [(r["epoch"], r[column]) for r in rows if column in r]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=name)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return [column for column, _ in panels]


def add_plot_parser(commands) -> None:
    parser = command_parser(commands, "plot", __doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="kdcache train --out folders")
    parser.add_argument("--out", default="runs.png", help="PNG to write (default: runs.png)")
    parser.add_argument(
        "--label", action="append", default=None, help="legend name per run, in order"
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    panels = plot_runs(args.runs, args.out, args.label)
    print(f"plot: {len(args.runs)} runs, panels {', '.join(panels)} -> {args.out}")
