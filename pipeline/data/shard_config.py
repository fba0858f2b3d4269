"""The options of ``kdcache shard`` and ``kdcache.shard`` (``write_shards``), each with its
default and help (``kdcache shard --help`` is generated from these fields)."""

from dataclasses import dataclass

from kdcache._options import option
from kdcache.pipeline.data.storage import StorageOptions, storage_option
from kdcache.pipeline.views.pixel_limit import max_pixels_option

BAD_IMAGE_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class ShardConfig:
    """How a dataset is written as shards (see ``kdcache shard --help``)."""

    shard_size: int = option(1000, help="samples per tar shard; also the cache's chunk length")
    splits: list[str] = option(factory=lambda: ["train", "test"], help="splits to write")
    limits: dict = option(
        factory=dict,
        flag="--limit",
        metavar="SPLIT=N",
        help="keep only the first N samples of SPLIT (repeatable)",
    )
    on_bad_image: str = option(
        "fail",
        choices=BAD_IMAGE_POLICIES,
        help="an ImageFolder file that is unreadable, over the pixel limit or not a regular "
        "file: fail naming it, or skip it (counted, and listed in the manifest)",
    )
    max_pixels: int = max_pixels_option()
    follow_symlinks: bool = option(
        False, help="read ImageFolder files and folders whose symlinks lead outside the root"
    )
    shuffle_seed: int = option(
        0, help="seed of an ImageFolder's class-stratified shuffled order over the shards"
    )
    overwrite: bool = option(False, help="replace an existing manifest")
    progress: bool = option(True, flag="--quiet", help="no progress bar")
    storage_options: StorageOptions | None = storage_option()
