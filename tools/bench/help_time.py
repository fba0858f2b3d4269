"""How long ``kdcache --help`` and every ``kdcache CMD --help`` take, against
``python -c "import torch"`` timed in the same run (fresh interpreters, interleaved, repeated).

``python -m kdcache.tools.bench.help_time [--repeats 5] [--json FILE]``
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_TORCH = [sys.executable, "-c", "import torch"]


def _commands() -> list[str]:
    from kdcache.tools.cli.main import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def _seconds(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def measure(repeats: int) -> dict:
    """Per mode: every repeat, the median and the range; modes run round-robin after a warm-up
    round (so file caches are warm for all alike)."""
    modes = {"import torch": _TORCH, "kdcache --help": [sys.executable, "-m", "kdcache", "--help"]}
    for name in _commands():
        modes[f"kdcache {name} --help"] = [sys.executable, "-m", "kdcache", name, "--help"]
    for argv in modes.values():
        _seconds(argv)
    runs: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(repeats):
        for name, argv in modes.items():
            runs[name].append(_seconds(argv))
    torch_median = statistics.median(runs["import torch"])
    return {
        "config": {"repeats": repeats, "python": platform.python_version(),
                   "machine": platform.machine(), "cpus": os.cpu_count()},
        "modes": {
            name: {"seconds": times, "median": statistics.median(times), "min": min(times),
                   "max": max(times), "of_import_torch": statistics.median(times) / torch_median}
            for name, times in runs.items()
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds over all modes")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    report = measure(args.repeats)
    for name, mode in report["modes"].items():
        print(f"{name:32s} {mode['median']:.3f} s (min {mode['min']:.3f}, max {mode['max']:.3f})"
              f"  {mode['of_import_torch']:.3f} of import torch")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
