"""The ``kdcache`` command."""

import argparse
import os
import sys

from kdcache import __version__
from kdcache.errors import KdcacheError
from kdcache.pipeline.data import storage
from kdcache.tools.bench.inspect_scale import add_bench_inspect_parser
from kdcache.tools.bench.kd_objectives import add_bench_kd_parser
from kdcache.tools.bench.mixing_accuracy import add_bench_mixing_parser
from kdcache.tools.bench.replay_cost import add_bench_replay_parser
from kdcache.tools.bench.scale import add_bench_scale_parser
from kdcache.tools.bench.target_reads import add_bench_reads_parser
from kdcache.tools.bench.teach_speed import add_bench_parser
from kdcache.tools.bench.train_speed import add_bench_train_parser
from kdcache.tools.bench.versus_timm import add_bench_timm_parser
from kdcache.tools.bench.view_quality import add_bench_quality_parser
from kdcache.tools.cli.arg_types import command_parser
from kdcache.tools.cli.cache_commands import add_inspect_parser, add_verify_parser
from kdcache.tools.cli.config_options import flag_of
from kdcache.tools.cli.data_commands import add_catalog_parser, add_shard_parser, add_teach_parser
from kdcache.tools.cli.index_command import add_index_parser
from kdcache.tools.cli.train_command import add_train_parser
from kdcache.tools.demo import add_demo_parser
from kdcache.tools.plot_runs import add_plot_parser


def build_parser() -> argparse.ArgumentParser:
    """The ``kdcache`` command's parser."""
    return _parser_and_commands()[0]


def command_names() -> list[str]:
    """Every command's name, in the order ``kdcache --help`` lists them."""
    return list(_parser_and_commands()[1].choices)


def _parser_and_commands() -> tuple[argparse.ArgumentParser, argparse.Action]:
    parser = argparse.ArgumentParser(
        prog="kdcache",
        description="Cache teacher outputs once on replayable augmented views, then distil "
        "students from the cache at the cost of plain training.",
    )
    parser.add_argument("--version", action="version", version=f"kdcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_shard_parser(commands)
    add_index_parser(commands)
    add_teach_parser(commands)
    add_train_parser(commands)
    add_catalog_parser(commands)
    add_inspect_parser(commands)
    add_verify_parser(commands)
    add_plot_parser(commands)
    add_demo_parser(commands)
    _add_bench_parsers(commands)
    return parser, commands


def _add_bench_parsers(commands) -> None:
    """``kdcache bench NAME``: benchmarks: side-by-side ratios against timm, raw model(x) and plain
    training.

    Run one benchmark; each saves its full config and JSON results.
    """
    bench = command_parser(commands, "bench", _add_bench_parsers.__doc__)
    benches = bench.add_subparsers(dest="benchmark", required=True, metavar="NAME")
    add_bench_parser(benches)
    add_bench_train_parser(benches)
    add_bench_kd_parser(benches)
    add_bench_replay_parser(benches)
    add_bench_reads_parser(benches)
    add_bench_mixing_parser(benches)
    add_bench_timm_parser(benches)
    add_bench_quality_parser(benches)
    add_bench_scale_parser(benches)
    add_bench_inspect_parser(benches)


# OSError: unwritable or full disks, missing files, refused connections (with the path)
USER_ERRORS = (KdcacheError, OSError, ValueError)
STORE_CLIENTS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "aiohttp")


def _is_store_error(error: BaseException) -> bool:
    """An object store's client refused the request (credentials, endpoint, bucket)."""
    return type(error).__module__.split(".")[0] in STORE_CLIENTS


def main(argv: list[str] | None = None) -> None:
    """Run one command; a user error is one line on stderr and exit 2 (``KDCACHE_DEBUG=1``:
    the traceback too)."""
    parser, commands = _parser_and_commands()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's usage, not the top level's
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.run(args)
    except Exception as error:
        if os.environ.get("KDCACHE_DEBUG") == "1" or not (
            isinstance(error, USER_ERRORS) or _is_store_error(error)
        ):
            raise
        message = storage.scrub(
            " ".join(str(error).split()), getattr(args, "storage_options", None)
        )  # one line, no secrets
        if _is_store_error(error):
            message = f"object store: {type(error).__name__}: {message} (check the endpoint and credentials)"
        flag = flag_of(args, getattr(error, "field", None))
        if flag is not None and flag not in message:
            message += f" (option {flag})"
        command = " ".join(filter(None, (args.command, getattr(args, "benchmark", None))))
        print(f"kdcache {command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
