"""``kdcache bench reads``: one epoch of target reads, format 1 vs 2, from local disk and a
moto S3 server.

Write synthetic caches (format 1, format 2 fp16 and q8) of a Fashion-MNIST slice, then read one
view per sample for an epoch, as the trainer does, from local disk and, with --s3, from a moto
S3 server on 127.0.0.1: views/s, requests and bytes.

The caches hold synthetic top-k targets written by the store itself (reads do not depend on
the values); the format-1 cache is the same arrays with format 1's chunks (shard, 1, K) and
compressor. Every read goes through a counting store wrapper: per mode, views/s, requests and
bytes fetched for one view per sample (the ``cycle`` schedule's epoch).
"""

import argparse
import logging
import os
import time

from kdcache.tools.bench.bench_data import bench_manifest
from kdcache.tools.bench.harness import (
    Mode,
    Session,
    add_common_options,
    fresh,
    interleave,
    shown,
    work_folder,
    write_json,
)
from kdcache.tools.cli.arg_types import command_parser

TEACHER = {"name": "t", "arch": "synthetic", "weights_sha256": "0" * 64, "model_args": {},
           "preprocessing": {}}  # fmt: skip


def synthetic_cache(location: str, manifest, views: int, topk: int, target_dtype: str, seed=0):
    """A complete format-2 cache of the train split with random teacher logits."""
    import numpy as np
    import torch

    from kdcache.pipeline.cache import CacheStore, ShardTargets, index_dtype, reduce_logits
    from kdcache.pipeline.views import ViewPlan

    plan = ViewPlan(seed=1, views=views)
    store = CacheStore.create(location, manifest=manifest, plan=plan, topk=topk,
                              splits=["train"], target_dtype=target_dtype)  # fmt: skip
    store.add_teacher({**TEACHER, "num_classes": manifest.num_classes})
    rng = np.random.default_rng(seed)
    for shard in manifest.shards_of("train"):
        logits = torch.from_numpy(rng.normal(0, 3, (shard.num_rows, views, manifest.num_classes)))
        values, index, lse = reduce_logits(logits, topk)
        block = ShardTargets(
            params=plan.shard_params(manifest, shard),
            topk_logits=values.numpy().astype(np.float16),
            topk_index=index.numpy().astype(index_dtype(manifest.num_classes)),
            logsumexp=lse.numpy().astype(np.float32),
        )
        store.write_shard("t", shard, list(range(views)), block)
    store.publish_views(views, [s.id for s in manifest.shards_of("train")])
    return CacheStore.open(location)


def format1_copy(store, location: str) -> str:
    """The fp16 cache ``store`` rewritten as format ``kdcache/1`` (docs/format.md's chunks: one object
    per (shard, view), Blosc-zstd) at ``location``, with the same values and attrs."""
    import zarr
    from zarr.codecs import BloscCodec

    blosc = (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),)
    old = zarr.open_group(location, mode="w")
    teachers = old.create_group("teachers")
    pairs = [(old, store.group)]
    for name in store.teacher_names:
        pairs.append((teachers.create_group(name), store.group["teachers"][name]))
        pairs[-1][0].attrs.update(store.teacher_identity(name))
    for group, source in pairs:
        for name in source.array_keys():
            values = source[name][:]
            rows = 1 if name.startswith("shard_") else store.shard_size
            group.create_array(name, shape=values.shape, dtype=values.dtype,
                               chunks=(rows, 1, *values.shape[2:]), compressors=blosc,
                               fill_value=source[name].fill_value)[...] = values  # fmt: skip
    attrs = {k: v for k, v in store.attrs.items() if k not in ("layout", "identity_sha256")}
    old.attrs.update({**attrs, "format": "kdcache/1"})
    return location


def counting_store(location: str, storage_options: dict | None = None):
    """A zarr store at ``location`` (a path or an s3:// URL) whose reads are counted."""
    from zarr.storage import FsspecStore, LocalStore, WrapperStore

    class Counting(WrapperStore):
        requests = 0
        bytes = 0

        async def get(self, key, prototype, byte_range=None):
            value = await self._store.get(key, prototype, byte_range)
            self.requests += 1
            self.bytes += 0 if value is None else len(value)
            return value

    if "://" in location:
        inner = FsspecStore.from_url(location, storage_options=storage_options, read_only=True)
    else:
        inner = LocalStore(location, read_only=True)
    return Counting(inner)


