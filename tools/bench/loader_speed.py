"""``kdcache bench replay --loaders``: kdcache's training loader against timm's usual one, end to
end, on the same ImageNet-shaped JPEGs, interleaved.

``kdcache``: ``KDLoader`` over the shards of the photos, no cache (the plan's views: random
resized crop 0.08-1 and flip, renderer cpu/4), 224 px, batches normalised. ``timm``:
torchvision's ``ImageFolder`` over the same JPEGs with ``create_transform(224,
is_training=True, color_jitter=None)`` (random resized crop and flip, bilinear, normalised) and
a shuffling ``DataLoader``. Both with the same batch size and DataLoader workers; each epoch
makes a fresh loader iteration (workers started per epoch by both), images/s by the wall clock
over the whole epoch, and the CPU time per image of the DataLoader workers (the finished
children's) and of the main process: on a shared machine the wall clock shows the scheduler's
share, the CPU time what each loader costs.
"""

import gc
import os
import resource
import time

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loader_modes(work: str, images: int, workers: int, batch_size: int, size: int) -> list:
    """The two modes (harness ``Mode``s) over ``images`` photos made in ``work``."""
    from kdcache.pipeline.data import open_source, write_shards
    from kdcache.tools.bench.bench_data import photo_folder
    from kdcache.tools.bench.harness import Mode

    folder = photo_folder(os.path.join(work, "photos"), images, 0, classes=100)
    manifest = write_shards(open_source(folder), os.path.join(work, "data"), shard_size=250,
                            splits=("train",), overwrite=True, progress=False)  # fmt: skip
    kdcache = _kdcache_epoch(manifest.location, workers, batch_size, size)
    timm = _timm_epoch(os.path.join(folder, "train"), workers, batch_size, size)
    return [Mode("loader / kdcache", kdcache), Mode("loader / timm", timm)]


def _timed(batches) -> dict[str, float]:
    """Images/s of one epoch (``batches()``: its image batches) and CPU ms per image of the
    workers (counted once the epoch's workers have exited) and of the main process."""
    main, workers = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    count = sum(len(images) for images in batches())
    seconds = time.perf_counter() - began
    main = _cpu(resource.RUSAGE_SELF) - main
    gc.collect()  # the epoch's iterator surely gone: its workers joined
    workers = _cpu(resource.RUSAGE_CHILDREN) - workers
    return {"images_per_s": count / seconds, "images": count,
            "worker_cpu_ms_per_image": 1e3 * workers / count,
            "main_cpu_ms_per_image": 1e3 * main / count,
            "cpu_ms_per_image": 1e3 * (workers + main) / count}  # fmt: skip


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _kdcache_epoch(data: str, workers: int, batch_size: int, size: int):
    import kdcache

    loader = kdcache.KDLoader(data, batch_size=batch_size, workers=workers, resolution=size,
                              plan={"crop_scale": (0.08, 1.0), "views": 4})  # fmt: skip

    def run(repeat: int) -> dict[str, float]:
        loader.set_epoch(max(0, repeat))
        return _timed(lambda: (batch.images for batch in loader))

    return run


def _timm_epoch(folder: str, workers: int, batch_size: int, size: int):
    from timm.data import create_transform
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    transform = create_transform(size, is_training=True, color_jitter=None,
                                 interpolation="bilinear", mean=MEAN, std=STD)  # fmt: skip
    loader = DataLoader(ImageFolder(folder, transform=transform), batch_size=batch_size,
                        shuffle=True, num_workers=workers)  # fmt: skip

    def run(_repeat: int) -> dict[str, float]:
        return _timed(lambda: (images for images, _ in loader))

    return run
