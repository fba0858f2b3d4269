"""What the benchmarks share: a sharded Fashion-MNIST slice, randomly initialised teachers
(speed does not depend on the weights), their data options and their JSON output."""

import argparse
import json

from kdcache.pipeline.data import Manifest, open_source, write_shards
from kdcache.pipeline.teach import ModelSpec, create_model, save_checkpoint


def bench_manifest(
    folder: str, source: str, train_images: int, test_images: int, shard_size: int
) -> Manifest:
    """The slice's shards written to ``folder`` (replacing earlier ones: a rerun with other
    sizes must not measure a stale slice; the tars are byte-identical on every write)."""
    return write_shards(
        open_source(source),
        folder,
        shard_size=shard_size,
        limits={"train": train_images, "test": test_images},
        overwrite=True,
        progress=False,
    )


def random_teacher(manifest: Manifest, arch: str, resolution: int, path: str) -> ModelSpec:
    """A randomly initialised ``arch`` saved as a kdcache checkpoint at ``path``."""
    spec = ModelSpec(arch, manifest.num_classes, manifest.channels, resolution,
                     manifest.pixel_mean, manifest.pixel_std)  # fmt: skip
    save_checkpoint(path, create_model(spec), spec)
    return spec


def add_bench_data_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The options every benchmark takes: dataset, shard size, work folder, JSON output."""
    parser.add_argument("--shard-size", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--source", default="fashion-mnist", help="dataset (as for kdcache shard)")
    parser.add_argument("--work", default=None, help=f"folder for {work} (default: a temp dir)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result here")


def write_result(path: str | None, result: dict) -> None:
    """A benchmark's result as JSON at ``path`` (``--json``), if given."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
