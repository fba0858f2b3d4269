"""The options of ``kdcache index`` and ``kdcache.index_webdataset`` / ``index_parquet``: how a
manifest is built over existing WebDataset tars or Parquet files without rewriting them
(``kdcache index --help`` is generated from these fields)."""

from dataclasses import dataclass

from kdcache._options import option
from kdcache.pipeline.data.storage import StorageOptions, storage_option

SOURCE_FORMATS = ("auto", "webdataset", "parquet")


@dataclass(frozen=True)
class IndexConfig:
    """How existing shards are indexed in place (see ``kdcache index --help``)."""

    splits: dict = option(
        factory=dict,
        flag="--split",
        metavar="NAME=PATTERN",
        help="the files whose name (or whole location) matches the glob PATTERN form split "
        "NAME (repeatable; without any, every file is train; a file matching none is refused)",
    )
    label_field: str = option(
        "",
        help="where a sample's label is: a tar member holding an integer (cls), a JSON "
        "member's field (json:label), or a Parquet column (label) (default: cls for tars, "
        "label for Parquet)",
    )
    image_extensions: list[str] = option(
        factory=lambda: ["jpg", "jpeg", "png", "webp"],
        flag="--image-ext",
        metavar="EXT,EXT",
        help="tar members that are a sample's image, by extension (comma-separated; the "
        "first a sample has wins)",
    )
    image_column: str = option(
        "image", help="Parquet column of the image: struct{bytes, path} or binary"
    )
    num_classes: int | None = option(
        None, help="class count (default: the largest label + 1); labels must be below it"
    )
    stats_images: int = option(
        1000, help="train images decoded (the first N) for the pixel mean and std"
    )
    dataset: str = option("", help="dataset name recorded (default: the output folder's name)")
    format: str = option(
        "auto", choices=SOURCE_FORMATS, help="the files' format (auto: by their suffix)"
    )
    overwrite: bool = option(False, help="replace an existing manifest")
    storage_options: StorageOptions | None = storage_option()
    progress: bool = option(True, flag="--quiet", help="no progress bar")
