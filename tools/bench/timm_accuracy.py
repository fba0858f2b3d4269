"""``kdcache bench timm --accuracy-epochs E``: the accuracy row beside the speed table.

The same student trains for E epochs on the same replayed views, seed and budget through
timm's ``ClassificationTask`` (no KD, at the training seed and at seed + 1: the seed noise),
timm's online distillation task (the real teacher on every batch) and kdcache's cached task
(the teacher's targets from the cache), then is evaluated on the test split as ``kdcache
train`` evaluates. Meaningful with a trained teacher and its cache (``--data``, ``--cache``,
``--teacher-checkpoint``, e.g. ``kdcache demo``'s).
"""

import argparse
import math
import time

RUNS = ("none", "none, seed + 1", "online", "cached")


def accuracy_rows(args: argparse.Namespace, data: str, cache: str, checkpoint: str,
                  plan: dict | None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Per run: test accuracy (%), training images/s and the training seed."""
    from kdcache import evaluate_model
    from kdcache.tools.bench.timm_modes import TimmModes

    rows = {}
    for run in RUNS:
        mode = run.split(",")[0]
        seed = args.seed + (1 if "seed + 1" in run else 0)
        bench = TimmModes(argparse.Namespace(**{**vars(args), "seed": seed}), data, cache,
                          checkpoint, plan, modes=(mode,))  # fmt: skip
        steps = math.ceil(bench.train_images / args.batch_size)
        began, images = time.perf_counter(), 0
        for _ in range(args.accuracy_epochs * steps):
            images += bench.step(mode, next(bench.batches[mode]))
        seconds = time.perf_counter() - began
        bench.batches[mode].close()  # its DataLoader workers end here
        task, _ = bench.tasks[mode]
        task.eval()
        accuracy = evaluate_model(task.get_eval_model(), data, resolution=bench.resolution,
                                  workers=args.workers)["acc"]  # fmt: skip
        rows[run] = {"test_acc": accuracy, "images_per_s": images / seconds, "seed": seed}
        print(f"bench-timm: accuracy {run}: {accuracy:.2f} %", flush=True)
    return rows
