"""Run one command many times and count abnormal exits (signals, aborts such as exit 134).

``python -m kdcache.tools.repeat_runs --runs 300 -- kdcache shard --out /tmp/x --limit train=200``
prints a histogram of exit codes and exits 1 if any run ended abnormally (killed by a signal,
or exit 134 / 139 from an abort or a segfault at interpreter shutdown).
"""

import argparse
import collections
import subprocess
import sys
import time

ABNORMAL = {134, 139}


def repeat(command: list[str], runs: int) -> collections.Counter:
    """Exit codes of ``runs`` runs of ``command`` (negative for a signal)."""
    codes: collections.Counter = collections.Counter()
    start = time.perf_counter()
    for i in range(runs):
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        codes[done.returncode] += 1
        if done.returncode < 0 or done.returncode in ABNORMAL:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            print(f"run {i + 1}: exit {done.returncode} {tail}", file=sys.stderr)
        if (i + 1) % 25 == 0:
            print(f"{i + 1}/{runs} runs, {time.perf_counter() - start:.0f} s, exits {dict(codes)}")
    return codes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    codes = repeat(command, args.runs)
    abnormal = sum(n for code, n in codes.items() if code < 0 or code in ABNORMAL)
    print(f"{args.runs} runs of {' '.join(command)}: exit codes {dict(codes)}, abnormal {abnormal}")
    return 1 if abnormal else 0


if __name__ == "__main__":
    sys.exit(main())
