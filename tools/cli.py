"""The ``kdcache`` command."""

import argparse
import sys

import pipeline
from pipeline.cli import add_catalog_parser, add_shard_parser, add_teach_parser
from pipeline.run_lock import CacheBusy
from tools.bench_kd import add_bench_kd_parser
from tools.bench_mixing import add_bench_mixing_parser
from tools.bench_replay import add_bench_replay_parser
from tools.bench_teach import add_bench_parser
from tools.bench_train import add_bench_train_parser
from tools.demo import add_demo_parser
from tools.inspect_cache import add_inspect_parser
from tools.plot_runs import add_plot_parser
from tools.verify_cache import add_verify_parser
from trainer.cli import add_train_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdcache",
        description="Cache teacher outputs once on replayable augmented views, then distil "
        "students from the cache at the cost of plain training.",
    )
    parser.add_argument("--version", action="version", version=f"kdcache {pipeline.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_shard_parser(commands)
    add_teach_parser(commands)
    add_train_parser(commands)
    add_catalog_parser(commands)
    add_inspect_parser(commands)
    add_verify_parser(commands)
    add_plot_parser(commands)
    add_demo_parser(commands)
    add_bench_parser(commands)
    add_bench_train_parser(commands)
    add_bench_kd_parser(commands)
    add_bench_replay_parser(commands)
    add_bench_mixing_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (FileNotFoundError, FileExistsError, ValueError, CacheBusy) as error:
        print(f"kdcache {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
