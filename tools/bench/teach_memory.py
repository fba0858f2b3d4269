"""Peak resident memory of a teach actor on one shard of N ImageNet-shaped JPEGs at 224 px, to
check that row blocks bound it whatever the shard size.

``python -m kdcache.tools.bench.teach_memory --images 5000 [--block-rows 256]
[--host-allocator reuse|default] [--work DIR]`` (one actor, a random-weight resnet10t teacher,
1 view, top-2, batch 64; prints one JSON line)
"""

import argparse
import json
import os
import shutil
import tempfile

from kdcache.pipeline.teach import HOST_ALLOCATORS


def measure(images: int, block_rows: int, work: str, host_allocator: str = "reuse") -> dict:
    """Shard ``images`` photos (made once in ``work``) as one shard, teach it, report the peak."""
    from kdcache.pipeline.data import write_shards
    from kdcache.pipeline.teach import TeachConfig, TeacherSource, run_teach
    from kdcache.pipeline.views import ViewPlan
    from kdcache.tools.bench.bench_data import photo_folder, random_teacher

    photos = photo_folder(os.path.join(work, "photos"), images, 0, classes=2)
    data = os.path.join(work, f"data{images}")
    shutil.rmtree(data, ignore_errors=True)
    manifest = write_shards(photos, data, shard_size=images, splits=["train"],
                            limits={"train": images}, progress=False)  # fmt: skip
    checkpoint = os.path.join(work, "teacher.pth")
    random_teacher(manifest, "resnet10t", 224, checkpoint)
    cache = os.path.join(work, f"cache{images}-{block_rows}.zarr")
    shutil.rmtree(cache, ignore_errors=True)
    summary = run_teach(TeachConfig(
        manifest=data, cache=cache, teachers=[TeacherSource(checkpoint)],
        plan=ViewPlan(seed=0, views=1), topk=2, batch_size=64, block_rows=block_rows,
        workers=1, host_allocator=host_allocator, progress=False,
    ))  # fmt: skip
    return {"images": images, "block_rows": block_rows, "host_allocator": host_allocator,
            "views": summary.views,
            "peak_rss_mib": round(summary.peak_rss / 2**20), "seconds": round(summary.seconds, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images in the one shard")
    parser.add_argument("--block-rows", type=int, default=256, help="teach --block-rows")
    parser.add_argument("--host-allocator", choices=HOST_ALLOCATORS, default="reuse",
                        help="teach --host-allocator")  # fmt: skip
    parser.add_argument("--work", default=None, help="folder for photos, data, cache (reused)")
    args = parser.parse_args(argv)
    work = args.work or tempfile.mkdtemp(prefix="kdcache-teach-memory-")
    print(json.dumps(measure(args.images, args.block_rows, work, args.host_allocator)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
