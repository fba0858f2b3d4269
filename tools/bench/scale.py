"""``kdcache bench scale``: time and peak memory per step as a dataset grows to ImageNet-21k.

Writes WebDataset tars of small JPEGs (1,000 per tar), indexes them in place, and extends the
manifest with synthetic shards (listing the real tars again under new keys) to each size asked;
then runs every step in a fresh process with a timeout and reports its wall time and peak RSS:
index, Manifest.read (RSS above the imports), one shard_entries pass over all shards, teach of
4 shards (--only-shards), KDLoader construction and first batch, inspect and verify.

``kdcache bench scale --sizes 10k,1M,14.2M --work DIR --json out.json``: sizes with ``k``/``M``
suffixes; sizes up to ``--real`` rows are real tars (indexed, so ``index`` is measured), larger
ones synthetic over the ``--real`` tars.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np

PER_TAR = 1000
PROBE = """
import json, sys, time
from kdcache.tools.bench.peak_memory import restart_peak, status
exec(sys.argv[2])  # the step's imports: not timed, and the base of its memory
imports = status("VmHWM") >> 20
base = restart_peak() >> 20  # the peak starts again from the RSS now
result = {}
start = time.perf_counter()
exec(sys.argv[3])
result["seconds"] = round(time.perf_counter() - start, 3)
result["peak_rss_mib"] = max(imports, status("VmHWM") >> 20)
result["above_imports_mib"] = (status("VmHWM") >> 20) - base
open(sys.argv[1], "w").write(json.dumps(result))
"""
# per step: its imports (untimed) and its work (timed), formatted with the size's locations
STEPS = {
    "index": ("from kdcache.pipeline.data import index_webdataset",
              "index_webdataset({tars!r}, {folder!r}, overwrite=True, progress=False)"),
    "manifest_read": ("from kdcache.pipeline.data import Manifest",
                      "Manifest.read({manifest!r})"),
    "shard_entries_pass": ("from kdcache.pipeline.data import Manifest",
                           "m = Manifest.read({manifest!r})\nfor s in m.shards: m.shard_entries(s)"),
    "teach_4_shards": ("from kdcache.tools.bench.scale import teach_step; import kdcache.pipeline.teach",
                       "result.update(teach_step({manifest!r}, {cache!r}, {teacher!r}))"),
    "kdloader": ("from kdcache.tools.bench.scale import loader_step; import kdcache.trainer.data.kd_loader",
                 "result.update(loader_step({manifest!r}))"),
    "inspect": ("from kdcache.tools.cli.main import main; import kdcache.tools.cache.inspect_cache",
                "main(['inspect', {cache!r}, '--data', {manifest!r}])"),
    "verify": ("from kdcache.tools.cli.main import main; import kdcache.tools.cache.verify_cache",
               "main(['verify', {cache!r}, '--data', {manifest!r}, '--samples', '20'])"),
}  # fmt: skip


def parse_size(text: str) -> int:
    """``10k`` / ``1M`` / ``14.2M`` / ``5000`` as a row count."""
    scale = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(round(float(text.rstrip("kM")) * scale))


def make_tars(folder: str, tars: int) -> str:
    """``folder/tars/train-NNNNNN.tar`` (``tars`` of them, made once), each of 1,000 samples:
    a small JPEG (one of a pool, made distinct by a trailer after its end) and a class label.
    Returns the brace pattern naming them."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "tars"), exist_ok=True)
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(64):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(out, "JPEG")
        pool.append(out.getvalue())
    for t in range(tars):
        path = os.path.join(folder, "tars", f"train-{t:06d}.tar")
        if os.path.exists(path):
            continue
        with tarfile.open(path + ".tmp", "w") as tar:
            for p in range(PER_TAR):
                key = f"t{t:06d}/{p:04d}"
                image = pool[(t + p) % len(pool)] + f"{t}:{p}".encode()
                for name, data in ((f"{key}.jpg", image), (f"{key}.cls", str(p % 1000).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        os.replace(path + ".tmp", path)
    return os.path.join(folder, "tars", f"train-{{000000..{tars - 1:06d}}}.tar")


def extend_manifest(real: str, out: str, rows: int) -> None:
    """A manifest of ``rows`` rows at ``out``: the real manifest's shards, then synthetic
    shards repeating them in turn (same tar, keys, image hashes and labels), so every shard
    reads; the real shards must be full (``shard_size`` rows each)."""
    import pyarrow as pa

    from kdcache.pipeline.data import Manifest, ShardInfo
    from kdcache.pipeline.data.manifest import write_manifest

    manifest = Manifest.read(real)
    size, real_shards = manifest.shard_size, list(manifest.shards)
    columns = ["key", "label", "split", "height", "width", "sha1"]
    base = manifest.table.select(columns)
    shards, parts = list(real_shards), []
    for first in range(0, -(-rows // size), len(real_shards)):
        ids = np.arange(first, min(first + len(real_shards), -(-rows // size)))
        part = base.slice(0, len(ids) * size)
        shard = np.repeat(ids.astype(np.int32), size)
        position = np.tile(np.arange(size), len(ids))
        parts.append(part.append_column("shard", pa.array(shard))
                     .append_column("row", pa.array(shard.astype(np.int64) * size + position)))  # fmt: skip
        shards += [ShardInfo(int(i), *_like(real_shards[int(i) % len(real_shards)]))
                   for i in ids if i >= len(real_shards)]  # fmt: skip
    meta = manifest.meta
    write_manifest(out, pa.concat_tables(parts), dataset="scale", classes=manifest.classes,
                   channels=3, shard_size=size, shards=shards, pixel_mean=meta["pixel_mean"],
                   pixel_std=meta["pixel_std"], samples=meta.get("samples"))  # fmt: skip


def _like(shard) -> tuple:
    return shard.file, shard.split, shard.num_rows, shard.bytes, shard.sha256


def make_teacher(folder: str) -> str:
    """A random-weight resnet10t teacher checkpoint over the 1,000 classes (made once)."""
    path = os.path.join(folder, "teacher.pth")
    if not os.path.exists(path):
        from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint

        spec = ModelSpec("resnet10t", 1000, 3, 32, (0.5,) * 3, (0.25,) * 3)
        save_checkpoint(path, create_model(spec), spec)
    return path


def teach_step(manifest: str, cache: str, teacher: str) -> dict:
    """Teach shards 2-5 (2 views, top-2, one worker) into a fresh cache: the worker's peak."""
    import shutil

    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.pipeline.views import ViewPlan

    shutil.rmtree(cache, ignore_errors=True)
    summary = run_teach(TeachConfig(
        manifest=manifest, cache=cache, teachers=[TeacherSource(teacher)],
        plan=ViewPlan(seed=0, views=2), topk=2, batch_size=64, workers=1,
        only_shards=[2, 3, 4, 5], progress=False,
    ))  # fmt: skip
    return {"worker_peak_rss_mib": round(summary.peak_rss / 2**20)}


def loader_step(manifest: str) -> dict:
    """KDLoader over the manifest (planned views, no cache): construction, first batch."""
    from kdcache.trainer.data.kd_loader import KDLoader

    start = time.perf_counter()
    loader = KDLoader(manifest, None, batch_size=64, workers=1, resolution=32)
    built = time.perf_counter()
    next(iter(loader))
    return {"construct_seconds": round(built - start, 3),
            "first_batch_seconds": round(time.perf_counter() - built, 3)}  # fmt: skip


def run_step(name: str, code: tuple[str, str], timeout: float, work: str) -> dict:
    """One step (imports, work) in a fresh Python: its figures, or what stopped it."""
    out = os.path.join(work, f"step-{name}.json")
    if os.path.exists(out):
        os.remove(out)
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, out, *code], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if done.returncode != 0 or not os.path.exists(out):
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    with open(out) as f:
        return json.load(f)


def _filled(step: tuple[str, str], **fill) -> tuple[str, str]:
    return step[0], step[1].format(**fill)


def run_scale(sizes: list[str], work: str, real: str, timeout: float, steps: list[str],
              log=print) -> dict:  # fmt: skip
    """Every step at every size: ``{size: {step: figures}}``."""
    real_rows = parse_size(real)
    make_tars(work, -(-real_rows // PER_TAR))
    teacher = make_teacher(work)
    report = {}
    for size in sizes:
        rows = parse_size(size)
        manifest, cache = (
            os.path.join(work, f"manifest-{size}.parquet"),
            os.path.join(work, f"cache-{size}.zarr"),
        )
        results = report[size] = {}
        fill = {"manifest": manifest, "cache": cache, "teacher": teacher, "folder": work}
        if rows <= real_rows:
            pattern = os.path.join(
                work, "tars", f"train-{{000000..{-(-rows // PER_TAR) - 1:06d}}}.tar"
            )
            if "index" in steps:
                results["index"] = run_step(
                    "index", _filled(STEPS["index"], tars=pattern, **fill), timeout, work
                )
                log(f"{size} index: {results['index']}")
            os.replace(os.path.join(work, "manifest.parquet"), manifest)
        elif not os.path.exists(manifest):  # made in its own process: this one stays small
            source = os.path.join(work, f"manifest-{real}.parquet")
            extend = f"extend_manifest({source!r}, {manifest!r}, {rows})"
            made = run_step(f"extend-{size}", (STEPS["index"][0].replace("index_webdataset", "Manifest")
                                               + "\nfrom kdcache.tools.bench.scale import extend_manifest",
                                               extend), timeout, work)  # fmt: skip
            log(f"{size}: synthetic manifest {made}")
        for step in steps:
            if step != "index":
                results[step] = run_step(step, _filled(STEPS[step], **fill), timeout, work)
                log(f"{size} {step}: {results[step]}")
    return report


def format_table(report: dict) -> str:
    """Steps down, sizes across: ``seconds / peak MiB`` (read: MiB above the imports)."""
    sizes = list(report)
    lines = ["| step | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for step in STEPS:
        cells = []
        for size in sizes:
            figures = report[size].get(step)
            if figures is None:
                cells.append("–")
            elif "error" in figures:
                cells.append(figures["error"][:40])
            else:
                memory = figures["above_imports_mib" if step == "manifest_read" else "peak_rss_mib"]
                extra = "".join(f", {k} {v}" for k, v in figures.items()
                                if k not in ("seconds", "peak_rss_mib", "above_imports_mib"))  # fmt: skip
                cells.append(f"{figures['seconds']:.2f} s / {memory} MiB{extra}")
        if any(c != "–" for c in cells):
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_bench_scale_parser(benches) -> None:
    from kdcache.tools.cli.arg_types import command_parser

    parser = command_parser(benches, "scale", __doc__)
    parser.add_argument("--sizes", default="10k,1M,14.2M", help="row counts (default: %(default)s)")
    parser.add_argument("--real", default="1M", help="rows of real tars (default: %(default)s)")
    parser.add_argument("--steps", default=",".join(STEPS), help="default: all")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a step may take")
    parser.add_argument("--work", required=True, help="folder for tars, manifests, caches (reused)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.set_defaults(run=run_bench_scale)


def run_bench_scale(args: argparse.Namespace) -> None:
    from kdcache.errors import ConfigError
    from kdcache.tools.bench.harness import machine, options_of, progress_log, versions, write_json

    steps = args.steps.split(",")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ConfigError(f"no step named {unknown} (steps: {', '.join(STEPS)})", field="steps")
    os.makedirs(args.work, exist_ok=True)
    report = run_scale(args.sizes.split(","), args.work, args.real, args.timeout, steps,
                       progress_log("scale"))  # fmt: skip
    print(format_table(report))
    config = {**options_of(args), "machine": machine(), "versions": versions()}
    write_json(args.json, {"config": config, "steps": report})