def epoch_reads(location: str, manifest, view: int, whole: bool, options=None) -> dict:
    """One epoch of reads (every train shard, view ``view`` of every sample): views/s,
    requests and bytes. ``whole``: the shard's whole block (what the format-1 trainer read)."""
    import zarr

    from kdcache.pipeline.cache import CacheStore

    counting = counting_store(location, options)
    store = CacheStore(location, zarr.open_group(counting, mode="r"))
    shards = manifest.shards_of("train")
    store.read_views("t", shards[0], [view])  # array metadata and the checksum ledger: once
    counting.requests = counting.bytes = 0
    began = time.perf_counter()
    for shard in shards:
        if whole:
            store.read_verified("t", shard)
        else:
            store.read_views("t", shard, [view])
    seconds = time.perf_counter() - began
    rows = sum(s.num_rows for s in shards)
    return {"views_per_s": rows / seconds, "requests": counting.requests,
            "mbytes": counting.bytes / 1e6}  # fmt: skip


def moto_server():
    """A moto S3 server on 127.0.0.1 (a free port) and fsspec options for it; None without moto."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "bench", "secret": "bench",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}"}}  # fmt: skip
    return server, options


def run_bench(out: str, args: argparse.Namespace) -> dict:
    """The caches built in ``out`` (and uploaded to moto with ``args.s3``), then every mode."""
    session = Session.start("bench-reads", args)
    out = work_folder(out, "bench-reads", session.options)
    manifest = bench_manifest(os.path.join(out, "data"), "fashion-mnist", args.images, 0,
                              args.shard_size)  # fmt: skip
    fp16 = synthetic_cache(fresh(os.path.join(out, "fp16.zarr")), manifest, args.views,
                           args.topk, "fp16")  # fmt: skip
    caches = {
        "format 1": format1_copy(fp16, fresh(os.path.join(out, "format1.zarr"))),
        "format 2 fp16": fp16.location,
        "format 2 q8": synthetic_cache(fresh(os.path.join(out, "q8.zarr")), manifest,
                                       args.views, args.topk, "q8").location,
    }  # fmt: skip
    places = {"local": (caches, None)}
    server = moto_server() if args.s3 else None
    if server is not None:
        import fsspec

        fs = fsspec.filesystem("s3", **server[1])
        fs.mkdir("bench")
        remote = {}
        for label, location in caches.items():
            url = f"s3://bench/{os.path.basename(location)}"
            fs.put(location, url, recursive=True)
            remote[label] = url
        places["s3 (moto)"] = (remote, server[1])
    modes = []
    for place, (located, options) in places.items():
        for label, location in located.items():
            reads = [(f"{place}, {label}, used view", False)]
            if label == "format 1":
                reads.insert(0, (f"{place}, format 1, whole blocks (format-1 trainer)", True))
            for name, whole in reads:
                modes.append(Mode(name, lambda r, loc=location, w=whole, o=options:
                                  epoch_reads(loc, manifest, max(r, 0) % args.views, w, o)))  # fmt: skip
    measured = interleave(modes, args.repeats, args.warmup, log=lambda _: None)
    if server is not None:
        server[0].stop()
    details = {"images": args.images, "shard_size": args.shard_size, "views": args.views,
               "topk": args.topk, "work": out}  # fmt: skip
    report = session.report(details, measured)
    write_json(os.path.join(out, "bench.json"), report)
    return report


def format_table(report: dict) -> str:
    lines = ["| reads | views/s | requests | MB |", "|---|---|---|---|"]
    for name, figures in report["modes"].items():
        lines.append(f"| {name} | {shown(figures['views_per_s'], 0)} | "
                     f"{figures['requests']['median']:.0f} | {shown(figures['mbytes'], 3)} |")  # fmt: skip
    return "\n".join(lines)


def add_bench_reads_parser(commands) -> None:
    parser = command_parser(commands, "reads", __doc__)
    add_common_options(parser, work="shards, caches and bench.json", with_threads=False)
    parser.add_argument("--images", type=int, default=10000, help="default: %(default)s")
    parser.add_argument("--shard-size", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--views", type=int, default=8, help="default: %(default)s")
    parser.add_argument("--topk", type=int, default=10, help="default: %(default)s")
    parser.add_argument("--s3", action="store_true", help="also from a moto S3 server")
    parser.set_defaults(run=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> None:
    report = run_bench(args.work, args)
    print(format_table(report))
    print(f"bench-reads: report written to {os.path.join(report['config']['work'], 'bench.json')}")
    write_json(args.json, report)
