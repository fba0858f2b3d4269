"""``kdcache shard`` and ``kdcache teach``."""

import argparse
import contextlib
import sys
from dataclasses import replace

from kdcache.pipeline.cache import catalog_root
from kdcache.pipeline.views import ViewPlan
from kdcache.tools.cli.arg_types import key_value
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
    parser = commands.add_parser(
        "shard",
        help="write a dataset as WebDataset tar shards plus manifest.parquet",
        description="Write train and test splits as WebDataset tars (__key__, image, cls) with a "
        "fixed number of samples per shard, and manifest.parquet (row, key, shard, label, split) "
        "with the dataset fingerprint.",
    )
    parser.add_argument(
        "--source",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian package files), a folder of IDX files, "
        "or an ImageFolder root with train/ and test/ (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="output folder or URL")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="samples per tar shard; also the cache's chunk length (default: %(default)s)",
    )
    parser.add_argument("--splits", nargs="+", default=["train", "test"], help="splits to write")
    parser.add_argument(
        "--limit",
        type=_split_limit,
        action="append",
        default=[],
        metavar="SPLIT=N",
        help="keep only the first N samples of SPLIT (repeatable)",
    )
    parser.add_argument(
        "--on-bad-image",
        choices=["fail", "skip"],
        default="fail",
        help="an ImageFolder file that is unreadable or not a regular file: fail naming it, or "
        "skip it (counted, and listed in the manifest) (default: %(default)s)",
    )
    parser.add_argument(
        "--shuffle-seed",
        type=int,
        default=0,
        help="seed of an ImageFolder's class-stratified shuffled order over the shards "
        "(default: %(default)s)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing manifest")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_shard)  # fmt: skip


def run_shard(args: argparse.Namespace) -> None:
    from kdcache.pipeline.data import write_shards

    manifest = write_shards(
        args.source,
        args.out,
        shard_size=args.shard_size,
        splits=tuple(args.splits),
        limits=dict(args.limit),
        overwrite=args.overwrite,
        progress=not args.quiet,
        on_bad_image=args.on_bad_image,
        shuffle_seed=args.shuffle_seed,
    )
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
    parser = commands.add_parser(
        "teach",
        help="run teachers over the planned views and cache top-k targets (Ray job)",
        description="Run a Ray job with one unit of work per shard: decode, build V planned views, "
        "run the teacher(s), write top-k logits, class ids, logsumexp and view params into the "
        "Zarr cache, then mark the shard done. Rerunning skips done shards.",
    )
    parser.add_argument(
        "--data", required=True, help="folder holding manifest.parquet (or its path)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="cache location, created if missing (default with a catalogue: "
        "the catalogue's cache of that identity, or ROOT/caches/<identity>.zarr)",
    )
    parser.add_argument(
        "--catalog",
        default=None,
        help="catalogue root: reuse a complete cache of the same identity, record "
        "this one (default: $KDCACHE_CATALOG; none if unset)",
    )
    parser.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="teacher weights: a kdcache checkpoint, or published weights with "
        "--teacher-arch or --teacher-factory (repeatable for several teachers)",
    )
    add_teacher_arguments(parser)
    parser.add_argument(
        "--topk",
        type=int,
        default=None,
        help="logits kept per view (default: the existing cache's, else 10)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="D",
        help="also draw D class ids per view from the teacher's softmax, for sampled "
        "distillation (RS-KD; train --targets sampled) (default: the existing cache's, else 0)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        default=None,
        help="splits to cache (default: the existing cache's, else train)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=256, help="inference batch (default: %(default)s)"
    )
    parser.add_argument(
        "--block-rows",
        type=int,
        default=256,
        help="rows an actor decodes at once, rounded to whole batches; bounds its memory "
        "whatever the shard size (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray actors (default and most: as many as the cluster's nodes can hold)",
    )
    parser.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs per actor (default: 1)"
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per actor (default: 1 if the cluster has GPUs, else 0)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="inference precision on CUDA (auto: bf16); CPU runs fp32",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address, e.g. ray://head:10001 or auto (default: start a local Ray)",
    )
    parser.add_argument(
        "--only-shards",
        type=_shard_ids,
        default=None,
        metavar="IDS",
        help="process only these shard ids, e.g. 0-9,12",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="take over a run lock whose heartbeat is this old (default: 120)",
    )
    parser.add_argument(
        "--placement-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="give up on workers Ray has not placed and started by then; fail if none "
        "(default: 120)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_plan_arguments(parser, defaults_from="the existing cache's plan, else the plan defaults")
    parser.set_defaults(run=run_teach)  # fmt: skip


def run_teach(args: argparse.Namespace) -> None:
    from kdcache.pipeline.cache import CacheStore
    from kdcache.pipeline.teach import TeachConfig, TeachFailed, run_teach

    teachers = teacher_sources(args)
    existing = None
    if args.cache is not None:
        with contextlib.suppress(FileNotFoundError):
            existing = CacheStore.open(args.cache)
    if existing is not None:  # unset options default to the existing cache's
        plan = replace(existing.plan, **plan_overrides(args))
        topk, splits = args.topk or existing.topk, args.splits or existing.attrs["splits"]
        samples = existing.samples if args.samples is None else args.samples
    else:
        plan = ViewPlan(**plan_overrides(args))
        topk, splits = args.topk or 10, args.splits or ["train"]
        samples = args.samples or 0
    config = TeachConfig(
        manifest=args.data,
        cache=args.cache,
        teachers=teachers,
        plan=plan,
        topk=topk,
        samples=samples,
        splits=splits,
        batch_size=args.batch_size,
        block_rows=args.block_rows,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        precision=args.precision,
        address=args.address,
        only_shards=args.only_shards,
        catalog=catalog_root(args.catalog),
        lock_stale_after=args.lock_timeout,
        placement_timeout=args.placement_timeout,
        progress=not args.quiet,
    )
    try:
        summary = run_teach(config)
    except TeachFailed as error:
        print(error, file=sys.stderr)
        raise SystemExit(1) from None
    print("\n".join(summary.lines()))


def add_catalog_parser(commands) -> None:
    parser = commands.add_parser(
        "catalog",
        help="list the caches of a catalogue, with filters",
        description="List the catalogue's caches, one row per (cache, teacher): identity, "
        "dataset fingerprint, teacher and weights hash, plan, K, completeness, size. The table "
        "is ROOT/catalog/*.parquet, readable by pandas, pyarrow or duckdb.",
    )
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
    parser.set_defaults(run=run_catalog)


def run_catalog(args: argparse.Namespace) -> None:
    import json

    from kdcache.pipeline.cache import Catalog
    from kdcache.pipeline.data import Manifest

    root = catalog_root(args.catalog)
    if root is None:
        raise ValueError("no catalogue: pass --catalog ROOT or set $KDCACHE_CATALOG")
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
               "complete", "bytes", "cache")  # fmt: skip
    widths = {"identity": 12, "fingerprint": 12}
    print("  ".join(c[: widths.get(c, 40)] for c in columns))
    for row in rows:
        print("  ".join(str(row[c])[: widths.get(c, 200)] for c in columns))
    print(f"catalog: {len(rows)} entries in {root}")
