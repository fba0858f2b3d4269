"""bench-teach's render stage alone: one teach actor's decode and view rendering (no model)
over every train shard, with the actor's torch threads set to 1 CPU or to all of them. The
job's own code path: ``read_shard_images`` (headers), ``decode_block`` and ``rendered_batches``
(the render pool, :func:`pipeline.teach.render_pool.render_threads` threads), in the job's
batch size, into the job's reused buffers."""

import time

import numpy as np
import torch

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import ModelSpec, read_shard_images
from kdcache.pipeline.teach.render_pool import render_threads
from kdcache.pipeline.teach.shard_targets import decode_block, release, rendered_batches
from kdcache.pipeline.views import ViewPlan


def render_only(
    data: str, spec: ModelSpec, plan: ViewPlan, batch_size: int, cpus: int
) -> dict[str, float]:
    """Views/s of decoding and rendering every train view with ``cpus`` torch threads (the
    render pool sized from them, as in an actor with that many CPUs)."""
    manifest, threads = Manifest.read(data), torch.get_num_threads()
    torch.set_num_threads(cpus)
    try:
        device = torch.device("cpu")
        shards = manifest.shards_of("train")
        loaded = [(shard, read_shard_images(manifest, shard, decode=False)) for shard in shards]
        params = [plan.shard_params(manifest, shard) for shard in shards]
        views, began = 0, time.perf_counter()
        for (shard, images), shard_params in zip(loaded, params, strict=True):
            keys = [str(position) for position in range(len(images))]
            decode_block(images, range(len(images)), shard.file, keys, plan.renderer)
            positions = np.arange(len(images))
            work = [(i, view, range(start, min(start + batch_size, len(images))))
                    for i, (view, start) in enumerate(
                        (v, s) for v in range(plan.views)
                        for s in range(0, len(images), batch_size))]  # fmt: skip
            for batch in rendered_batches(plan, images, shard_params, positions, spec, device,
                                          work):  # fmt: skip
                views += len(batch)
            release(images)
        seconds = time.perf_counter() - began
        pool = render_threads(device)
    finally:
        torch.set_num_threads(threads)
    return {"views_per_s": views / seconds, "render_threads": pool}
