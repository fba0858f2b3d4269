"""``kdcache inspect`` and ``kdcache verify``: the cache's health, read and recomputed."""

import argparse
import json
from dataclasses import asdict
from functools import partial

from kdcache.pipeline.data import CacheReadConfig
from kdcache.tools.cache.verify_config import VerifyConfig
from kdcache.tools.cli.arg_types import command_parser, key_value
from kdcache.tools.cli.config_options import add_config_options


def add_inspect_parser(commands) -> None:
    """``kdcache inspect``: completeness, teacher accuracy and agreement, tail mass and bytes of a
    cache.

    Show a cache's completeness (shards done/missing), per-teacher and per-view accuracy against
    the labels, agreement between views and between teachers, the distribution of top-k and tail
    mass, bytes per view on disk and the compression ratio.
    """
    parser = command_parser(commands, "inspect", add_inspect_parser.__doc__)
    parser.add_argument("cache", help="cache location")
    parser.add_argument(
        "--data", default=None, help="manifest folder (default: the one the cache records)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--plot", default=None, metavar="PNG", help="also draw a figure to this file"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any done region is bad (checksum mismatch, missing or unreadable "
        "chunks, NaN/inf targets, a done flag without data)",
    )
    parser.add_argument(
        "--shards",
        default=None,
        metavar="IDS",
        help="inspect only these shard ids of the cache's splits, e.g. 0-9,12 (default: all)",
    )
    add_config_options(parser, CacheReadConfig)
    parser.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> None:
    from kdcache.tools.cache.inspect_cache import (
        bad_regions,
        format_report,
        inspect_cache,
        plot_report,
    )

    report = inspect_cache(
        args.cache, args.data, args.storage_options, args.allow_remote_shards, args.shards
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.plot:
        plot_report(report, args.plot)
    if args.strict and bad_regions(report):
        raise SystemExit(1)


def add_verify_parser(commands) -> None:
    """``kdcache verify``: recompute sampled views with the teacher and check every region's
    checksum.

    Check the checksum of every done (shard, view) region against its data (a failing region is
    recomputed row by row), and recompute a random sample of (row, view) with the teacher,
    reporting the largest logit difference and top-k mismatches. Exits 1 on any mismatch, naming
    shard and row.
    """
    parser = command_parser(commands, "verify", add_verify_parser.__doc__)
    parser.add_argument("cache", help="cache location")
    parser.add_argument(
        "--data", default=None, help="manifest folder (default: the one the cache records)"
    )
    parser.add_argument(
        "--samples", type=int, default=64, help="(row, view) pairs recomputed per teacher"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    parser.add_argument("--teacher", type=partial(key_value, form="NAME=PATH"), action="append", default=[],
                        metavar="NAME=PATH", help="weights of a teacher if moved since teaching")  # fmt: skip
    parser.add_argument("--allow-code", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="a teacher factory or key map the cache records that verify may "
                        "import and run (repeatable; without it such a cache is refused)")  # fmt: skip
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also rebuild --samples views in the trainer's loader and compare them with the "
        "teacher job's inputs (largest pixel difference; any difference is a problem)",
    )
    parser.add_argument(
        "--replay-tolerance",
        type=float,
        default=0.0,
        help="pixel difference allowed by --replay, e.g. across machines (default: 0, bitwise)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_options(parser, VerifyConfig)
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    from kdcache.verify_cache import verify_cache

    report = verify_cache(
        args.cache,
        args.data,
        samples=args.samples,
        seed=args.seed,
        teachers=dict(args.teacher),
        replay=args.replay,
        replay_tolerance=args.replay_tolerance,
        storage_options=args.storage_options,
        allow_code=tuple(args.allow_code),
        allow_remote_shards=args.allow_remote_shards,
        max_pixels=args.max_pixels,
    )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print("\n".join(report.lines()))
    if not report.ok:
        raise SystemExit(1)
