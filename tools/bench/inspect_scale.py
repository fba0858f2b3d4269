"""``kdcache bench inspect``: the time and peak memory of ``kdcache inspect`` as a cache grows.

Make synthetic manifests and complete caches of the given row counts (once, in --work), then
time kdcache inspect on each in a fresh process.

For each row count a synthetic manifest (shards of ``--shard-size`` rows, their files not
written: inspect reads labels and the cache, never the tars) and a complete synthetic cache
of it (random top-k targets written by the store itself) are made once in the work folder;
then ``kdcache inspect`` runs in a fresh process per size: wall and CPU time of the command,
peak RSS of that process, and that peak above its start-up (``VmHWM`` in the child, restarted
after its imports: a child's ``ru_maxrss`` carries the parent's peak, e.g. of making a cache).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

from kdcache.tools.bench.harness import write_json
from kdcache.tools.cli.arg_types import command_parser

SAMPLE_BYTES = 2048  # a small JPEG's tar member, declared for each synthetic shard file

RUN = """
import json, sys, time
from kdcache.tools.bench.peak_memory import restart_peak, status
from kdcache.tools.cli.main import main
start = restart_peak()  # this process's own peak (ru_maxrss would carry its parent's)
began, cpu = time.perf_counter(), time.process_time()
main(sys.argv[1:])
seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
peak = status("VmHWM")
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak": peak, "above_start": peak - start}),
      file=sys.stderr)
"""


def synthetic_manifest(folder: str, rows: int, shard_size: int, classes: int = 100):
    """A manifest of ``rows`` train rows in shards of ``shard_size`` (files named, not written:
    their sizes and hashes are given)."""
    import pyarrow as pa

    from kdcache.pipeline.data import Manifest, ShardInfo
    from kdcache.pipeline.data.manifest import write_manifest

    os.makedirs(folder, exist_ok=True)
    count = -(-rows // shard_size)
    sizes = [min(shard_size, rows - i * shard_size) for i in range(count)]
    shards = [ShardInfo(i, f"shards/train-{i:06d}.tar", "train", n, n * SAMPLE_BYTES,
                        hashlib.sha256(str(i).encode()).hexdigest())
              for i, n in enumerate(sizes)]  # fmt: skip
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table({
        "row": ids, "key": pa.array(ids.astype(str)), "shard": (ids // shard_size).astype(np.int32),
        "label": (ids % classes).astype(np.int32), "split": pa.array(["train"] * rows),
        "height": np.full(rows, 28, np.int32), "width": np.full(rows, 28, np.int32),
        "sha1": pa.array(["0" * 40] * rows),
    })  # fmt: skip
    location = os.path.join(folder, "manifest.parquet")
    write_manifest(location, table, dataset="synthetic", classes=[str(c) for c in range(classes)],
                   channels=1, shard_size=shard_size, shards=shards, pixel_mean=[0.5],
                   pixel_std=[0.25])  # fmt: skip
    return Manifest.read(location)


def _cache(work: str, rows: int, args) -> str:
    """The synthetic manifest and complete cache of ``rows`` rows (made once)."""
    from kdcache.tools.bench.target_reads import synthetic_cache

    folder = os.path.join(work, f"rows-{rows}")
    cache = os.path.join(folder, "cache.zarr")
    if not os.path.exists(os.path.join(cache, "zarr.json")):
        manifest = synthetic_manifest(os.path.join(folder, "data"), rows, args.shard_size)
        synthetic_cache(cache, manifest, args.views, args.topk, "fp16")
    return cache


def measure(cache: str) -> dict:
    """``kdcache inspect CACHE --json`` in a fresh process: seconds and peak RSS."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", RUN, "inspect", cache, "--json"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    figures = json.loads(result.stderr.strip().splitlines()[-1])
    report = json.loads(result.stdout)
    return {**figures, "wall": time.perf_counter() - began,
            "shards_done": report["teachers"]["t"]["shards_done"]}  # fmt: skip


def add_bench_inspect_parser(commands) -> None:
    parser = command_parser(commands, "inspect", __doc__)
    parser.add_argument("--work", default="bench-inspect", help="folder for the caches")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shard-size", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=4, help="default: %(default)s")
    parser.add_argument("--topk", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.set_defaults(run=run_bench_inspect)


def run_bench_inspect(args: argparse.Namespace) -> None:
    results = {}
    print(f"{'rows':>10}{'shards':>8}{'inspect s':>11}{'cpu s':>8}{'peak MiB':>10}"
          f"{'above start':>13}")  # fmt: skip
    for rows in args.rows:
        results[rows] = measure(_cache(args.work, rows, args))
        r = results[rows]
        print(f"{rows:>10}{r['shards_done']:>8}{r['seconds']:>11.1f}{r['cpu']:>8.1f}"
              f"{r['peak'] / 2**20:>10.0f}{r['above_start'] / 2**20:>13.0f}")  # fmt: skip
    config = {k: v for k, v in vars(args).items() if k != "run"}
    write_json(args.json, {"config": config, "results": results})
