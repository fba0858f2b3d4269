"""What the benchmarks share: a Fashion-MNIST slice sharded once per work folder, and
randomly initialised teachers (speed does not depend on the weights)."""

import os

from pipeline.manifest import Manifest
from pipeline.models import ModelSpec, create_model, save_checkpoint
from pipeline.shard import write_shards
from pipeline.sources import open_source


def bench_manifest(
    folder: str, source: str, train_images: int, test_images: int, shard_size: int
) -> Manifest:
    """The shards in ``folder``, written on first use."""
    if os.path.exists(os.path.join(folder, "manifest.parquet")):
        return Manifest.read(folder)
    return write_shards(
        open_source(source),
        folder,
        shard_size=shard_size,
        limits={"train": train_images, "test": test_images},
        progress=False,
    )


def random_teacher(manifest: Manifest, arch: str, resolution: int, path: str) -> ModelSpec:
    """A randomly initialised ``arch`` saved as a kdcache checkpoint at ``path``."""
    spec = ModelSpec(arch, manifest.num_classes, manifest.channels, resolution,
                     manifest.pixel_mean, manifest.pixel_std)  # fmt: skip
    save_checkpoint(path, create_model(spec), spec)
    return spec
