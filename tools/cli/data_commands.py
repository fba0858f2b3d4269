"""``kdcache shard`` and ``kdcache teach``."""

import argparse
import sys
from dataclasses import replace

from kdcache.errors import ConfigError
from kdcache.pipeline.data import ShardConfig, StorageConfig
from kdcache.pipeline.teach import TeachConfig
from kdcache.tools.cli.arg_types import command_parser, key_value
from kdcache.tools.cli.config_options import add_config_options, config_values
from kdcache.tools.cli.plan_options import add_plan_arguments, plan_overrides
from kdcache.tools.cli.teacher_options import add_teacher_arguments, teacher_sources


def _split_limit(text: str) -> tuple[str, int]:
    split, count = key_value(text, "SPLIT=N (e.g. train=5000)")
    if not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected SPLIT=N (e.g. train=5000), got {text!r}")
    return split, int(count)


def _shard_ids(text: str) -> list[int]:
    ids = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise argparse.ArgumentTypeError(f"expected ids like 0-9,12, got {text!r}")
        ids += range(int(low), int(high or low) + 1)
    return ids


def add_shard_parser(commands) -> None:
    """``kdcache shard``: write a dataset as WebDataset tar shards plus manifest.parquet.

    Write train and test splits as WebDataset tars (__key__, image, cls) with a fixed number of
    samples per shard, and manifest.parquet (row, key, shard, label, split) with the dataset
    fingerprint.
    """
    parser = command_parser(commands, "shard", add_shard_parser.__doc__)
    parser.add_argument(
        "--source",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian package files), a folder of IDX files, "
        "or an ImageFolder root with train/ and test/ (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="output folder or URL")
    add_config_options(parser, ShardConfig, parse={"limits": _split_limit})
    parser.set_defaults(run=run_shard)  # fmt: skip


def run_shard(args: argparse.Namespace) -> None:
    from kdcache.pipeline.data import write_shards

    manifest = write_shards(args.source, args.out, **config_values(ShardConfig, args))
    skipped = manifest.meta.get("skipped", [])
    if skipped:
        print(f"shard: skipped {len(skipped)} unreadable files (listed in the manifest), "
              f"e.g. {skipped[0]['path']}: {skipped[0]['error']}")  # fmt: skip
    counts = {s: sum(x.num_rows for x in manifest.shards_of(s)) for s in args.splits}
    print(
        f"shard: {len(manifest.shards)} shards ({counts}) and {manifest.location}; "
        f"fingerprint {manifest.fingerprint[:16]}"
    )


def add_teach_parser(commands) -> None:
    """``kdcache teach``: run teachers over the planned views and cache top-k targets (Ray job).

    Run a Ray job with one unit of work per shard: decode, build V planned views, run the
    teacher(s), write top-k logits, class ids, logsumexp and view params into the Zarr cache,
    then mark the shard done. Rerunning skips done shards.
    """
    parser = command_parser(commands, "teach", add_teach_parser.__doc__)
    add_config_options(parser, TeachConfig, parse={"only_shards": _shard_ids})
    parser.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="teacher weights: a kdcache checkpoint, or published weights with "
        "--teacher-arch or --teacher-factory (repeatable for several teachers)",
    )
    add_teacher_arguments(parser, per_teacher=True, location_flag="--teacher")
    add_plan_arguments(parser, defaults_from="the existing cache's plan, else the plan defaults")
    parser.set_defaults(run=run_teach)  # fmt: skip


def run_teach(args: argparse.Namespace) -> None:
    values, plan = config_values(TeachConfig, args), plan_overrides(args)
    config = TeachConfig(**values, teachers=teacher_sources(args), plan=plan)  # checked here
    from kdcache.pipeline.cache import catalog_root
    from kdcache.pipeline.data import storage
    from kdcache.pipeline.teach import TeachFailed, run_teach

    config = replace(config, catalog=catalog_root(args.catalog))

    if config.dry_run:
        from kdcache.pipeline.teach.dry_run import dry_run_report

        print(dry_run_report(config))
        return
    try:
        summary = run_teach(config)
    except TeachFailed as error:
        print(storage.scrub(str(error), args.storage_options), file=sys.stderr)
        raise SystemExit(1) from None
    print("\n".join(summary.lines()))


def add_catalog_parser(commands) -> None:
    """``kdcache catalog``: list the caches of a catalogue, with filters.

    List the catalogue's caches, one row per (cache, teacher): identity, dataset fingerprint,
    teacher and weights hash, plan, K, completeness, size. The table is ROOT/catalog/*.parquet,
    readable by pandas, pyarrow or duckdb.
    """
    parser = command_parser(commands, "catalog", add_catalog_parser.__doc__)
    parser.add_argument(
        "--catalog", default=None, help="catalogue root (default: $KDCACHE_CATALOG)"
    )
    parser.add_argument(
        "--data", default=None, help="only caches of this dataset (manifest folder)"
    )
    parser.add_argument("--teacher", default=None, help="only this teacher name or architecture")
    parser.add_argument("--plan-seed", type=int, default=None, help="only this plan seed")
    parser.add_argument("--all", action="store_true", help="include unfinished caches")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    add_config_options(parser, StorageConfig)
    parser.set_defaults(run=run_catalog)


def run_catalog(args: argparse.Namespace) -> None:
    import json

    from kdcache.pipeline.cache import Catalog, catalog_root
    from kdcache.pipeline.data import Manifest, storage

    root = catalog_root(args.catalog)
    if root is None:
        raise ConfigError("no catalogue: pass --catalog ROOT or set $KDCACHE_CATALOG")
    with storage.using(args.storage_options):
        rows = Catalog(root).find(
            fingerprint=Manifest.read(args.data).fingerprint if args.data else None,
            plan={"seed": args.plan_seed} if args.plan_seed is not None else None,
            teacher=args.teacher,
            complete=not args.all,
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    columns = ("identity", "teacher", "arch", "fingerprint", "plan_seed", "views", "topk",
               "format", "target_dtype", "complete", "bytes", "cache")  # fmt: skip
    widths = {"identity": 12, "fingerprint": 12}
    print("  ".join(c[: widths.get(c, 40)] for c in columns))
    for row in rows:
        print("  ".join(str(row[c])[: widths.get(c, 200)] for c in columns))
    print(f"catalog: {len(rows)} entries in {root}")
