"""bench-teach's ceiling: raw ``model(x)`` in a given layout, P processes x T torch threads,
each over its share of the shards (shard i to process i mod P), on batches decoded, rendered
and normalised beforehand (the teacher job's own ``teacher_inputs``, in its batch size), with
the host allocator the teacher job's actors use (``reuse``) or the C library's ``default``.

The processes prepare their batches and warm up, meet at a barrier, then run the model over
every batch; the wall time from the first start to the last end gives the layout's views/s.
"""

import multiprocessing
import time

import torch

from kdcache.pipeline.data import Manifest
from kdcache.pipeline.teach import (
    ModelSpec,
    create_model,
    read_shard_images,
    teacher_inputs,
    use_host_allocator,
)
from kdcache.pipeline.views import ViewPlan, ViewRenderer


def raw_layout(data: str, spec: ModelSpec, checkpoint: str, plan: ViewPlan, batch_size: int, processes: int,
               threads: int, allocator: str = "reuse") -> dict[str, float]:  # fmt: skip
    """Views/s of ``model(x)`` over every train view in ``processes`` x ``threads``."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_infer, args=(data, spec, checkpoint, plan, batch_size,
                                                    index, processes, threads, allocator, barrier,
                                                    results))
               for index in range(processes)]  # fmt: skip
    for worker in workers:
        worker.start()
    spans = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    failed = [span for span in spans if "error" in span]
    if failed:
        raise RuntimeError(f"raw inference process failed: {failed[0]['error']}")
    wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
    return {"views_per_s": sum(s["views"] for s in spans) / wall}


def _infer(data, spec, checkpoint, plan, batch_size, index, processes, threads, allocator, barrier,
           results):  # fmt: skip
    try:
        torch.set_num_threads(threads)
        use_host_allocator(allocator)
        batches = _batches(data, spec, checkpoint, plan, batch_size, index, processes)
    except Exception as error:  # the others must not wait at the barrier forever
        barrier.abort()
        results.put({"error": f"{type(error).__name__}: {error}"})
        return
    model = batches.pop()
    with torch.inference_mode():
        if batches:
            model(batches[0])  # warm-up
        barrier.wait()
        start = time.monotonic()
        for batch in batches:
            model(batch)
        end = time.monotonic()
    results.put({"start": start, "end": end, "views": sum(len(b) for b in batches)})


def _batches(data, spec, checkpoint, plan, batch_size, index, processes) -> list:
    """This process's shards as the job feeds them to the model, then the model."""
    manifest = Manifest.read(data)
    model = create_model(spec, checkpoint_path=checkpoint).eval()
    renderer, batches = ViewRenderer(plan), []
    for shard in manifest.shards_of("train")[index::processes]:
        images = read_shard_images(manifest, shard, renderer=plan.renderer)
        params = plan.shard_params(manifest, shard)
        for view in range(plan.views):
            for start in range(0, len(images), batch_size):
                positions = range(start, min(start + batch_size, len(images)))
                batches.append(teacher_inputs(renderer, images, params[:, view], positions, spec))
    return [*batches, model]
