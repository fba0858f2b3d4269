"""How long ``kdcache --help`` and every ``kdcache CMD --help`` take, against
``python -c "import torch"`` timed in the same run: fresh interpreters, modes interleaved after
a warm-up round, repeated (the shared harness).

``python -m kdcache.tools.bench.help_time [--repeats 5] [--json FILE]``
"""

import argparse
import subprocess
import sys
import time

from kdcache.tools.bench.harness import Mode, Session, interleave, ratio, shown, write_json

_TORCH = "import torch"


def _timed(argv: list[str]):
    def run(_repeat: int) -> dict[str, float]:
        began = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return {"seconds": time.perf_counter() - began}

    return run


def measure(repeats: int, warmup: int) -> dict:
    """Per mode, the seconds of every run and their ratio to ``import torch`` (per round)."""
    from kdcache.tools.cli.main import command_names

    argvs = {_TORCH: [sys.executable, "-c", _TORCH],
             "kdcache --help": [sys.executable, "-m", "kdcache", "--help"]}  # fmt: skip
    for name in command_names():
        argvs[f"kdcache {name} --help"] = [sys.executable, "-m", "kdcache", name, "--help"]
    modes = [Mode(name, _timed(argv)) for name, argv in argvs.items()]
    measured = interleave(modes, repeats, warmup, log=lambda line: None)
    torch_seconds = measured["modes"][_TORCH]["seconds"]
    measured["ratios"] = {
        name: ratio(figures["seconds"], torch_seconds)
        for name, figures in measured["modes"].items()
        if name != _TORCH
    }
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all modes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    session = Session("help-time", vars(args))
    measured = measure(args.repeats, args.warmup)
    print(f"{_TORCH:32s} {shown(measured['modes'][_TORCH]['seconds'])} s")
    for name, share in measured["ratios"].items():
        seconds = shown(measured["modes"][name]["seconds"])
        print(f"{name:32s} {seconds} s, {shown(share)} of {_TORCH} (median, min-max)")
    write_json(args.json, session.report({}, measured))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
